"""What every recipe shares: flag checks, resumable training stages, deployment, the results files.

A recipe is a sequence of named stages (train the teacher, train the baseline student, distil).
Each stage trains with `keras.callbacks.BackupAndRestore`, logs every epoch to
``<output_dir>/<stage>.csv`` and, once finished, saves its weights, so running the same command
again after a kill resumes the interrupted stage and skips the finished ones. Because stages are
found by name, a run with other settings into a directory that holds another run's stages is
refused before it trains anything (`claim_output_dir`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import numbers
import os
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from apprentice_tf import data, precision, reporting, tflite, zoo
from apprentice_tf.compat import keras, tf


class RecipeError(ValueError):
    """A bad flag or input, found before any training; `main` prints it on one line."""


#: CIFAR ResNet names (He et al. 2016): resnet<6n+2>, e.g. resnet20/32/44/56/110 (resnet8: tests).
_RESNET = re.compile(r"resnet(\d+)")
MOMENTUM = 0.9


def resnet_depth(flag: str, name: Any) -> int:
    """The depth of a CIFAR ResNet name, resnet<6n+2>; RecipeError naming `flag` otherwise."""
    match = _RESNET.fullmatch(name) if isinstance(name, str) else None
    depth = int(match.group(1)) if match else 0
    if depth < 8 or (depth - 2) % 6:
        raise RecipeError(
            f"--{flag}={name!r} is not a CIFAR ResNet; use resnet<6n+2>, e.g. resnet20, resnet32, "
            "resnet44, resnet56 or resnet110."
        )
    return depth


def steps_per_epoch(dataset: tf.data.Dataset) -> int:
    """Batches in one pass over `dataset` (counted if tf.data does not know), at least 1."""
    steps = int(dataset.cardinality())
    if steps < 0:
        steps = sum(1 for _ in dataset)
    return max(1, steps)


def make_optimizer(
    learning_rate: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> keras.optimizers.Optimizer:
    """SGD with momentum 0.9 and a cosine learning rate, optionally warmed up and weight-decayed.

    Over T = epochs·steps_per_epoch steps, with W = round(warmup_epochs·steps_per_epoch):

        η_t = η_max · t / W                              for t < W   (linear warm-up)
        η_t = η_max · ½(1 + cos(π·(t − W)/(T − W)))      for t ≥ W   (cosine to 0)

    and, when ``weight_decay`` λ > 0, the decoupled decay w ← w − η_t·λ·w after each step
    (``keras.optimizers.SGD(weight_decay=...)``).
    """
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, int(math.floor(warmup_epochs * steps_per_epoch + 0.5)))
    if warmup > 0:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, total - warmup, warmup_target=learning_rate, warmup_steps=warmup
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, total)
    return keras.optimizers.SGD(
        learning_rate=schedule,
        momentum=MOMENTUM,
        nesterov=nesterov,
        weight_decay=weight_decay or None,
    )


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """The output directory as a Path, refusing one that exists as a file (nothing is written)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise RecipeError(f"--output_dir {str(path)!r} is a file; pass a directory.")
    return path


#: The file in which an output directory records the settings its stages were trained with.
SETTINGS_FILE = "settings.json"
#: Settings that change no trained weight: they may differ between runs into one directory.
NEUTRAL_SETTINGS = ("output_dir", "threads", "verbose")


