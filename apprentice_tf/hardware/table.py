"""The latency table: measured rows keyed by (device, threads, op/shape, quantization, batch),
with the fingerprints of the devices that measured them, saved as JSON (and CSV for reading)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from apprentice_tf import _checks, _io
from apprentice_tf.hardware._common import ANY, quantize_label
from apprentice_tf.hardware.device import device_fingerprint

__all__ = ["LatencyRow", "LatencyTable"]

_FORMAT = "apprentice_tf.hardware.LatencyTable"
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Rows and tables


@dataclasses.dataclass(frozen=True)
class LatencyRow:
    """One measurement: a candidate converted to TFLite and timed with the LiteRT interpreter.

    Attributes:
      name: the candidate's name in the `profile` call that measured it.
      key: op/shape key (`BlockSpec.key`, `StudentCandidate.key`, or a hash of a model's
        architecture with its input shape).
      kind: ``"block"``, ``"student"`` (a `StudentCandidate`) or ``"model"``.
      device_id: `device_fingerprint()["id"]` of the machine that measured it.
      num_threads: interpreter threads.
      quantize: the `profile` quantize setting (None = float).
      batch_size: batch of the timed input.
      params: Keras parameter count of the float candidate.
      tflite_bytes: size of the converted flatbuffer.
      median_ms, p90_ms, p10_ms: percentiles of the per-invoke times over `runs` timed runs.
      spread_ms: p90_ms - p10_ms.
      std_ms: standard deviation of the per-invoke times.
      runs, warmup: timed and untimed invokes.
      family: student family for ``"student"`` rows, else None.
      spec: `BlockSpec.to_dict()` for blocks, builder kwargs for students, {"input_shape"} for
        models.
      levels_verified: for quantize-aware conversions, whether `tflite.convert` confirmed the
        low-precision levels in the file (False: converted with verify=False); None otherwise.
      measured_at: UTC time of the measurement (ISO 8601).
    """

    name: str
    key: str
    kind: str
    device_id: str
    num_threads: int
    quantize: str | int | None
    batch_size: int
    params: int
    tflite_bytes: int
    median_ms: float
    p90_ms: float
    p10_ms: float
    spread_ms: float
    std_ms: float
    runs: int
    warmup: int
    family: str | None = None
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    levels_verified: bool | None = None
    measured_at: str = ""

    @property
    def row_key(self) -> tuple[str, int, str, str, int]:
        """(device id, threads, op/shape key, quantization label, batch size)."""
        return (
            self.device_id,
            self.num_threads,
            self.key,
            quantize_label(self.quantize),
            self.batch_size,
        )

    def latency(self, statistic: str = "median") -> float:
        """`median_ms` or `p90_ms`."""
        if statistic not in ("median", "p90"):
            raise _checks.refuse("LatencyRow.latency", "statistic", statistic, "'median' or 'p90'")
        return self.median_ms if statistic == "median" else self.p90_ms


class LatencyTable:
    """Latency rows with the fingerprints of the devices that measured them.

    Rows are unique per `LatencyRow.row_key`; adding a row with the same key replaces the old
    one. A table is "foreign" when it holds rows of a device other than this one; `profile` and
    `select_student` refuse such a table unless called with ``allow_foreign=True``.
    """

    def __init__(
        self,
        rows: Iterable[LatencyRow] = (),
        devices: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._rows: dict[tuple, LatencyRow] = {}
        self.devices: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (devices or {}).items()}
        for row in rows:
            self.add(row)

    # -- contents
    def add(self, row: LatencyRow, fingerprint: Mapping[str, Any] | None = None) -> None:
        """Add (or replace) a row; `fingerprint` is needed for a device the table lacks."""
        if not isinstance(row, LatencyRow):
            raise _checks.refuse("LatencyTable.add", "row", row, "a LatencyRow")
        if fingerprint is not None:
            device = {k: v for k, v in fingerprint.items() if k != "threads"}
            self.devices.setdefault(row.device_id, device)
        if row.device_id not in self.devices:
            raise ValueError(
                f"LatencyTable.add: row {row.name!r} comes from device {row.device_id!r}, which "
                f"this table has no fingerprint for (devices: {sorted(self.devices)}); pass "
                "`fingerprint`."
            )
        self._rows[row.row_key] = row

    @property
    def rows(self) -> list[LatencyRow]:
        """The rows, in insertion order."""
        return list(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[LatencyRow]:
        return iter(list(self._rows.values()))

    def __repr__(self) -> str:
        return f"LatencyTable({len(self)} rows, devices={sorted(self.devices)})"

    @property
    def device_ids(self) -> list[str]:
        """Devices with at least one row (or a fingerprint), sorted."""
        return sorted(set(self.devices) | {row.device_id for row in self._rows.values()})

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the table's only device (ValueError if it has several or none)."""
        ids = self.device_ids
        if len(ids) != 1:
            raise ValueError(f"LatencyTable.fingerprint: the table has devices {ids}, not one.")
        return dict(self.devices[ids[0]])

    def foreign_devices(self, device_id: str | None = None) -> list[str]:
        """Device ids in the table other than `device_id` (default: this machine)."""
        here = device_id or device_fingerprint()["id"]
        return [i for i in self.device_ids if i != here]

    # -- queries
    def filter(
        self,
        *,
        kind: str | None = None,
        op: str | None = None,
        family: str | None = None,
        names: Iterable[str] | None = None,
        device_id: str | None = None,
        num_threads: int | None = None,
        quantize: Any = ANY,
        batch_size: int | None = None,
        predicate: Callable[[LatencyRow], bool] | None = None,
    ) -> LatencyTable:
        """A new table with the rows matching every given criterion (`op` looks in `spec`)."""
        wanted = None if names is None else set(names)

        def keep(row: LatencyRow) -> bool:
            return (
                (kind is None or row.kind == kind)
                and (op is None or row.spec.get("op") == op)
                and (family is None or row.family == family)
                and (wanted is None or row.name in wanted)
                and (device_id is None or row.device_id == device_id)
                and (num_threads is None or row.num_threads == num_threads)
                and (quantize is ANY or quantize_label(row.quantize) == quantize_label(quantize))
                and (batch_size is None or row.batch_size == batch_size)
                and (predicate is None or predicate(row))
            )

        rows = [row for row in self._rows.values() if keep(row)]
        devices = {row.device_id: self.devices[row.device_id] for row in rows}
        return LatencyTable(rows, devices)

    def lookup(
        self,
        key: str | tuple,
        *,
        device_id: str | None = None,
        num_threads: int | None = None,
        quantize: Any = ANY,
        batch_size: int | None = None,
    ) -> LatencyRow | None:
        """The row for a full `LatencyRow.row_key` tuple, or for an op/shape key string.

        With a key string, the other arguments narrow the search; None if no row matches.

        Raises:
          ValueError: several rows match the key string (the message lists how they differ).
        """
        if isinstance(key, tuple):
            if len(key) != 5:
                raise _checks.refuse(
                    "LatencyTable.lookup", "key", key, "a 5-tuple row_key or a key string"
                )
            return self._rows.get(key)
        matches = [
            row
            for row in self.filter(
                device_id=device_id,
                num_threads=num_threads,
                quantize=quantize,
                batch_size=batch_size,
            )
            if row.key == key
        ]
        if len(matches) > 1:
            raise ValueError(
                f"LatencyTable.lookup: {len(matches)} rows have key {key!r}: "
                f"{[row.row_key for row in matches]}; pass device_id/num_threads/quantize/"
                "batch_size to choose one."
            )
        return matches[0] if matches else None

    # -- persistence
    def to_dict(self) -> dict[str, Any]:
        """The table as a JSON-ready dict."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "devices": self.devices,
            "rows": [_io.plain(dataclasses.asdict(row)) for row in self._rows.values()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        """Inverse of `to_dict`."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(
                f"LatencyTable.from_dict: not a latency table (expected format {_FORMAT!r}, "
                f"received {data.get('format') if isinstance(data, Mapping) else type(data)!r})."
            )
        names = {f.name for f in dataclasses.fields(LatencyRow)}
        rows = []
        for entry in data.get("rows", []):
            unknown = set(entry) - names
            if unknown:
                raise ValueError(f"LatencyTable.from_dict: unknown row fields {sorted(unknown)}.")
            rows.append(LatencyRow(**entry))
        return cls(rows, data.get("devices", {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON (atomically); returns the path."""
        return _io.write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a table written by `save` (no fingerprint check here: `profile` and
        `select_student` check the device)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"LatencyTable.load: {path} is not valid JSON ({error}).") from error
        return cls.from_dict(data)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the rows as CSV (one column per `LatencyRow` field; `spec` as JSON)."""
        fields = [f.name for f in dataclasses.fields(LatencyRow)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in self._rows.values():
            values = dataclasses.asdict(row)
            values["spec"] = json.dumps(_io.plain(values["spec"]), sort_keys=True)
            writer.writerow(values)
        return _io.write_text(path, buffer.getvalue())
