"""Conversion and timing: each candidate converted to TFLite and timed with the LiteRT interpreter
on this machine (HAKD's measurements, Turner et al. 2018), with one `ProfileSettings` for every
function that times."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apprentice_tf import _checks, _io, litert, tflite
from apprentice_tf.compat import keras
from apprentice_tf.hardware._common import check_quantize, check_table_device, quantize_label
from apprentice_tf.hardware.blocks import OPS, BlockSpec, network_blocks
from apprentice_tf.hardware.candidates import StudentCandidate
from apprentice_tf.hardware.device import device_fingerprint
from apprentice_tf.hardware.table import LatencyRow, LatencyTable
from apprentice_tf.quantize import is_quantization_aware, quantize_model

__all__ = [
    "ProfileSettings",
    "profile",
    "layer_sweep",
    "estimate_network_latency",
    "measure_model_latency",
    "time_tflite",
]


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    """How every candidate is converted and timed; one object instead of repeated arguments.

    Each candidate is converted (`quantize`), loaded in ``Interpreter(num_threads)``, fed one
    seeded random batch of `batch_size`, invoked `warmup` times untimed and `runs` times timed.

    Attributes:
      num_threads: interpreter threads (>= 1).
      runs: timed invokes per candidate (>= 1).
      warmup: untimed invokes before timing (>= 0).
      quantize: one of `QUANTIZE_MODES`.
      batch_size: batch of the timed input (>= 1).
      seed: seed of the random inputs (and of the int8 calibration batches).

    Raises:
      ValueError: an argument out of range (nothing is timed then).
    """

    num_threads: int = 1
    runs: int = 20
    warmup: int = 3
    quantize: str | int | None = None
    batch_size: int = 1
    seed: int = 0
    function: dataclasses.InitVar[str] = "ProfileSettings"

    def __post_init__(self, function: str) -> None:
        for argument, minimum in (
            ("num_threads", 1),
            ("runs", 1),
            ("warmup", 0),
            ("batch_size", 1),
        ):
            object.__setattr__(
                self,
                argument,
                _checks.integer(function, argument, getattr(self, argument), minimum),
            )
        check_quantize(function, self.quantize)

    @classmethod
    def of(
        cls, function: str, settings: ProfileSettings | None, timing: Mapping[str, Any]
    ) -> ProfileSettings:
        """`settings` (default: the defaults) with the fields named in `timing` replaced.

        Raises:
          ValueError: `timing` names something that is not a field, or a value out of range.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(timing) - fields)
        if unknown:
            raise TypeError(
                f"{function}: unexpected keyword argument(s) {unknown}; the timing settings are "
                f"{sorted(fields)}."
            )
        if settings is not None and not isinstance(settings, ProfileSettings):
            raise _checks.refuse(function, "settings", settings, "a ProfileSettings or None")
        base = dataclasses.asdict(settings) if settings is not None else {}
        return cls(**{**base, **timing}, function=function)

    @property
    def label(self) -> str:
        """The quantize setting as it appears in a row key (float, int8, ternary, w4a8...)."""
        return quantize_label(self.quantize)


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


def _convert(
    model: keras.Model, quantize: str | int | None, single_block: bool, seed: int, path: Path
) -> bool | None:
    """Write `model` converted to TFLite to `path`; whether low-precision levels were verified."""
    if quantize is None and not is_quantization_aware(model):
        tflite.convert(model, path)  # a float model stays float32
        return None
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
    try:
        tflite.convert(model, path, representative)
    except RuntimeError as error:
        if verified is None:
            raise
        # The converter re-quantized a kernel (measured: grouped Conv2D on TF 2.21). Time the
        # file it does produce; the row records levels_verified=False.
        warnings.warn(
            f"profile: {model.name}: {error} Timing the file converted with verify=False.",
            stacklevel=3,
        )
        tflite.convert(model, path, representative, verify=False)
        verified = False
    return verified


def _time_file(path: Path, settings: ProfileSettings) -> np.ndarray:
    """Milliseconds of each of `settings.runs` timed ``invoke()`` calls after `settings.warmup`
    untimed ones, on one seeded random batch of `settings.batch_size` (`litert.invoke_times`)."""
    interpreter = litert.make_interpreter(path, settings.num_threads)
    for detail in interpreter.get_input_details():
        shape = list(detail["shape"])
        if shape and shape[0] != settings.batch_size:
            shape[0] = settings.batch_size
            interpreter.resize_tensor_input(detail["index"], shape)
    litert.fill_random_inputs(interpreter, np.random.default_rng(settings.seed))
    return 1000.0 * litert.invoke_times(interpreter, settings.runs, settings.warmup)


def _percentiles(times_ms: np.ndarray) -> tuple[float, float, float]:
    """(p10, median, p90) of per-invoke times."""
    p10, median, p90 = (float(v) for v in np.percentile(times_ms, [10, 50, 90]))
    return p10, median, p90