def claim_output_dir(
    output_dir: Path, config: Any, reusable: Collection[str] = (), files: Collection[str] = ()
) -> None:
    """Refuse an output directory whose stages were trained with other settings; else claim it.

    Stages are reloaded and resumed by file name (`train_stage`), so a second run into the same
    directory with, say, another ``--epochs`` would silently reuse the first run's networks. The
    first run writes the settings that shape training (every field of the dataclass `config` but
    `NEUTRAL_SETTINGS` and `reusable`, those whose stages have names of their own, such as
    per-seed stages) to ``<output_dir>/settings.json``; a later run whose settings differ is
    refused before anything is trained or written, naming each differing setting. The settings
    named in `files` (checkpoints a run starts from) are recorded and compared by the sha256 of
    the file they name, so that a directory moved to another machine, where the same file has
    another path, still resumes. A directory without the file (an older run's) is claimed as it is.

    Raises:
      RecipeError: the settings differ from those recorded in the directory.
    """
    ignored = set(NEUTRAL_SETTINGS) | set(reusable)
    wanted = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignored}
    for key in files:
        if wanted.get(key):
            wanted[key] = {"sha256": zoo.sha256(wanted[key])}
    wanted = json.loads(json.dumps(wanted))  # tuples as lists, as read back
    recorded_file = output_dir / SETTINGS_FILE
    if recorded_file.exists():
        recorded = json.loads(recorded_file.read_text())
        differing = [
            f"--{key}={recorded.get(key)!r} there, {value!r} now"
            for key, value in wanted.items()
            if recorded.get(key) != value
        ]
        if differing:
            raise RecipeError(
                f"--output_dir {str(output_dir)!r} holds stages trained with other settings "
                f"({'; '.join(differing)}); pass another --output_dir, or delete it to start over."
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    reporting.write_json(recorded_file, wanted)


def check_choice(flag: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raise RecipeError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise RecipeError(f"--{flag}={value!r} is not allowed; use one of {list(allowed)}.")


def check_file(flag: str, value: str | None) -> None:
    """Raise RecipeError if a path flag names a file that does not exist."""
    if value and not Path(value).exists():
        raise RecipeError(f"--{flag}={value!r} does not exist.")


def one_line(error: BaseException) -> str:
    """An exception's message on one line (a RecipeError is printed as one line)."""
    return " ".join(str(error).split())


def check_dataset(dataset: str, **splits: str) -> int:
    """The class count of tfds `dataset`, after checking that each split expression (keyword:
    its flag) names examples of it; from the dataset's metadata (`data.info`), reading no data.

    Raises:
      RecipeError: an unknown dataset or split, naming the flag.
    """
    try:
        info = data.info(dataset)
    except ValueError as error:
        raise RecipeError(f"--dataset={dataset!r}: {one_line(error)}") from None
    for flag, split in splits.items():
        try:
            info.splits[split]
        except (ValueError, KeyError, TypeError, AssertionError) as error:
            raise RecipeError(f"--{flag}={split!r} of {dataset}: {one_line(error)}") from None
    return int(info.features["label"].num_classes)


def training_policy(flag: str, requested: str) -> str:
    """`apprentice_tf.precision.training_policy` for ``--flag=requested``.

    Raises:
      RecipeError: `requested` is not one of `apprentice_tf.precision.POLICIES`.
    """
    try:
        return precision.training_policy(requested)
    except ValueError as error:
        raise RecipeError(f"--{flag}: {error}") from None


def load_checkpoint(flag: str, path: str, model: keras.Model, describe: str) -> keras.Model:
    """`model` with the weights of ``--flag=path``: a ``.keras`` file, ``.weights.h5``/``.h5``
    weights or a TensorFlow checkpoint of `model`'s architecture (`model.load_weights` reads
    each of them).

    Raises:
      RecipeError: the weights do not fit (`describe` says what was expected), on one line.
    """
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError, tf.errors.OpError) as error:
        raise RecipeError(f"--{flag}={path!r} does not fit {describe}: {one_line(error)}") from None
    return model


def check_int(flag: str, value: Any, minimum: int) -> None:
    """Raise RecipeError unless `value` is an integer (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise RecipeError(f"--{flag} must be an integer >= {minimum}, received {value!r}.")


def check_positive(flag: str, value: float) -> None:
    """Raise RecipeError unless `value` > 0."""
    if not value > 0:
        raise RecipeError(f"--{flag} must be > 0, received {value!r}.")


def read_history(path: Path) -> dict[str, list[float]]:
    """Per-epoch logs from a CSVLogger file, one list per metric (empty if there is no file)."""
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    history: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            # CSVLogger writes "NA" for the val_* columns it adds when there is no validation.
            if key != "epoch" and value not in ("", "NA", None):
                history.setdefault(key, []).append(float(value))
    return history


class EpochTimer(keras.callbacks.Callback):
    """Adds ``seconds`` (the epoch's wall time, validation included) to the epoch logs."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._start


def train_stage(
    name: str,
    model: keras.Model,
    train_data: tf.data.Dataset,
    epochs: int,
    output_dir: Path,
    validation_data: tf.data.Dataset | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 1,
    steps_per_epoch: int | None = None,
) -> dict[str, list[float]]:
    """Fit `model` for `epochs`, resumable; returns the full per-epoch history.

    `steps_per_epoch` is passed to ``fit`` (for a repeated dataset).

    A finished stage (``<stage>.weights.h5`` present) is loaded instead of trained again.
    An interrupted one resumes from its last finished epoch via BackupAndRestore. The CSV log
    records every epoch's metrics and its wall time (``seconds``).
    """
    weights = output_dir / f"{name}.weights.h5"
    log = output_dir / f"{name}.csv"
    if weights.exists():
        model.load_weights(weights)
        print(f"[{name}] finished earlier: loaded {weights}")
        return read_history(log)
    output_dir.mkdir(parents=True, exist_ok=True)
    backup = keras.callbacks.BackupAndRestore(str(output_dir / "backup" / name))
    logger = keras.callbacks.CSVLogger(str(log), append=True)
    model.fit(
        train_data,
        epochs=epochs,
        validation_data=validation_data,
        steps_per_epoch=steps_per_epoch,
        # BackupAndRestore first (it restores before anything else runs); the CSV logger last,
        # so it records what the caller's callbacks add to the epoch logs (e.g. λ).
        callbacks=[backup, EpochTimer(), *callbacks, logger],
        verbose=verbose,
    )
    model.save_weights(weights)
    return read_history(log)


def keras_top1(model: keras.Model, dataset: tf.data.Dataset) -> float:
    """Top-1 accuracy of a Keras classifier (logits) on a dataset of (x, y)."""
    correct = total = 0
    for x, y in dataset:
        predictions = np.argmax(model.predict_on_batch(x), axis=-1)
        correct += int(np.sum(predictions == np.asarray(y).reshape(-1)))
        total += len(predictions)
    return correct / total


def deploy(
    model: keras.Model,
    path: Path,
    test_data: tf.data.Dataset,
    row: dict[str, Any],
    verbose: int = 1,
    num_threads: int = 1,
) -> dict[str, Any]:
    """Convert `model` to `path`, inspect the file and compare it with Keras on all of `test_data`.

    One pass over the split (`apprentice_tf.tflite.agreement`) runs both networks on every batch
    (Keras in inference mode, the .tflite file under one LiteRT interpreter) and adds to `row`:
    ``keras_top1``, ``tflite_top1``, their per-example top-1 ``agreement`` with the maximum and
    mean absolute logit difference (``max_abs_diff``, ``mean_abs_diff``; ``max_abs_output`` =
    max |Keras logit| to judge them against), the file/gzip/packed/float32 sizes and the
    per-layer inspection. `num_threads` is the interpreter's (the figures do not depend on it).
    """
    # A4 students: LiteRT computes their activations as int8 (see tflite.convert); the row
    # reports Keras and TFLite top-1 and their agreement, so the change is measured.
    tflite.convert(model, path, widen_activations=True)
    weights = tflite.inspect(path)
    sizes = tflite.size_report(path, weights)
    compared = tflite.agreement(model, path, test_data, num_threads, verbose)
    if "keras_top1" not in compared:
        raise RecipeError(f"deploy: the test split for {path} must yield (images, labels) pairs.")
    return {
        **row,
        "keras_top1": compared.pop("keras_top1"),
        "tflite_top1": compared.pop("tflite_top1"),
        "test_examples": compared["examples"],
        "agreement": compared,
        **dataclasses.asdict(sizes),
        "tflite": str(path),
        "inspection": [dataclasses.asdict(w) for w in weights],
        "inspection_table": tflite.format_inspection(weights, sizes),
    }


def finish(
    output_dir: Path,
    config: Any,
    rows: list[dict[str, Any]],
    curves: dict[str, Sequence[float]],
    extra: dict[str, Any] | None = None,
    curve_label: str = "validation top-1",
) -> dict[str, Any]:
    """Write results.json, results.md and the plots; returns the results dictionary."""
    table = reporting.results_table(rows)
    results = {
        "config": dataclasses.asdict(config),
        "machine": reporting.machine_info(),
        "rows": [{k: v for k, v in row.items() if k != "inspection_table"} for row in rows],
        "curves": {name: list(values) for name, values in curves.items()},
        **(extra or {}),
    }
    reporting.write_json(output_dir / "results.json", results)
    inspections = "\n\n".join(
        f"### {row['model']} {row['scheme']}: {row['tflite']}\n\n{row['inspection_table']}"
        for row in rows
        if "inspection_table" in row
    )
    reporting.write_text(
        output_dir / "results.md", f"# Results\n\n{table}\n\n## Stored weights\n\n{inspections}\n"
    )
    if curves:
        reporting.plot_curves(curves, output_dir / "curves.png", ylabel=curve_label)
    reporting.plot_accuracy_vs_size(rows, output_dir / "accuracy_vs_size.png")
    return results


# ------------------------------------------------------------------------------------------------
# Flags generated from a recipe's config dataclass

#: Scalar field types and the absl flag that parses them.
_SCALAR_FLAGS: dict[str, Callable[..., Any]] = {
    "bool": flags.DEFINE_bool,
    "int": flags.DEFINE_integer,
    "int | None": flags.DEFINE_integer,
    "float": flags.DEFINE_float,
    "str": flags.DEFINE_string,
}
_TUPLE = re.compile(r"tuple\[(int|float|str), \.\.\.\]")
_ELEMENT = {"int": int, "float": float, "str": str}


def _flag_fields(config_class: type, help: Mapping[str, str]) -> list[dataclasses.Field]:
    """The fields of `config_class` that are flags: those `help` describes, in field order."""
    fields = dataclasses.fields(config_class)
    unknown = sorted(set(help) - {field.name for field in fields})
    if unknown:
        raise TypeError(f"{config_class.__name__} has no field(s) {unknown} to make flags of.")
    return [field for field in fields if field.name in help]


def _field_type(field: dataclasses.Field) -> str:
    """The field's annotation as written (``"int | None"``, ``"tuple[int, ...]"``)."""
    if isinstance(field.type, str):
        return field.type
    return field.type.__name__ if isinstance(field.type, type) else str(field.type)


def define_flags(
    config_class: type,
    help: Mapping[str, str],
    flag_values: flags.FlagValues = flags.FLAGS,
    enums: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Define one absl flag per field of the frozen dataclass `config_class` named in `help`.

    Each flag has the field's name, default and type (``bool``, ``int``, ``int | None``,
    ``float``, ``str``; ``tuple[int|float|str, ...]`` becomes a comma-separated list) and the
    help text `help[name]`; a field in `enums` becomes an enum flag over those choices. Fields
    without help text are not flags (they keep their defaults). Flags are defined with
    ``allow_override``, so that several recipes can define the names they share (``--epochs``,
    ``--output_dir``, ...) in one process (tests) without an error; the last definition's default
    wins, which is why recipes define their flags only when run as programs, not on import.
    """
    enums = enums or {}
    for field in _flag_fields(config_class, help):
        kind, default = _field_type(field), field.default
        common = {"flag_values": flag_values, "allow_override": True}
        if field.name in enums:
            flags.DEFINE_enum(
                field.name, default, list(enums[field.name]), help[field.name], **common
            )
        elif kind in _SCALAR_FLAGS:
            _SCALAR_FLAGS[kind](field.name, default, help[field.name], **common)
        elif _TUPLE.fullmatch(kind):
            flags.DEFINE_list(field.name, [str(v) for v in default], help[field.name], **common)
        else:
            raise TypeError(
                f"{config_class.__name__}.{field.name}: no flag type for {kind!r}; use one of "
                f"{sorted(_SCALAR_FLAGS)} or tuple[int|float|str, ...]."
            )


def config_from_flags(
    config_class: type, help: Mapping[str, str], flag_values: flags.FlagValues = flags.FLAGS
) -> Any:
    """The `config_class` of parsed flags (fields without a flag keep their defaults).

    List flags are converted to tuples of the field's element type.

    Raises:
      RecipeError: a list entry that is not of the element type.
    """
    values = {}
    for field in _flag_fields(config_class, help):
        value = flag_values[field.name].value
        match = _TUPLE.fullmatch(_field_type(field))
        if match:
            element = _ELEMENT[match.group(1)]
            try:
                value = tuple(element(v) for v in value)
            except ValueError:
                raise RecipeError(
                    f"--{field.name} entries must be {element.__name__}s, received {value!r}."
                ) from None
        values[field.name] = value
    return config_class(**values)


def recipe_main(
    argv: Sequence[str],
    run: Callable[[Any], dict[str, Any]],
    make_config: Callable[[], Any],
    print_table: bool = True,
) -> None:
    """The body of every recipe's absl ``main(argv)``: refuse positional arguments, build the
    config from the flags (`make_config`), call `run`, and print the results table
    (`print_table`).

    A `RecipeError` stops with a one-line message (exit status 1) before anything is written.
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if print_table:
        run_main(run, make_config)
        return
    try:
        run(make_config())
    except RecipeError as error:
        raise SystemExit(f"error: {error}") from None


def run_main(run: Callable[[Any], dict[str, Any]], make_config: Callable[[], Any]) -> None:
    """Body of a recipe's `main`: build the config from flags, run, print the table.

    A `RecipeError` stops with a one-line message (exit status 1) before anything is written.
    """
    try:
        config = make_config()
        results = run(config)
    except RecipeError as error:
        raise SystemExit(f"error: {error}") from None
    print()
    print(reporting.results_table(results["rows"]))


def configure_threads(threads: int) -> None:
    """Fix TensorFlow's intra- and inter-op thread counts (0 leaves TensorFlow's default)."""
    if threads < 0:
        raise RecipeError(f"--threads must be >= 0, received {threads}.")
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already started: keep its settings.
            pass
