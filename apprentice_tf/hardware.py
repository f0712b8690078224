"""Latency on the target, and student selection from it: HAKD (Turner et al., arXiv 1810.10460).

Turner, Crowley, Gray, Storkey and O'Boyle, "HAKD: Hardware Aware Knowledge Distillation" (2018)
observe that inference time on a real platform is not proportional to parameters or FLOPs: it
moves in *steps* with channel counts (vector widths, tiling, padding inside the runtime). So the
student is designed from measurements, not from a cost model:

1. **Measure** (`profile`, `layer_sweep`). Each candidate (one block, `BlockSpec`, or a whole
   network) is converted to TFLite and timed with the LiteRT interpreter on this machine, with a
   fixed thread count, `warmup` untimed runs and `runs` timed runs; a row keeps the median, the
   10th/90th percentiles and the spread p90 - p10 of the per-invoke times. Rows live in a
   `LatencyTable` keyed by (device id, threads, op/shape key, quantization, batch size), saved as
   JSON, so a new budget needs no new timing and a second `profile` call reuses what is stored.
2. **Find the steps** (`find_steps`, `plot_sweep`): channel counts at which the latency of a block
   jumps, t(c_i) / t(c_{i-1}) - 1 > threshold.
3. **Select** (`student_candidates`, `select_student`): among whole student networks of a family
   (MobileNet v1 widths, DenseNet-BC growth rates, CIFAR ResNet widths) whose measured latency
   fits the budget, the one with the most capacity (parameters), preferring the faster of
   candidates of nearly equal capacity, i.e. the one just below a step.

A typical recipe::

    candidates = hardware.student_candidates("mobilenet", num_classes=10, input_shape=(32, 32, 3))
    table = hardware.profile(candidates, num_threads=1, quantize="ternary", cache="latency.json")
    choice = hardware.select_student(table, latency_budget_ms=5.0, family="mobilenet")
    student = choice.build()

`estimate_network_latency` sums per-block latencies over a network's convolutions
(`network_blocks`); `measure_model_latency` times the whole network; their difference is the
error of the additive latency model.

Timing is only as good as the machine is quiet: other processes on the same cores show up as a
large spread (p90 - p10), which every row records.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apprentice_tf import litert
from apprentice_tf._checks import keras_object
from apprentice_tf.compat import keras, tf

__all__ = [
    "OPS",
    "QUANTIZE_MODES",
    "FAMILIES",
    "BlockSpec",
    "StudentCandidate",
    "LatencyRow",
    "LatencyTable",
    "Step",
    "Selection",
    "device_fingerprint",
    "profile",
    "layer_sweep",
    "plot_sweep",
    "find_steps",
    "network_blocks",
    "estimate_network_latency",
    "measure_model_latency",
    "time_tflite",
    "student_candidates",
    "select_student",
]

#: Block types of a `BlockSpec` (Turner et al. sweep standard, depthwise-separable and grouped).
OPS: tuple[str, ...] = ("conv", "separable", "grouped")
#: `quantize` settings of `profile`: float, post-training full-integer int8, or quantization-aware
#: low-precision weights from `apprentice_tf.quantize_model` (with 8-bit activations).
QUANTIZE_MODES: tuple[str | int | None, ...] = (None, "int8", "ternary", 2, 4, 8)
#: Student families `student_candidates` and `select_student` know.
FAMILIES: tuple[str, ...] = ("mobilenet", "densenet", "resnet")

_FORMAT = "apprentice_tf.hardware.LatencyTable"
_FORMAT_VERSION = 1
_ANY = object()  # "no filter" sentinel (None is a valid quantize value)


def _fail(function: str, argument: str, received: Any, allowed: str) -> ValueError:
    return ValueError(f"{function}: `{argument}` must be {allowed}, received {received!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_int(function: str, argument: str, value: Any, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise _fail(function, argument, value, f"an integer >= {minimum}")
    return int(value)


def _check_quantize(function: str, quantize: Any) -> None:
    if isinstance(quantize, bool) or quantize not in QUANTIZE_MODES:
        raise _fail(
            function,
            "quantize",
            quantize,
            f"one of {QUANTIZE_MODES} (None: float; 'int8': full-integer post-training; "
            "'ternary', 2, 4, 8: quantize_model weights with 8-bit activations)",
        )


def _quantize_label(quantize: str | int | None) -> str:
    if quantize is None:
        return "float"
    if quantize in ("int8", "ternary"):
        return str(quantize)
    return f"w{quantize}a8"


# ----------------------------------------------------------------------------------------------
# Blocks


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One convolutional block of a student, the unit Turner et al. time over a channel grid.

    ``op`` selects the block (all convolutions bias-free, 'same' padding, BN momentum 0.9):

    * ``"conv"``: k x k Conv2D(N) -> BN -> ReLU, ``k^2 M N H' W'`` multiply-adds;
    * ``"separable"``: k x k DepthwiseConv2D -> BN -> ReLU -> 1x1 Conv2D(N) -> BN -> ReLU
      (Howard et al. 2017), ``(k^2 M + M N) H' W'``;
    * ``"grouped"``: k x k Conv2D(N, groups=g) -> BN -> ReLU, ``k^2 M N H' W' / g``;

    with M = `in_channels`, N = `out_channels`, H' = W' = ceil(`input_size` / `stride`).

    Attributes:
      op: one of `OPS`.
      input_size: height = width of the block's input.
      in_channels: M.
      out_channels: N.
      stride: stride of the first (k x k) convolution.
      kernel_size: k.
      groups: g for ``"grouped"`` (default 2; must divide M and N); 1 for the other ops.
    """

    op: str
    input_size: int
    in_channels: int
    out_channels: int
    stride: int = 1
    kernel_size: int = 3
    groups: int | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise _fail("BlockSpec", "op", self.op, f"one of {OPS}")
        for argument in ("input_size", "in_channels", "out_channels", "stride", "kernel_size"):
            _check_int("BlockSpec", argument, getattr(self, argument), 1)
        groups = self.groups
        if self.op == "grouped":
            groups = 2 if groups is None else groups
            _check_int("BlockSpec", "groups", groups, 2)
            if self.in_channels % groups or self.out_channels % groups:
                raise ValueError(
                    f"BlockSpec: `groups` must divide in_channels and out_channels of a grouped "
                    f"block, received groups={groups} with in_channels={self.in_channels}, "
                    f"out_channels={self.out_channels}."
                )
        elif groups not in (None, 1):
            raise _fail("BlockSpec", "groups", groups, f"1 or None for op={self.op!r}")
        else:
            groups = 1
        object.__setattr__(self, "groups", int(groups))

    @property
    def key(self) -> str:
        """A stable string naming the block's op and shape, e.g. ``conv_k3_s1_32x32x16-32``."""
        op = f"grouped_g{self.groups}" if self.op == "grouped" else self.op
        size = self.input_size
        return (
            f"{op}_k{self.kernel_size}_s{self.stride}_{size}x{size}x{self.in_channels}"
            f"-{self.out_channels}"
        )

    @property
    def output_size(self) -> int:
        """ceil(input_size / stride), the height = width of the block's output."""
        return -(-self.input_size // self.stride)

    @property
    def macs(self) -> int:
        """Multiply-adds of the block's convolutions (see the class docstring)."""
        spatial = self.output_size**2
        k2, m, n = self.kernel_size**2, self.in_channels, self.out_channels
        if self.op == "separable":
            return spatial * (k2 * m + m * n)
        return spatial * k2 * m * n // self.groups

    def build(self) -> keras.Model:
        """The block as a functional tf_keras model mapping [B, H, H, M] to [B, H', H', N]."""
        from apprentice_tf.models.resnet import _bn, _conv, _relu

        inputs = keras.Input((self.input_size, self.input_size, self.in_channels), name="x")
        k, s = self.kernel_size, self.stride
        if self.op == "separable":
            x = keras.layers.DepthwiseConv2D(
                k,
                strides=s,
                padding="same",
                use_bias=False,
                depthwise_initializer="he_normal",
                name="dw",
            )(inputs)
            x = _relu(_bn(x, name="dw_bn"), name="dw_relu")
            x = _conv(x, self.out_channels, 1, name="pw")
            x = _relu(_bn(x, name="pw_bn"), name="pw_relu")
        else:
            name = "gconv" if self.op == "grouped" else "conv"
            x = _conv(inputs, self.out_channels, k, strides=s, groups=self.groups, name=name)
            x = _relu(_bn(x, name=f"{name}_bn"), name=f"{name}_relu")
        return keras.Model(inputs, x, name=re.sub(r"[^A-Za-z0-9_.-]", "_", self.key))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (`BlockSpec(**d)` rebuilds it)."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Student families


def _family_builder(family: str) -> Callable[..., keras.Model]:
    from apprentice_tf.models import densenet_bc, mobilenet_v1
    from apprentice_tf.models.resnet import cifar_resnet

    return {"mobilenet": mobilenet_v1, "densenet": densenet_bc, "resnet": cifar_resnet}[family]


#: Small default grids: four MobileNet v1 width multipliers (Howard et al.'s alpha), three
#: DenseNet-BC-40 growth rates, four ResNet-20 width multipliers.
_DEFAULT_GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    "mobilenet": tuple({"width_multiplier": w} for w in (0.25, 0.5, 0.75, 1.0)),
    "densenet": tuple({"depth": 40, "growth_rate": k} for k in (6, 8, 12)),
    "resnet": tuple({"depth": 20, "width_multiplier": w} for w in (0.5, 1.0, 1.5, 2.0)),
}
_ABBREVIATIONS = {
    "width_multiplier": "w",
    "growth_rate": "k",
    "depth": "d",
    "stage_widths": "sw",
    "stage_depths": "sd",
    "stage_strides": "ss",
    "block_type": "bt",
    "groups": "g",
    "depth_multiplier": "dm",
    "compression": "c",
}