def time_tflite(
    path: str | Path, num_threads: int = 1, runs: int = 20, warmup: int = 3, seed: int = 0
) -> dict[str, float]:
    """Time an existing .tflite file as `profile` times its candidates.

    LiteRT ``Interpreter(num_threads)``, one random batch of the file's input shape (batch 1),
    `warmup` untimed and `runs` timed ``invoke()`` calls.

    Returns:
      {"latency_ms": median, "latency_p10_ms": p10, "latency_p90_ms": p90}, in milliseconds.
    """
    settings = ProfileSettings(num_threads, runs, warmup, seed=seed, function="time_tflite")
    p10, median, p90 = _percentiles(_time_file(Path(path), settings))
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
        raise _checks.refuse(
            "profile",
            "candidates",
            candidates,
            "a dict {name: candidate} or a list of keras.Model / BlockSpec / StudentCandidate",
        )
    if not pairs:
        raise _checks.refuse(
            "profile", "candidates", candidates, "a non-empty dict or list of candidates"
        )
    items: list[_Item] = []
    for name, candidate in pairs:
        if isinstance(candidate, BlockSpec):
            item = _Item(name or candidate.key, candidate.key, "block", candidate, None, {})
            item.spec = candidate.to_dict()
        elif isinstance(candidate, StudentCandidate):
            item = _Item(name or candidate.name, candidate.key, "student", candidate, None, {})
            item.family, item.spec = candidate.family, _io.plain(candidate.kwargs)
        else:
            _checks.keras_object(
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
        raise _checks.refuse(
            function, "cache", cache, "a LatencyTable, a path to its JSON, or None"
        )
    check_table_device(function, table, here, allow_foreign, "cache")
    return table, path


def _measure(item: _Item, fingerprint: Mapping[str, Any], settings: ProfileSettings) -> LatencyRow:
    """Build, convert and time one candidate."""
    model = item.candidate
    if isinstance(model, BlockSpec | StudentCandidate):
        model = model.build()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "candidate.tflite"
        verified = _convert(model, settings.quantize, item.kind == "block", settings.seed, path)
        times = _time_file(path, settings)
        size = path.stat().st_size
    p10, median, p90 = _percentiles(times)
    return LatencyRow(
        name=item.name,
        key=item.key,
        kind=item.kind,
        device_id=str(fingerprint["id"]),
        num_threads=settings.num_threads,
        quantize=settings.quantize,
        batch_size=settings.batch_size,
        params=int(model.count_params()),
        tflite_bytes=size,
        median_ms=median,
        p90_ms=p90,
        p10_ms=p10,
        spread_ms=p90 - p10,
        std_ms=float(np.std(times)),
        runs=settings.runs,
        warmup=settings.warmup,
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
    device_id: str | None = None,
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
      device_id: whose measurements to return: None (this machine: reuse `cache`, time what it
        lacks) or the id of another device whose rows `cache` holds, measured there earlier;
        then nothing is timed (another device's latency cannot be measured here) and every
        candidate must have its row (e.g. HAKD choosing on a workstation for a board, or a run
        resumed on another machine going on with the measurements it chose by).

    Returns:
      A `LatencyTable` with one row per candidate, in the given order.

    Raises:
      ValueError: empty or invalid candidates, an argument out of range, a foreign `cache`
        without `allow_foreign`, or a `device_id` of another device for which `cache` lacks a
        candidate's row; nothing is timed or written then.
    """
    settings = ProfileSettings(
        num_threads, runs, warmup, quantize, batch_size, seed, function="profile"
    )
    return _profile(candidates, settings, cache, verbose, allow_foreign, "profile", device_id)


def _row_key(device_id: str, settings: ProfileSettings, item: _Item) -> tuple:
    """The `LatencyRow.row_key` of `item` measured on `device_id` under `settings`."""
    return (device_id, settings.num_threads, item.key, settings.label, settings.batch_size)


def _profile(
    candidates: Any,
    settings: ProfileSettings,
    cache: LatencyTable | str | os.PathLike | None,
    verbose: int,
    allow_foreign: bool,
    function: str,
    device_id: str | None = None,
) -> LatencyTable:
    """`profile` with its settings checked: the table of `candidates`, reusing `cache`.

    `device_id` (another device than this machine): the rows `cache` holds for that device,
    nothing timed; ValueError naming the candidates it lacks.
    """
    if verbose not in (0, 1, 2):
        raise _checks.refuse(function, "verbose", verbose, "0, 1 or 2")
    if device_id is not None and not (isinstance(device_id, str) and device_id):
        raise _checks.refuse(function, "device_id", device_id, "None or a device id string")
    items = _items(candidates)
    fingerprint = device_fingerprint(settings.num_threads)
    here = fingerprint["id"]
    target = device_id or here
    # Naming another device is consent to a cache that holds its rows.
    table, path = _resolve_cache(cache, here, allow_foreign or target != here, function)
    if target != here:
        lacking = [
            item.name for item in items if table.lookup(_row_key(target, settings, item)) is None
        ]
        if lacking:
            raise ValueError(
                f"{function}: device_id={target!r} is not this machine ({here!r}), so its "
                "latencies can only come from `cache`, which has no row for "
                f"{lacking} at {settings.num_threads} thread(s), quantize={settings.quantize!r}, "
                f"batch {settings.batch_size} (its devices: {table.device_ids}). Profile them on "
                "that device, or pass device_id=None to measure on this machine."
            )
        fingerprint = table.devices[target]

    result = LatencyTable()
    progress = keras.utils.Progbar(
        len(items), verbose=verbose, stateful_metrics=["median_ms"], unit_name="candidate"
    )
    measured = 0
    try:
        for step, item in enumerate(items, start=1):
            stored = table.lookup(_row_key(target, settings, item))
            if stored is None:
                stored = _measure(item, fingerprint, settings)
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


def layer_sweep(
    spatial_sizes: Sequence[int] = (32, 16, 8),
    channels: Iterable[int] = range(8, 129, 8),
    ops: Sequence[str] = OPS,
    *,
    groups: int = 2,
    stride: int = 1,
    kernel_size: int = 3,
    settings: ProfileSettings | None = None,
    cache: LatencyTable | str | os.PathLike | None = None,
    verbose: int = 1,
    allow_foreign: bool = False,
    device_id: str | None = None,
    **timing: Any,
) -> LatencyTable:
    """Time every block of a grid: ops x spatial sizes x channel counts (in = out = c).

    Turner et al. (2018, Figs. 2-3) sweep channel counts per block type and input size and find
    latency moving in steps rather than growing smoothly with c^2. Grouped blocks are skipped
    where `groups` does not divide c. `settings` (default `ProfileSettings()`), with any of its
    fields given as keywords (``num_threads=2, runs=50``) replacing its values, says how every
    block is converted and timed; `cache`, `verbose`, `allow_foreign` and `device_id` as in
    `profile`.

    Returns:
      The `LatencyTable` of the grid (rows named by `BlockSpec.key`); `plot_sweep` draws it and
      `find_steps` lists its jumps.
    """
    settings = ProfileSettings.of("layer_sweep", settings, timing)
    channel_list = list(channels)
    if not spatial_sizes or not channel_list or not ops:
        raise _checks.refuse(
            "layer_sweep",
            "spatial_sizes/channels/ops",
            (tuple(spatial_sizes), channel_list, tuple(ops)),
            "non-empty",
        )
    specs = []
    for op in ops:
        for size in spatial_sizes:
            for c in channel_list:
                if op == "grouped" and _checks.is_integer(c) and c % groups:
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
    return _profile(specs, settings, cache, verbose, allow_foreign, "layer_sweep", device_id)


def estimate_network_latency(
    model: keras.Model,
    table: LatencyTable | str | os.PathLike | None = None,
    settings: ProfileSettings | None = None,
    *,
    allow_foreign: bool = False,
    verbose: int = 0,
    device_id: str | None = None,
    **timing: Any,
) -> float:
    """Latency of `model` predicted as the sum of its blocks' measured latencies (ms).

    HAKD's additive model: t(network) ~ sum_b t(block_b) over `network_blocks(model)`, each
    block's median looked up in `table` (blocks missing from it are profiled now and added; a
    path is read and written back). The head (pooling, Dense), residual Adds, concatenations and
    interpreter overhead per op are not in the sum, so compare with `measure_model_latency` to
    know the error of the estimate on this device. `settings` and `**timing` as in
    `layer_sweep`; `device_id` as in `profile` (another device's blocks: all from `table`).

    Raises:
      ValueError: the model has no convolution, or as `profile`.
    """
    settings = ProfileSettings.of("estimate_network_latency", settings, timing)
    blocks = network_blocks(model)
    if not blocks:
        raise ValueError(
            f"estimate_network_latency: model {model.name!r} has no Conv2D or DepthwiseConv2D "
            "layer to estimate from."
        )
    unique = {spec.key: spec for _, spec in blocks}
    if table is None:
        table = LatencyTable()
    rows = _profile(
        unique, settings, table, verbose, allow_foreign, "estimate_network_latency", device_id
    )
    by_key = {row.key: row.median_ms for row in rows}
    return float(sum(by_key[spec.key] for _, spec in blocks))


def measure_model_latency(
    model: keras.Model,
    settings: ProfileSettings | None = None,
    *,
    cache: LatencyTable | str | os.PathLike | None = None,
    allow_foreign: bool = False,
    verbose: int = 0,
    **timing: Any,
) -> LatencyRow:
    """Measure the whole network as one candidate (`profile` of ``{model.name: model}``).

    `settings` and `**timing` as in `layer_sweep`.

    Returns:
      Its `LatencyRow` (median_ms, p90_ms, spread_ms, params, tflite_bytes, ...).
    """
    settings = ProfileSettings.of("measure_model_latency", settings, timing)
    _checks.keras_object("measure_model_latency", "model", model, keras.Model)
    table = _profile(
        {model.name: model}, settings, cache, verbose, allow_foreign, "measure_model_latency"
    )
    return table.rows[0]