def _jsonable(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python, recursively (what JSON stores)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclasses.dataclass(frozen=True)
class StudentCandidate:
    """One student network of a family, described by its builder's keyword arguments.

    Built lazily, so `profile` can reuse a stored measurement without building the network.

    Attributes:
      family: one of `FAMILIES` (builders: `models.mobilenet_v1`, `models.densenet_bc`,
        `models.cifar_resnet`).
      name: a short, stable name such as ``mobilenet_w0.5``.
      kwargs: every keyword argument of the builder (num_classes and input_shape included).
    """

    family: str
    name: str
    kwargs: Mapping[str, Any]

    @property
    def builder(self) -> Callable[[], keras.Model]:
        """A no-argument callable that builds the network."""
        return functools.partial(_family_builder(self.family), **dict(self.kwargs))

    @property
    def key(self) -> str:
        """Stable key: the family and the JSON of the sorted builder arguments."""
        return f"{self.family}:" + json.dumps(_jsonable(self.kwargs), sort_keys=True)

    def build(self) -> keras.Model:
        """A freshly initialised network."""
        return self.builder()


def _candidate_name(family: str, kwargs: Mapping[str, Any]) -> str:
    parts = [family]
    for argument, value in kwargs.items():
        if argument in ("num_classes", "input_shape"):
            continue
        text = "-".join(map(str, value)) if isinstance(value, tuple | list) else str(value)
        parts.append(f"{_ABBREVIATIONS.get(argument, argument)}{text}")
    return "_".join(parts)


def student_candidates(
    family: str,
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    grid: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, StudentCandidate]:
    """Student networks of one family to `profile` and then `select_student` from.

    Args:
      family: ``"mobilenet"`` (MobileNet v1, Howard et al. 2017; knobs ``width_multiplier``,
        ``stage_widths``, ``stage_depths``, ``block_type``, ...), ``"densenet"`` (DenseNet-BC,
        Huang et al. 2017; ``depth``, ``growth_rate``, ``compression``) or ``"resnet"`` (CIFAR
        ResNet, He et al. 2016; ``depth``, ``width_multiplier``).
      num_classes: logits of every candidate.
      input_shape: (height, width, channels) of every candidate.
      grid: builder keyword arguments, one mapping per candidate (named automatically) or a
        mapping {name: kwargs}. Default: a small grid (MobileNet alpha in 0.25/0.5/0.75/1.0,
        DenseNet-BC-40 with k in 6/8/12, ResNet-20 widths 0.5/1/1.5/2).

    Returns:
      {name: StudentCandidate}, in grid order; pass it to `profile`.

    Raises:
      ValueError: unknown family, an empty grid, or duplicate names.
    """
    if family not in FAMILIES:
        raise _fail("student_candidates", "family", family, f"one of {FAMILIES}")
    if grid is None:
        grid = _DEFAULT_GRIDS[family]
    if isinstance(grid, Mapping):
        named = [(str(name), kwargs) for name, kwargs in grid.items()]
    elif isinstance(grid, Sequence) and not isinstance(grid, str):
        named = [(None, kwargs) for kwargs in grid]
    else:
        raise _fail("student_candidates", "grid", grid, "a sequence of kwargs dicts or a dict")
    if not named:
        raise _fail("student_candidates", "grid", grid, "a non-empty grid")
    candidates: dict[str, StudentCandidate] = {}
    for name, kwargs in named:
        if not isinstance(kwargs, Mapping):
            raise _fail("student_candidates", "grid entry", kwargs, "a dict of builder kwargs")
        full = {**dict(kwargs), "num_classes": num_classes, "input_shape": tuple(input_shape)}
        name = name or _candidate_name(family, kwargs)
        if name in candidates:
            raise ValueError(f"student_candidates: two grid entries are both named {name!r}.")
        candidates[name] = StudentCandidate(family, name, full)
    return candidates


# ----------------------------------------------------------------------------------------------
# Device


@functools.lru_cache(maxsize=1)
def _device_fields() -> tuple[tuple[str, Any], ...]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: ")):
                value = line.split(":", 1)[1].strip()
                if value and not value.isdigit():
                    cpu = value
                    break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine() or "unknown"

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return (
        ("cpu", cpu),
        ("cores", os.cpu_count() or 0),
        ("machine", platform.machine()),
        ("system", platform.system()),
        ("litert", version("ai-edge-litert")),
        ("tensorflow", tf.__version__),
    )


def device_fingerprint(num_threads: int = 1) -> dict[str, Any]:
    """What makes a latency measurement specific to this machine.

    Returns:
      {"cpu": /proc/cpuinfo "model name" (else `platform.processor()`), "cores":
      `os.cpu_count()`, "machine", "system", "litert": ai-edge-litert version, "tensorflow": the
      converter's version, "threads": `num_threads`, "id": a stable string
      ``<cpu>-<cores>c-<hash>``}. The id hashes every field except "threads" (the thread count
      is part of each row's key instead), so one table can hold several thread counts.
    """
    _check_int("device_fingerprint", "num_threads", num_threads, 1)
    fields = dict(_device_fields())
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(fields["cpu"])).strip("-")[:40] or "cpu"
    return {**fields, "threads": int(num_threads), "id": f"{slug}-{fields['cores']}c-{digest}"}


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
            _quantize_label(self.quantize),
            self.batch_size,
        )

    def latency(self, statistic: str = "median") -> float:
        """`median_ms` or `p90_ms`."""
        if statistic not in ("median", "p90"):
            raise _fail("LatencyRow.latency", "statistic", statistic, "'median' or 'p90'")
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
            raise _fail("LatencyTable.add", "row", row, "a LatencyRow")
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
        quantize: Any = _ANY,
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
                and (quantize is _ANY or _quantize_label(row.quantize) == _quantize_label(quantize))
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
        quantize: Any = _ANY,
        batch_size: int | None = None,
    ) -> LatencyRow | None:
        """The row for a full `LatencyRow.row_key` tuple, or for an op/shape key string.

        With a key string, the other arguments narrow the search; None if no row matches.

        Raises:
          ValueError: several rows match the key string (the message lists how they differ).
        """
        if isinstance(key, tuple):
            if len(key) != 5:
                raise _fail("LatencyTable.lookup", "key", key, "a 5-tuple row_key or a key string")
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
            "rows": [_jsonable(dataclasses.asdict(row)) for row in self._rows.values()],
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
        return _write_atomic(Path(path), json.dumps(self.to_dict(), indent=1, sort_keys=True))

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
        import csv
        import io

        fields = [f.name for f in dataclasses.fields(LatencyRow)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in self._rows.values():
            values = dataclasses.asdict(row)
            values["spec"] = json.dumps(_jsonable(values["spec"]), sort_keys=True)
            writer.writerow(values)
        return _write_atomic(Path(path), buffer.getvalue())


def _write_atomic(path: Path, text: str) -> Path:
    if path.is_dir():
        raise ValueError(f"`path` {str(path)!r} is a directory; pass a file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8"
    ) as handle:
        handle.write(text)
    os.replace(handle.name, path)
    return path


def _check_table_device(
    function: str, table: LatencyTable, here: str, allow_foreign: bool, argument: str
) -> None:
    foreign = table.foreign_devices(here)
    if foreign and not allow_foreign:
        described = "; ".join(f"{i}: {table.devices.get(i, {})}" for i in foreign)
        raise ValueError(
            f"{function}: `{argument}` holds measurements from another device ({described}); "
            f"this device is {here!r}. Latency does not transfer between devices: profile here, "
            "or pass allow_foreign=True to use the table anyway."
        )


# ----------------------------------------------------------------------------------------------
# Conversion and timing


def _model_key(model: keras.Model) -> str:
    """Hash of the architecture with layer names replaced by their positions."""
    index = {layer.name: f"L{i}" for i, layer in enumerate(model.layers)}

    def scrub(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: scrub(v) for k, v in value.items() if k != "name"}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        if isinstance(value, str):
            return index.get(value, value)
        return value

    try:
        text = json.dumps(scrub(model.get_config()), sort_keys=True, default=str)
    except NotImplementedError:
        text = repr([(type(x).__name__, [tuple(w.shape) for w in x.weights]) for x in model.layers])
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    shape = "x".join(str(d) for d in model.input_shape[1:])
    return f"model:{digest}:in{shape}"


def _is_quantization_aware(model: keras.Model) -> bool:
    return any(hasattr(layer, "quantize_config") for layer in model.layers)


def _convert(
    model: keras.Model, quantize: str | int | None, single_block: bool, seed: int
) -> tuple[bytes, bool | None]:
    """Flatbuffer bytes and whether low-precision levels were verified."""
    from apprentice_tf import tflite
    from apprentice_tf.quantize import quantize_model

    if quantize is None and not _is_quantization_aware(model):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        return converter.convert(), None
    representative = None
    if quantize == "int8":
        rng = np.random.default_rng(seed)
        shape = (1, *model.input_shape[1:])

        def representative() -> list[np.ndarray]:
            return [rng.random(shape, dtype=np.float32) for _ in range(8)]

    elif quantize is not None:
        model = quantize_model(
            model, weight_bits=quantize, activation_bits=8, keep_first_last=not single_block
        )
    verified: bool | None = None if quantize == "int8" else True
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "candidate.tflite"
        try:
            tflite.convert(model, path, representative)
        except RuntimeError as error:
            if verified is None:
                raise
            # The converter re-quantized a kernel (measured: grouped Conv2D on TF 2.21). Time
            # the file it does produce; the row records levels_verified=False.
            warnings.warn(
                f"profile: {model.name}: {error} Timing the file converted with verify=False.",
                stacklevel=3,
            )
            tflite.convert(model, path, representative, verify=False)
            verified = False
        return path.read_bytes(), verified


def _make_interpreter(content: bytes, num_threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=content, num_threads=num_threads)


def _time_invokes(
    content: bytes, num_threads: int, runs: int, warmup: int, batch_size: int, seed: int
) -> np.ndarray:
    """Seconds of each of `runs` timed `invoke()` calls after `warmup` untimed ones (the loop
    of `apprentice_tf.litert.invoke_times`, which `tflite.latency` also uses)."""
    interpreter = _make_interpreter(content, num_threads)
    details = interpreter.get_input_details()
    for detail in details:
        shape = list(detail["shape"])
        if shape and shape[0] != batch_size:
            shape[0] = batch_size
            interpreter.resize_tensor_input(detail["index"], shape)
    litert.fill_random_inputs(interpreter, np.random.default_rng(seed))
    return litert.invoke_times(interpreter, runs, warmup)


def time_tflite(
    path: str | Path, num_threads: int = 1, runs: int = 20, warmup: int = 3, seed: int = 0
) -> dict[str, float]:
    """Time an existing .tflite file as `profile` times its candidates.

    LiteRT ``Interpreter(num_threads)``, one random batch of the file's input shape (batch 1),
    `warmup` untimed and `runs` timed ``invoke()`` calls.

    Returns:
      {"latency_ms": median, "latency_p10_ms": p10, "latency_p90_ms": p90}, in milliseconds.
    """
    _check_int("time_tflite", "num_threads", num_threads, 1)
    _check_int("time_tflite", "runs", runs, 1)
    times = 1000.0 * np.asarray(
        _time_invokes(Path(path).read_bytes(), num_threads, runs, warmup, 1, seed)
    )
    p10, median, p90 = (float(v) for v in np.percentile(times, [10, 50, 90]))
    return {"latency_ms": median, "latency_p10_ms": p10, "latency_p90_ms": p90}


@dataclasses.dataclass
class _Item:
    name: str
    key: str
    kind: str
    candidate: Any
    family: str | None
    spec: dict[str, Any]


def _items(candidates: Any) -> list[_Item]:
    if isinstance(candidates, Mapping):
        pairs = [(str(name), candidate) for name, candidate in candidates.items()]
    elif isinstance(candidates, keras.Model | BlockSpec | StudentCandidate):
        pairs = [(None, candidates)]
    elif isinstance(candidates, Iterable) and not isinstance(candidates, str | bytes):
        pairs = [(None, candidate) for candidate in candidates]
    else:
        raise _fail(
            "profile",
            "candidates",
            candidates,
            "a dict {name: candidate} or a list of keras.Model / BlockSpec / StudentCandidate",
        )
    if not pairs:
        raise _fail("profile", "candidates", candidates, "a non-empty dict or list of candidates")
    items: list[_Item] = []
    for name, candidate in pairs:
        if isinstance(candidate, BlockSpec):
            item = _Item(name or candidate.key, candidate.key, "block", candidate, None, {})
            item.spec = candidate.to_dict()
        elif isinstance(candidate, StudentCandidate):
            item = _Item(name or candidate.name, candidate.key, "student", candidate, None, {})
            item.family, item.spec = candidate.family, _jsonable(candidate.kwargs)
        else:
            keras_object(
                "profile",
                f"candidates[{name!r}]" if name else "candidates[...]",
                candidate,
                keras.Model,
            )
            if len(candidate.inputs or ()) != 1:
                raise ValueError(
                    f"profile: model {candidate.name!r} has {len(candidate.inputs or ())} inputs; "
                    "only single-input models can be timed."
                )
            item = _Item(
                name or candidate.name, _model_key(candidate), "model", candidate, None, {}
            )
            item.spec = {"input_shape": list(candidate.input_shape[1:])}
        items.append(item)
    names = [item.name for item in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"profile: candidate names must be unique, received duplicates {duplicates}; pass a "
            "dict {name: candidate}."
        )
    return items


def _resolve_cache(
    cache: LatencyTable | str | os.PathLike | None, here: str, allow_foreign: bool, function: str
) -> tuple[LatencyTable, Path | None]:
    if cache is None:
        return LatencyTable(), None
    if isinstance(cache, LatencyTable):
        table, path = cache, None
    elif isinstance(cache, str | os.PathLike):
        path = Path(cache)
        table = LatencyTable.load(path) if path.exists() else LatencyTable()
    else:
        raise _fail(function, "cache", cache, "a LatencyTable, a path to its JSON, or None")
    _check_table_device(function, table, here, allow_foreign, "cache")
    return table, path


def _measure(
    item: _Item,
    fingerprint: Mapping[str, Any],
    quantize: str | int | None,
    runs: int,
    warmup: int,
    batch_size: int,
    seed: int,
) -> LatencyRow:
    """Build, convert and time one candidate."""
    model = item.candidate
    if isinstance(model, BlockSpec | StudentCandidate):
        model = model.build()
    threads = int(fingerprint["threads"])
    content, verified = _convert(model, quantize, item.kind == "block", seed)
    times = 1000.0 * _time_invokes(content, threads, runs, warmup, batch_size, seed)
    p10, median, p90 = (float(v) for v in np.percentile(times, [10, 50, 90]))
    return LatencyRow(
        name=item.name,
        key=item.key,
        kind=item.kind,
        device_id=str(fingerprint["id"]),
        num_threads=threads,
        quantize=quantize,
        batch_size=batch_size,
        params=int(model.count_params()),
        tflite_bytes=len(content),
        median_ms=median,
        p90_ms=p90,
        p10_ms=p10,
        spread_ms=p90 - p10,
        std_ms=float(np.std(times)),
        runs=runs,
        warmup=warmup,
        family=item.family,
        spec=item.spec,
        levels_verified=verified,
        measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def profile(
    candidates: Mapping[str, keras.Model | BlockSpec | StudentCandidate]
    | Sequence[keras.Model | BlockSpec | StudentCandidate],
    num_threads: int = 1,
    runs: int = 20,
    warmup: int = 3,
    quantize: str | int | None = None,
    batch_size: int = 1,
    cache: LatencyTable | str | os.PathLike | None = None,
    verbose: int = 1,
    *,
    allow_foreign: bool = False,
    seed: int = 0,
) -> LatencyTable:
    """Convert each candidate to TFLite and time it with the LiteRT interpreter on this machine.

    For each candidate: convert (float: no optimisation; ``"int8"``: full-integer post-training
    quantization calibrated on 8 uniform random batches; ``"ternary"``/2/4/8:
    `apprentice_tf.quantize_model` with 8-bit activations, ``keep_first_last=False`` for single
    blocks, then `tflite.convert`), load it in ``Interpreter(num_threads=num_threads)``, feed one
    random batch of `batch_size`, call ``invoke()`` `warmup` times untimed and `runs` times
    timed, and record the median, p10, p90, spread = p90 - p10 and standard deviation of the
    per-invoke wall times (Turner et al. 2018 time each layer configuration on the target and
    keep the median).

    Rows are keyed by (device id, threads, op/shape key, quantization, batch size). A row of
    `cache` with the same key for this device is reused without converting or timing again.

    Args:
      candidates: {name: candidate} or a list (names: `BlockSpec.key`, `StudentCandidate.name`,
        `model.name`); candidates are `BlockSpec`, `StudentCandidate` or single-input float
        tf_keras models.
      num_threads: interpreter threads (>= 1).
      runs: timed invokes per candidate (>= 1).
      warmup: untimed invokes before timing (>= 0).
      quantize: one of `QUANTIZE_MODES`.
      batch_size: batch of the timed input (>= 1).
      cache: a `LatencyTable` (new rows are added to it) or the path of a table's JSON (read if
        it exists, written back with the new rows), or None.
      verbose: 0 silent, 1 progress bar.
      allow_foreign: accept a `cache` that holds rows of other devices (they are kept but never
        reused for this device).
      seed: seed of the random inputs.

    Returns:
      A `LatencyTable` with one row per candidate, in the given order.

    Raises:
      ValueError: empty or invalid candidates, an argument out of range, or a foreign `cache`
        without `allow_foreign`; nothing is timed or written then.
    """
    _check_int("profile", "num_threads", num_threads, 1)
    _check_int("profile", "runs", runs, 1)
    _check_int("profile", "warmup", warmup, 0)
    _check_int("profile", "batch_size", batch_size, 1)
    _check_quantize("profile", quantize)
    if verbose not in (0, 1, 2):
        raise _fail("profile", "verbose", verbose, "0, 1 or 2")
    items = _items(candidates)
    fingerprint = device_fingerprint(num_threads)
    here = fingerprint["id"]
    table, path = _resolve_cache(cache, here, allow_foreign, "profile")
    label = _quantize_label(quantize)

    result = LatencyTable()
    progress = keras.utils.Progbar(
        len(items), verbose=verbose, stateful_metrics=["median_ms"], unit_name="candidate"
    )
    measured = 0
    try:
        for step, item in enumerate(items, start=1):
            stored = table.lookup((here, num_threads, item.key, label, batch_size))
            if stored is None:
                stored = _measure(item, fingerprint, quantize, runs, warmup, batch_size, seed)
                table.add(stored, fingerprint)
                measured += 1
            elif stored.name != item.name:
                stored = dataclasses.replace(stored, name=item.name)
            result.add(stored, fingerprint)
            progress.update(step, [("median_ms", stored.median_ms)])
    finally:
        # Keep what was measured, even when a later candidate fails to convert.
        if path is not None and (measured or not path.exists()):
            table.save(path)
    return result


# ----------------------------------------------------------------------------------------------
# Sweeps and steps


def layer_sweep(
    spatial_sizes: Sequence[int] = (32, 16, 8),
    channels: Iterable[int] = range(8, 129, 8),
    ops: Sequence[str] = OPS,
    *,
    groups: int = 2,
    stride: int = 1,
    kernel_size: int = 3,
    num_threads: int = 1,
    runs: int = 20,
    warmup: int = 3,
    quantize: str | int | None = None,
    batch_size: int = 1,
    cache: LatencyTable | str | os.PathLike | None = None,
    verbose: int = 1,
    allow_foreign: bool = False,
) -> LatencyTable:
    """Time every block of a grid: ops x spatial sizes x channel counts (in = out = c).

    Turner et al. (2018, Figs. 2-3) sweep channel counts per block type and input size and find
    latency moving in steps rather than growing smoothly with c^2. Grouped blocks are skipped
    where `groups` does not divide c. Other arguments as in `profile`.

    Returns:
      The `LatencyTable` of the grid (rows named by `BlockSpec.key`); `plot_sweep` draws it and
      `find_steps` lists its jumps.
    """
    channel_list = list(channels)
    if not spatial_sizes or not channel_list or not ops:
        raise _fail(
            "layer_sweep",
            "spatial_sizes/channels/ops",
            (tuple(spatial_sizes), channel_list, tuple(ops)),
            "non-empty",
        )
    specs = []
    for op in ops:
        for size in spatial_sizes:
            for c in channel_list:
                if op == "grouped" and _is_int(c) and c % groups:
                    continue
                specs.append(
                    BlockSpec(
                        op,
                        size,
                        c,
                        c,
                        stride=stride,
                        kernel_size=kernel_size,
                        groups=groups if op == "grouped" else None,
                    )
                )
    if not specs:
        raise ValueError(
            f"layer_sweep: no block left: `groups`={groups} divides none of channels "
            f"{channel_list} and ops={tuple(ops)} has only 'grouped'."
        )
    return profile(
        specs,
        num_threads=num_threads,
        runs=runs,
        warmup=warmup,
        quantize=quantize,
        batch_size=batch_size,
        cache=cache,
        verbose=verbose,
        allow_foreign=allow_foreign,
    )


@dataclasses.dataclass(frozen=True)
class Step:
    """A latency step: going from `previous_channels` to `channels` costs `relative_increase`.

    Attributes:
      op, input_size, groups, stride, kernel_size: the block series the step belongs to.
      in_channels: None when the series sweeps in = out channels together.
      device_id, num_threads, quantize, batch_size: the measurement setting.
      previous_channels, channels: consecutive out-channel counts of the series.
      previous_ms, ms: their latencies (the `metric` of `find_steps`).
      relative_increase: ms / previous_ms - 1.
      expected_increase: macs / previous_macs - 1 with ``normalize="macs"``, else 0.
    """

    op: str
    input_size: int
    groups: int
    stride: int
    kernel_size: int
    in_channels: int | None
    device_id: str
    num_threads: int
    quantize: str | int | None
    batch_size: int
    previous_channels: int
    channels: int
    previous_ms: float
    ms: float
    relative_increase: float
    expected_increase: float = 0.0


def _block_series(table: LatencyTable) -> dict[tuple, list[LatencyRow]]:
    series: dict[tuple, list[LatencyRow]] = {}
    for row in table:
        if row.kind != "block":
            continue
        s = row.spec
        tied = s["in_channels"] == s["out_channels"]
        key = (
            row.device_id,
            row.num_threads,
            _quantize_label(row.quantize),
            row.batch_size,
            s["op"],
            s["input_size"],
            s.get("groups") or 1,
            s["stride"],
            s["kernel_size"],
            None if tied else s["in_channels"],
        )
        series.setdefault(key, []).append(row)
    for rows in series.values():
        rows.sort(key=lambda r: r.spec["out_channels"])
    return series


def find_steps(
    table: LatencyTable,
    threshold: float = 0.15,
    *,
    metric: str = "median_ms",
    min_delta_ms: float = 0.0,
    above_spread: bool = True,
    normalize: str | None = None,
) -> list[Step]:
    """Channel counts at which a block's latency jumps (Turner et al. 2018, Section 3).

    Within each series of block rows that differ only in channel count (same device, threads,
    quantization, batch, op, input size, groups, stride, kernel; in = out swept together or a
    fixed in_channels), sorted by out_channels c_1 < c_2 < ..., a step at c_i is reported when

        [t(c_i) / t(c_{i-1})] / g_i - 1 > threshold   and   t(c_i) - t(c_{i-1}) > min_delta_ms

    with g_i = 1 (``normalize=None``: any relative jump) or g_i = MACs(c_i) / MACs(c_{i-1})
    (``normalize="macs"``: latency growing faster than the work, `BlockSpec.macs`), and, with
    `above_spread`, t(c_i) - t(c_{i-1}) > max(spread(c_{i-1}), spread(c_i)), so that timing
    noise (p90 - p10 of each row) is not mistaken for a step. The channel counts just below the
    steps are the cheap ones to choose. On a fine channel grid, the smooth quadratic growth of a
    convolution's work also exceeds a small raw threshold: use ``normalize="macs"`` or a
    threshold above the grid's growth there.

    Returns:
      `Step` records ordered by series then channels; ``[s.channels for s in steps]`` gives the
      channel counts where latency jumps.
    """
    if not isinstance(table, LatencyTable):
        raise _fail("find_steps", "table", table, "a LatencyTable")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0:
        raise _fail("find_steps", "threshold", threshold, "a number >= 0")
    if metric not in ("median_ms", "p90_ms", "p10_ms"):
        raise _fail("find_steps", "metric", metric, "'median_ms', 'p90_ms' or 'p10_ms'")
    if normalize not in (None, "macs"):
        raise _fail("find_steps", "normalize", normalize, "None or 'macs'")
    steps = []
    for key, rows in _block_series(table).items():
        device, threads, _, batch, op, size, groups, stride, kernel, in_channels = key
        for before, after in zip(rows, rows[1:], strict=False):
            t0, t1 = getattr(before, metric), getattr(after, metric)
            if t0 <= 0:
                continue
            delta = t1 - t0
            noise = max(before.spread_ms, after.spread_ms) if above_spread else 0.0
            growth = 1.0
            if normalize == "macs":
                growth = BlockSpec(**after.spec).macs / BlockSpec(**before.spec).macs
            if (t1 / t0) / growth - 1 > threshold and delta > min_delta_ms and delta > noise:
                steps.append(
                    Step(
                        op=op,
                        input_size=size,
                        groups=groups,
                        stride=stride,
                        kernel_size=kernel,
                        in_channels=in_channels,
                        device_id=device,
                        num_threads=threads,
                        quantize=after.quantize,
                        batch_size=batch,
                        previous_channels=before.spec["out_channels"],
                        channels=after.spec["out_channels"],
                        previous_ms=t0,
                        ms=t1,
                        relative_increase=delta / t0,
                        expected_increase=growth - 1,
                    )
                )
    return steps


def plot_sweep(
    table: LatencyTable,
    path: str | os.PathLike,
    *,
    metric: str = "median_ms",
    threshold: float = 0.15,
    normalize: str | None = None,
) -> Path:
    """Plot latency against channels, one panel per op, one line per input size (PNG).

    Shaded bands are p10-p90; crosses mark the steps `find_steps(table, threshold,
    normalize=normalize)` reports.
    Uses matplotlib's Agg canvas directly (no global backend change).

    Returns:
      The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = _block_series(table)
    if not series:
        raise _fail("plot_sweep", "table", table, "a table with block rows (from layer_sweep)")
    ops = sorted({key[4] for key in series}, key=lambda op: OPS.index(op))
    steps = {
        (
            (s.device_id, s.num_threads, _quantize_label(s.quantize), s.batch_size, s.op),
            (s.input_size, s.groups, s.stride, s.kernel_size, s.in_channels),
            s.channels,
        )
        for s in find_steps(table, threshold, metric=metric, normalize=normalize)
    }
    figure = Figure(figsize=(5 * len(ops), 4), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(ops), squeeze=False)[0]
    for ax, op in zip(axes, ops, strict=True):
        for key, rows in sorted(series.items(), key=lambda kv: (-kv[0][5], str(kv[0]))):
            if key[4] != op:
                continue
            device, threads, label, batch, _, size, groups, stride, _, in_ch = key
            x = [r.spec["out_channels"] for r in rows]
            y = [getattr(r, metric) for r in rows]
            text = f"{size}x{size}" + (f" g{groups}" if op == "grouped" else "")
            text += f" {label} t{threads}" + (f" s{stride}" if stride != 1 else "")
            text += "" if in_ch is None else f" in{in_ch}"
            (line,) = ax.plot(x, y, marker=".", label=text)
            ax.fill_between(
                x,
                [r.p10_ms for r in rows],
                [r.p90_ms for r in rows],
                alpha=0.2,
                color=line.get_color(),
            )
            marks = [
                (xi, yi) for xi, yi in zip(x, y, strict=True) if (key[:5], key[5:], xi) in steps
            ]
            if marks:
                ax.plot(*zip(*marks, strict=True), "x", color="black", markersize=8)
        ax.set_title(f"{op} blocks")
        ax.set_xlabel("channels (in = out)")
        ax.set_ylabel(f"{metric.replace('_ms', '')} latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


# ----------------------------------------------------------------------------------------------
# Networks


_PASS_THROUGH = (
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.Activation,
)


def _unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.layer if isinstance(layer, keras.layers.Wrapper) else layer


def _consumers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    return [node.outbound_layer for node in layer._outbound_nodes]  # noqa: SLF001


def _square(shape: Sequence[int | None]) -> int:
    h, w = shape[1], shape[2]
    return int(h) if h == w else round(math.sqrt(int(h) * int(w)))


def _pointwise_after(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The 1x1 Conv2D reached from `layer` through single-consumer BN/ReLU layers, if any."""
    current = layer
    while True:
        consumers = _consumers(current)
        if len(consumers) != 1:
            return None
        current = consumers[0]
        inner = _unwrap(current)
        if isinstance(inner, _PASS_THROUGH):
            continue
        if (
            type(inner) is keras.layers.Conv2D
            and tuple(inner.kernel_size) == (1, 1)
            and tuple(inner.strides) == (1, 1)
            and inner.groups == 1
        ):
            return current
        return None


def network_blocks(model: keras.Model) -> list[tuple[str, BlockSpec]]:
    """Decompose a network into the `BlockSpec` of each of its convolutions.

    Every Conv2D becomes a ``"conv"`` (or ``"grouped"``, groups > 1) block with the layer's input
    size, channels, stride and kernel; a DepthwiseConv2D (multiplier 1) followed through
    BN/ReLU by a 1x1 Conv2D becomes one ``"separable"`` block; any other DepthwiseConv2D a
    ``"grouped"`` block with groups = input channels. Dense layers, pooling, Add and Concatenate
    are not counted. Non-square inputs use sqrt(H W) as the size.

    Returns:
      [(layer name, BlockSpec)], in model order (a separable block is named by its depthwise
      layer).
    """
    keras_object("network_blocks", "model", model, keras.Model)
    blocks: list[tuple[str, BlockSpec]] = []
    merged: set[str] = set()
    for layer in model.layers:
        inner = _unwrap(layer)
        if layer.name in merged:
            continue
        if isinstance(inner, keras.layers.DepthwiseConv2D):
            in_shape = layer.input_shape
            channels = int(in_shape[-1])
            pointwise = _pointwise_after(layer) if inner.depth_multiplier == 1 else None
            if pointwise is not None:
                merged.add(pointwise.name)
                spec = BlockSpec(
                    "separable",
                    _square(in_shape),
                    channels,
                    int(_unwrap(pointwise).filters),
                    stride=int(inner.strides[0]),
                    kernel_size=int(inner.kernel_size[0]),
                )
            else:
                # A lone depthwise convolution: a grouped convolution with one group per channel.
                spec = BlockSpec(
                    "grouped" if channels > 1 else "conv",
                    _square(in_shape),
                    channels,
                    channels * int(inner.depth_multiplier),
                    stride=int(inner.strides[0]),
                    kernel_size=int(inner.kernel_size[0]),
                    groups=channels if channels > 1 else None,
                )
            blocks.append((layer.name, spec))
        elif type(inner) is keras.layers.Conv2D:
            in_shape = layer.input_shape
            grouped = inner.groups > 1
            spec = BlockSpec(
                "grouped" if grouped else "conv",
                _square(in_shape),
                int(in_shape[-1]),
                int(inner.filters),
                stride=int(inner.strides[0]),
                kernel_size=int(inner.kernel_size[0]),
                groups=int(inner.groups) if grouped else None,
            )
            blocks.append((layer.name, spec))
    return blocks


def estimate_network_latency(
    model: keras.Model,
    table: LatencyTable | str | os.PathLike | None = None,
    *,
    num_threads: int = 1,
    runs: int = 20,
    warmup: int = 3,
    quantize: str | int | None = None,
    batch_size: int = 1,
    allow_foreign: bool = False,
    verbose: int = 0,
) -> float:
    """Latency of `model` predicted as the sum of its blocks' measured latencies (ms).

    HAKD's additive model: t(network) ~ sum_b t(block_b) over `network_blocks(model)`, each
    block's median looked up in `table` (blocks missing from it are profiled now and added; a
    path is read and written back). The head (pooling, Dense), residual Adds, concatenations and
    interpreter overhead per op are not in the sum, so compare with `measure_model_latency` to
    know the error of the estimate on this device.

    Raises:
      ValueError: the model has no convolution, or as `profile`.
    """
    blocks = network_blocks(model)
    if not blocks:
        raise ValueError(
            f"estimate_network_latency: model {model.name!r} has no Conv2D or DepthwiseConv2D "
            "layer to estimate from."
        )
    unique = {spec.key: spec for _, spec in blocks}
    if table is None:
        table = LatencyTable()
    rows = profile(
        unique,
        num_threads=num_threads,
        runs=runs,
        warmup=warmup,
        quantize=quantize,
        batch_size=batch_size,
        cache=table,
        verbose=verbose,
        allow_foreign=allow_foreign,
    )
    by_key = {row.key: row.median_ms for row in rows}
    return float(sum(by_key[spec.key] for _, spec in blocks))


def measure_model_latency(
    model: keras.Model,
    *,
    num_threads: int = 1,
    runs: int = 20,
    warmup: int = 3,
    quantize: str | int | None = None,
    batch_size: int = 1,
    cache: LatencyTable | str | os.PathLike | None = None,
    allow_foreign: bool = False,
    verbose: int = 0,
) -> LatencyRow:
    """Measure the whole network as one candidate (`profile` of ``{model.name: model}``).

    Returns:
      Its `LatencyRow` (median_ms, p90_ms, spread_ms, params, tflite_bytes, ...).
    """
    keras_object("measure_model_latency", "model", model, keras.Model)
    table = profile(
        {model.name: model},
        num_threads=num_threads,
        runs=runs,
        warmup=warmup,
        quantize=quantize,
        batch_size=batch_size,
        cache=cache,
        verbose=verbose,
        allow_foreign=allow_foreign,
    )
    return table.rows[0]


# ----------------------------------------------------------------------------------------------
# Selection


@dataclasses.dataclass(frozen=True)
class Selection:
    """The student `select_student` chose, and the measurements that justify it.

    Attributes:
      name: the chosen row's name.
      family: student family (None for plain model rows).
      config: the builder's keyword arguments (the row's `spec`).
      latency_ms: its latency (the `statistic` used for the budget).
      params: its parameter count.
      budget_ms: the budget it was chosen under.
      row: the chosen `LatencyRow`.
      rows: every row considered, fastest first (the fitting ones and those over budget).
      rule: the selection rule in words, for reports.
    """

    name: str
    family: str | None
    config: dict[str, Any]
    latency_ms: float
    params: int
    budget_ms: float
    row: LatencyRow
    rows: tuple[LatencyRow, ...]
    rule: str

    @property
    def builder(self) -> Callable[[], keras.Model]:
        """A no-argument callable building the chosen network (student rows only)."""
        if self.family is None:
            raise ValueError(
                f"Selection {self.name!r} came from a plain model row, which has no builder; "
                "profile `student_candidates(...)` to select buildable students."
            )
        return functools.partial(_family_builder(self.family), **self.config)

    def build(self) -> keras.Model:
        """A freshly initialised instance of the chosen student."""
        return self.builder()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the chosen row in full, the others by name and latency)."""
        return _jsonable(
            {
                "name": self.name,
                "family": self.family,
                "config": self.config,
                "latency_ms": self.latency_ms,
                "params": self.params,
                "budget_ms": self.budget_ms,
                "rule": self.rule,
                "row": dataclasses.asdict(self.row),
                "considered": [
                    {
                        "name": r.name,
                        "median_ms": r.median_ms,
                        "p90_ms": r.p90_ms,
                        "params": r.params,
                    }
                    for r in self.rows
                ],
            }
        )


def _one_value(function: str, argument: str, values: set, given: Any) -> Any:
    if given is not _ANY and given is not None:
        return given
    if len(values) == 1:
        return next(iter(values))
    raise ValueError(
        f"{function}: the table's candidate rows have several values of `{argument}` "
        f"({sorted(values, key=str)}); pass `{argument}` to choose one."
    )


def select_student(
    table: LatencyTable,
    latency_budget_ms: float,
    family: str | None = "mobilenet",
    candidates: Iterable[str] | None = None,
    capacity: str | Callable[[LatencyRow], float] = "params",
    allow_foreign: bool = False,
    *,
    num_threads: int | None = None,
    quantize: Any = _ANY,
    batch_size: int | None = None,
    statistic: str = "median",
    capacity_tolerance: float = 0.05,
    device_id: str | None = None,
) -> Selection:
    """Choose the student with the most capacity whose measured latency fits the budget.

    HAKD (Turner et al. 2018) designs the student from the latency measured on the target. Among
    the whole-network rows of `family` (from `profile(student_candidates(...))`), with latency
    t = `statistic` (median or p90) and capacity C (parameters by default):

    1. fitting = {r : t(r) <= latency_budget_ms};
    2. C* = max over fitting of C(r);
    3. near = {r in fitting : C(r) >= (1 - capacity_tolerance) C*};
    4. the choice is the fastest row of `near` (ties: larger C, then name).

    Step 4 is the tie-break toward configurations just below a latency step: of two
    candidates with nearly the same capacity, the one that did not cross the step is faster.

    Args:
      table: a `LatencyTable` with whole-network rows.
      latency_budget_ms: the budget (> 0).
      family: rows of this family only (None: every student and model row).
      candidates: restrict to these row names.
      capacity: ``"params"``, ``"tflite_bytes"``, or a callable row -> capacity.
      allow_foreign: accept rows of another device (e.g. a table measured on the target board
        and used to choose on a workstation).
      num_threads, quantize, batch_size: which measurement setting to use; needed only when
        the rows hold several.
      statistic: ``"median"`` or ``"p90"`` (a budget for the slow tail).
      capacity_tolerance: relative capacity within which the faster candidate is preferred.
      device_id: which device's rows to use when the table holds several.

    Returns:
      A `Selection`.

    Raises:
      ValueError: budget <= 0, no candidate rows, rows from a foreign device without
        `allow_foreign`, several settings without choosing one, or no candidate within the
        budget (the message names the fastest one and its latency).
    """
    function = "select_student"
    if not isinstance(table, LatencyTable):
        raise _fail(function, "table", table, "a LatencyTable (from profile or LatencyTable.load)")
    if (
        isinstance(latency_budget_ms, bool)
        or not isinstance(latency_budget_ms, int | float)
        or not math.isfinite(latency_budget_ms)
        or latency_budget_ms <= 0
    ):
        raise _fail(function, "latency_budget_ms", latency_budget_ms, "a finite number > 0")
    if family is not None and family not in FAMILIES:
        raise _fail(function, "family", family, f"one of {FAMILIES} or None")
    if statistic not in ("median", "p90"):
        raise _fail(function, "statistic", statistic, "'median' or 'p90'")
    if capacity in ("params", "tflite_bytes"):
        capacity_of: Callable[[LatencyRow], float] = lambda r, a=capacity: getattr(r, a)  # noqa: E731
    elif callable(capacity):
        capacity_of = capacity
    else:
        raise _fail(function, "capacity", capacity, "'params', 'tflite_bytes' or a callable")
    if (
        isinstance(capacity_tolerance, bool)
        or not isinstance(capacity_tolerance, int | float)
        or not 0 <= capacity_tolerance < 1
    ):
        raise _fail(function, "capacity_tolerance", capacity_tolerance, "a number in [0, 1)")

    pool = table.filter(
        family=family,
        names=candidates,
        predicate=lambda r: r.kind in (("student",) if family else ("student", "model")),
    )
    if not len(pool):
        raise ValueError(
            f"{function}: `table` has no whole-network rows for family={family!r}"
            + (f" and candidates={sorted(candidates)}" if candidates is not None else "")
            + f" (its rows: {sorted({(r.kind, r.family) for r in table}, key=str)}). Profile "
            "`student_candidates(family, ...)` first."
        )
    here = device_fingerprint()["id"]
    if device_id is None:
        ids = pool.device_ids
        device_id = here if here in ids else (ids[0] if len(ids) == 1 else None)
        if device_id is None:
            raise ValueError(
                f"{function}: the table holds rows of devices {ids}, none of them this one "
                f"({here!r}); pass device_id and allow_foreign=True."
            )
    if device_id != here and not allow_foreign:
        _check_table_device(function, pool, here, allow_foreign, "table")
    pool = pool.filter(device_id=device_id)
    num_threads = _one_value(function, "num_threads", {r.num_threads for r in pool}, num_threads)
    labels = {_quantize_label(r.quantize): r.quantize for r in pool}
    if quantize is _ANY:
        if len(labels) != 1:
            raise ValueError(
                f"{function}: the table's candidate rows have several values of `quantize` "
                f"({sorted(labels.values(), key=str)}); pass `quantize` to choose one."
            )
        quantize = next(iter(labels.values()))
    batch_size = _one_value(function, "batch_size", {r.batch_size for r in pool}, batch_size)
    rows = sorted(
        pool.filter(num_threads=num_threads, quantize=quantize, batch_size=batch_size),
        key=lambda r: (r.latency(statistic), -capacity_of(r), r.name),
    )
    if not rows:
        raise ValueError(
            f"{function}: no candidate rows with num_threads={num_threads}, "
            f"quantize={quantize!r}, batch_size={batch_size}."
        )
    fitting = [r for r in rows if r.latency(statistic) <= latency_budget_ms]
    if not fitting:
        fastest = rows[0]
        raise ValueError(
            f"{function}: no candidate fits latency_budget_ms={latency_budget_ms}: the fastest, "
            f"{fastest.name!r}, takes {fastest.latency(statistic):.4g} ms ({statistic}, "
            f"{num_threads} thread(s), quantize={quantize!r}). Raise the budget or profile "
            "smaller candidates."
        )
    best = max(capacity_of(r) for r in fitting)
    near = [r for r in fitting if capacity_of(r) >= (1 - capacity_tolerance) * best]
    chosen = min(near, key=lambda r: (r.latency(statistic), -capacity_of(r), r.name))
    rule = (
        f"most {capacity if isinstance(capacity, str) else 'capacity'} with {statistic} latency "
        f"<= {latency_budget_ms} ms; among candidates within {capacity_tolerance:.0%} of the "
        "largest fitting capacity, the fastest"
    )
    return Selection(
        name=chosen.name,
        family=chosen.family,
        config=dict(chosen.spec),
        latency_ms=chosen.latency(statistic),
        params=chosen.params,
        budget_ms=float(latency_budget_ms),
        row=chosen,
        rows=tuple(rows),
        rule=rule,
    )
