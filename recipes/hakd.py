"""HAKD: hardware-aware knowledge distillation (Turner et al., arXiv 1810.10460), end to end.

1. **Measure.** Every student candidate of `--family` (MobileNet v1 widths, DenseNet-BC growth
   rates or CIFAR ResNet widths; `--grid` to choose them) is converted to TFLite and timed with
   the LiteRT interpreter on this machine (`hardware.profile`: `--num_threads`, `--warmup`
   untimed and `--runs` timed invokes, median). With `--sweep`, single blocks are timed over a
   channel grid too (`hardware.layer_sweep`), and `hardware.find_steps` lists where latency jumps.
   Every measurement goes into one `LatencyTable` (`--table`, default
   ``<output_dir>/latency_table.json``), so a rerun or a new budget times nothing again. The
   device that chose is recorded in ``<output_dir>/target_device.json`` (`TARGET_DEVICE_FILE`):
   a rerun into that directory on another machine (a resume) chooses from that device's rows of
   the table again, timing nothing, so its stages go on training the networks they started with.
2. **Select.** `hardware.select_student`: the candidate with the most parameters whose measured
   median latency is <= `--latency_budget_ms` (the faster of near-equal ones: just below a step).
   The additive estimate (sum of the student's measured blocks, `estimate_network_latency`) is
   compared with the whole-network measurement, and its error is reported.
3. **Teacher.** A CIFAR ResNet (`--teacher`, `--teacher_width`), trained as a stage or loaded from
   `--teacher_checkpoint`.
4. **Distil.** The selected student (float, or an Apprentice low-precision student with
   `--weight_bits`/`--activation_bits`) learns from the frozen teacher with
   L = β·H(y, p_S) + γ·τ²·H(p_T(τ), p_S(τ)) (Mishra & Marr's weights; `--alpha` has no effect with
   a frozen teacher) plus, with `--attention_beta` > 0, attention transfer
   β_AT·Σ_j d(a_T,j, a_S,j) over the stages of equal resolution (`losses.AttentionTransfer`).
5. **Baselines at about equal latency**, both from the trained teacher and fine-tuned on labels for
   `--epochs` epochs at `--finetune_learning_rate`: magnitude pruning (tfmot
   `prune_low_magnitude`, Deep Compression's first stage; its dense kernels keep the teacher's
   latency, which is the paper's point) and channel pruning (L1 filter ranking), whose keep
   fraction is chosen among `--channel_keep` as the one whose measured latency is highest within
   the budget (the fastest one if none fits).
6. **Precision** (``--precision``, `apprentice_tf.precision`). The float networks train under
   Keras's ``mixed_bfloat16`` policy where the CPU has bfloat16 instructions (float32 elsewhere):
   the teacher stage, the channel-pruned baseline and a float student, and the frozen teacher
   runs as its ``mixed_bfloat16`` twin while the student learns. The magnitude-pruned baseline
   stays float32 (tfmot's pruning wrapper fails under a mixed policy, tensorflow/model-optimization
   #409), and so does a low-precision student (FakeQuant takes float32 only). Every network is
   evaluated and exported as its float32 twin.
7. **Deploy.** Each network is converted, inspected and evaluated as TFLite (`_common.deploy`), and
   the deployed file itself is timed like the table's rows. Results: ``results.json``,
   ``results.md`` (HAKD table: params, size, top-1, latency), ``curves.png``,
   ``accuracy_vs_size.png``, ``accuracy_vs_latency.png`` (budget line) and, with `--sweep`,
   ``layer_sweep.png``.

Run::

    TFDS_DATA_DIR=... python -m recipes.hakd --latency_budget_ms=0.5 --family=mobilenet \
        --train_split='train[:5000]' --epochs=3 --sweep --output_dir=runs/hakd
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

from apprentice_tf import data, hardware, losses, precision, pruning, reporting
from apprentice_tf.compat import keras
from apprentice_tf.distiller import Distiller
from apprentice_tf.models import cifar_resnet, families
from apprentice_tf.quantize import quantize_model

from . import _common
from ._common import RecipeError

__all__ = [
    "HAKDConfig",
    "validate",
    "run",
    "define_flags",
    "config_from_flags",
    "main",
]

WEIGHT_BITS = ("", "ternary", "2", "4", "8")
ACTIVATION_BITS = (8, 4, 0)
AT_FORMS = ("squared_mean", "norm")
STEP_NORMALIZE = ("macs", "")
#: In ``--output_dir``: the fingerprint of the device whose measurements chose the student and
#: the channel-pruning keep fraction, written when they are first chosen. A rerun into the
#: directory (a resume) chooses from that device's rows of the table, wherever it runs.
TARGET_DEVICE_FILE = "target_device.json"


@dataclasses.dataclass(frozen=True)
class HAKDConfig:
    """Settings of one HAKD run; each field is the absl flag of the same name (see `_HELP`)."""

    dataset: str = "cifar10"
    train_split: str = "train"
    test_split: str = "test"
    teacher: str = "resnet20"
    teacher_width: float = 1.0
    teacher_checkpoint: str = ""
    teacher_epochs: int = 0
    family: str = "mobilenet"
    grid: str = ""
    latency_budget_ms: float = 1.0
    num_threads: int = 1
    runs: int = 20
    warmup: int = 3
    table: str = ""
    allow_foreign: bool = False
    sweep: bool = False
    sweep_ops: tuple[str, ...] = ("conv", "separable")
    sweep_sizes: tuple[int, ...] = (16,)
    sweep_channels: tuple[int, ...] = tuple(range(8, 129, 8))
    step_threshold: float = 0.15
    step_normalize: str = "macs"
    weight_bits: str = ""
    activation_bits: int = 8
    attention_beta: float = 1000.0
    attention_form: str = "squared_mean"
    alpha: float = 1.0
    beta: float = 0.5
    gamma: float = 0.5
    temperature: float = 1.0
    channel_keep: tuple[float, ...] = (0.25, 0.375, 0.5, 0.75)
    magnitude_sparsity: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 0.05
    finetune_learning_rate: float = 0.0
    seed: int = 0
    output_dir: str = "runs/hakd"
    threads: int = 0
    precision: str = "auto"
    verbose: int = 1


_HELP: dict[str, str] = {
    "dataset": "tfds image-classification dataset (read from TFDS_DATA_DIR offline).",
    "train_split": "tfds split expression for training, e.g. 'train[:5000]'.",
    "test_split": "tfds split expression for evaluation (and per-epoch validation).",
    "teacher": "CIFAR ResNet teacher 'resnet<6n+2>', e.g. resnet20, resnet56.",
    "teacher_width": "width multiplier of the teacher's stages.",
    "teacher_checkpoint": "trained teacher weights (load_weights); empty: train it as a stage.",
    "teacher_epochs": "epochs of the teacher stage; 0: --epochs.",
    "family": f"student family, one of {hardware.FAMILIES}.",
    "grid": "JSON list of builder kwargs, one per candidate, e.g. "
    '\'[{"width_multiplier": 0.25}, {"width_multiplier": 0.5}]\'; empty: the library grid.',
    "latency_budget_ms": "latency budget of the student (median ms per image, batch 1).",
    "num_threads": "LiteRT interpreter threads for every latency measurement.",
    "runs": "timed invokes per latency measurement (median, p10, p90 kept).",
    "warmup": "untimed invokes before timing.",
    "table": "LatencyTable JSON to reuse and extend; empty: <output_dir>/latency_table.json.",
    "allow_foreign": "accept a --table that holds measurements of another device.",
    "sweep": "also time single blocks over a channel grid and plot layer_sweep.png.",
    "sweep_ops": f"block types of the sweep, from {hardware.OPS}.",
    "sweep_sizes": "input sizes (height = width) of the sweep.",
    "sweep_channels": "channel counts (in = out) of the sweep.",
    "step_threshold": "relative latency jump find_steps calls a step.",
    "step_normalize": "'macs': a step is latency growing faster than multiply-adds; '': raw.",
    "weight_bits": "'' float student, or ternary/2/4/8 for an Apprentice low-precision student.",
    "activation_bits": "8 or 4 bits of the low-precision student's activations (0: float).",
    "attention_beta": "weight of attention transfer (0 disables it).",
    "attention_form": "distance of attention transfer: 'squared_mean' (the authors' code, with "
    "which beta=1000 was tuned) or 'norm' (the L2 norm of the papers' formula).",
    "alpha": "weight of the teacher's label loss (no effect: the teacher is frozen).",
    "beta": "weight of the student's label loss H(y, p_S).",
    "gamma": "weight of the distillation loss tau^2 H(p_T(tau), p_S(tau)).",
    "temperature": "distillation temperature tau.",
    "channel_keep": "keep fractions tried for the channel-pruning baseline.",
    "magnitude_sparsity": "target sparsity of magnitude pruning; 0: 1 - student/teacher "
    "params, clipped to [0.5, 0.95].",
    "epochs": "epochs of distillation and of each baseline's fine-tuning.",
    "batch_size": "training and evaluation batch size.",
    "learning_rate": "initial SGD learning rate (cosine decay) of the teacher and the student.",
    "finetune_learning_rate": "initial learning rate of the baselines; 0: learning_rate / 10.",
    "seed": "random seed.",
    "output_dir": "directory of the stages, the latency table and the results.",
    "threads": "TensorFlow intra/inter-op threads for training (0: TensorFlow's default).",
    "precision": (
        "Keras dtype policy of the float networks (teacher stage, frozen teacher, channel-pruned "
        "baseline, float student): auto = mixed_bfloat16 where the CPU has bfloat16 "
        "instructions, float32 elsewhere (apprentice_tf.precision). Magnitude pruning and "
        "low-precision students train in float32."
    ),
    "verbose": "0 silent, 1 progress bars.",
}


# ----------------------------------------------------------------------------------------------
# Flags and their checks


@dataclasses.dataclass(frozen=True)
class _Checked:
    """What `validate` derived from the config (nothing of it is written)."""

    output_dir: Path
    table_path: Path
    device: dict[str, Any]  # this machine's fingerprint (where the deployed files are timed)
    target_device: dict[str, Any]  # whose measurements choose: recorded by a first run, or this
    teacher_depth: int
    grid: tuple[dict[str, Any], ...] | None
    quantize: str | int | None
    activation_bits: int | None
    num_classes: int
    teacher: keras.Model | None  # a freshly built teacher holding --teacher_checkpoint
    policy: str  # --precision resolved: the Keras dtype policy float networks train under


def _check_number(flag: str, value: float, low: float, high: float = math.inf) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and low <= value < high):
        raise RecipeError(f"--{flag} must be in [{low}, {high}), received {value!r}.")


def _parse_grid(config: HAKDConfig) -> tuple[dict[str, Any], ...] | None:
    if not config.grid:
        return None
    try:
        grid = json.loads(config.grid)
    except json.JSONDecodeError as error:
        raise RecipeError(f"--grid is not valid JSON ({error}): {config.grid!r}.") from None
    if not isinstance(grid, list) or not grid or not all(isinstance(g, dict) for g in grid):
        raise RecipeError(
            f"--grid must be a non-empty JSON list of builder kwargs objects, received {grid!r}."
        )
    builder = families.builder(config.family)
    allowed = set(inspect.signature(builder).parameters) - {"num_classes", "input_shape", "name"}
    for kwargs in grid:
        unknown = set(kwargs) - allowed
        if unknown:
            raise RecipeError(
                f"--grid entry {kwargs} has argument(s) {sorted(unknown)} that "
                f"{builder.__name__} does not take; it takes {sorted(allowed)}."
            )
        try:  # a bad value (e.g. depth 21) fails here, before anything is timed or written
            builder(**kwargs)
        except (TypeError, ValueError) as error:
            raise RecipeError(f"--grid entry {kwargs}: {error}") from None
    return tuple(grid)


def _recorded_target(output_dir: Path) -> dict[str, Any] | None:
    """The device fingerprint in ``output_dir/TARGET_DEVICE_FILE``, or None if there is none."""
    path = output_dir / TARGET_DEVICE_FILE
    if not path.exists():
        return None
    try:
        device = json.loads(path.read_text())
        if not (isinstance(device, dict) and isinstance(device.get("id"), str)):
            raise ValueError("it holds no device fingerprint with an 'id'")
    except ValueError as error:
        raise RecipeError(
            f"{path} cannot be read ({error}); it records which device chose this run's "
            "student. Restore it, or use a new --output_dir."
        ) from None
    return device


def validate(config: HAKDConfig) -> _Checked:
    """Check every flag; raise `RecipeError` before anything is trained, timed or written."""
    if not isinstance(config, HAKDConfig):
        raise RecipeError(f"run() needs a HAKDConfig, received {type(config).__name__}.")
    budget = config.latency_budget_ms
    if not (isinstance(budget, int | float) and math.isfinite(budget) and budget > 0):
        raise RecipeError(f"--latency_budget_ms must be a finite number > 0, received {budget!r}.")
    _common.check_int("num_threads", config.num_threads, 1)
    _common.check_int("runs", config.runs, 1)
    _common.check_int("warmup", config.warmup, 0)
    _common.check_choice("family", config.family, hardware.FAMILIES)
    output_dir = _common.check_output_dir(config.output_dir)
    teacher_depth = _common.resnet_depth("teacher", config.teacher)
    _check_number("teacher_width", config.teacher_width, 1e-9)
    if config.teacher_checkpoint and not (
        Path(config.teacher_checkpoint).exists()
        or Path(config.teacher_checkpoint + ".index").exists()
    ):
        raise RecipeError(f"--teacher_checkpoint={config.teacher_checkpoint!r} does not exist.")
    _common.check_int("teacher_epochs", config.teacher_epochs, 0)
    _common.check_choice("weight_bits", config.weight_bits, WEIGHT_BITS)
    _common.check_choice("activation_bits", config.activation_bits, ACTIVATION_BITS)
    _common.check_choice("attention_form", config.attention_form, AT_FORMS)
    _common.check_choice("step_normalize", config.step_normalize, STEP_NORMALIZE)
    for flag in ("attention_beta", "alpha", "beta", "gamma", "step_threshold"):
        _check_number(flag, getattr(config, flag), 0.0)
    if config.beta == config.gamma == 0:
        raise RecipeError("--beta and --gamma are both 0: the student would not be trained.")
    for flag in ("temperature", "learning_rate"):
        _common.check_positive(flag, getattr(config, flag))
    _check_number("finetune_learning_rate", config.finetune_learning_rate, 0.0)
    _check_number("magnitude_sparsity", config.magnitude_sparsity, 0.0, 1.0)
    if not config.channel_keep:
        raise RecipeError("--channel_keep is empty; give keep fractions in (0, 1].")
    for keep in config.channel_keep:
        if not (isinstance(keep, int | float) and 0 < keep <= 1):
            raise RecipeError(f"--channel_keep entries must be in (0, 1], received {keep!r}.")
    _common.check_int("epochs", config.epochs, 1)
    _common.check_int("batch_size", config.batch_size, 1)
    _common.check_int("threads", config.threads, 0)
    _common.check_choice("verbose", config.verbose, (0, 1, 2))
    policy = _common.training_policy("precision", config.precision)
    if config.sweep:
        if not (config.sweep_ops and config.sweep_sizes and config.sweep_channels):
            raise RecipeError(
                "--sweep needs non-empty --sweep_ops, --sweep_sizes, --sweep_channels."
            )
        for op in config.sweep_ops:
            _common.check_choice("sweep_ops", op, hardware.OPS)
        for flag in ("sweep_sizes", "sweep_channels"):
            for value in getattr(config, flag):
                _common.check_int(flag, value, 1)
    try:
        num_classes = data.num_classes(config.dataset)
    except ValueError as error:
        raise RecipeError(f"--dataset={config.dataset!r}: {error}") from None

    device = hardware.device_fingerprint(config.num_threads)
    if config.table and not Path(config.table).is_file():
        raise RecipeError(
            f"--table={config.table!r} is not a file; omit --table to start a new table in "
            "--output_dir."
        )
    table_path = Path(config.table) if config.table else output_dir / "latency_table.json"
    target_device = _recorded_target(output_dir) or device
    if target_device["id"] != device["id"] and not table_path.exists():
        raise RecipeError(
            f"{output_dir / TARGET_DEVICE_FILE} says device {target_device['id']!r} chose this "
            f"run's student, but its latency table {str(table_path)!r} is missing, and that "
            f"device's latency cannot be measured here ({device['id']!r}). Restore the table, "
            "or use a new --output_dir."
        )
    if table_path.exists():
        try:
            table = hardware.LatencyTable.load(table_path)
        except (ValueError, TypeError, KeyError) as error:
            raise RecipeError(
                f"latency table {str(table_path)!r} cannot be read: {error}"
            ) from None
        # A resume elsewhere chooses from the recording device's rows: those are expected.
        foreign = [d for d in table.foreign_devices(device["id"]) if d != target_device["id"]]
        if foreign and not config.allow_foreign:
            raise RecipeError(
                f"latency table {str(table_path)!r} holds measurements from another device "
                f"({', '.join(foreign)}); this device is {device['id']!r}. Latency does not "
                "transfer between devices: use another --table, or pass --allow_foreign."
            )
    grid = _parse_grid(config)
    teacher = None
    if config.teacher_checkpoint:
        teacher = _common.load_checkpoint(
            "teacher_checkpoint",
            config.teacher_checkpoint,
            _build_teacher(config, teacher_depth, num_classes),
            f"--teacher={config.teacher} --teacher_width={config.teacher_width:g} with "
            f"{num_classes} classes ({config.dataset})",
        )
    quantize: str | int | None = None
    if config.weight_bits:
        quantize = "ternary" if config.weight_bits == "ternary" else int(config.weight_bits)
    return _Checked(
        output_dir=output_dir,
        table_path=table_path,
        device=device,
        target_device=target_device,
        teacher_depth=teacher_depth,
        grid=grid,
        quantize=quantize,
        activation_bits=config.activation_bits or None,
        num_classes=num_classes,
        teacher=teacher,
        policy=policy,
    )


# ----------------------------------------------------------------------------------------------
# Pieces of the run


def _build_teacher(config: HAKDConfig, depth: int, num_classes: int) -> keras.Model:
    return cifar_resnet(
        depth, num_classes=num_classes, width_multiplier=config.teacher_width, name="teacher"
    )


def _optimizer(learning_rate: float, steps: int) -> keras.optimizers.Optimizer:
    """SGD, momentum 0.9, Nesterov, cosine decay to 0 over `steps` (no warm-up)."""
    return _common.make_optimizer(learning_rate, 1, steps, nesterov=True)


def _compile(model: keras.Model, learning_rate: float, steps: int) -> None:
    model.compile(
        optimizer=_optimizer(learning_rate, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _log(start: float, message: str) -> None:
    print(f"[hakd {time.perf_counter() - start:7.1f}s] {message}", flush=True)


def _nonzero(model: keras.Model) -> int:
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def _bits(quantize: str | int | None, activation_bits: int | None) -> str:
    if quantize is None:
        return "float"
    return f"{quantize}/{activation_bits or 'float'}"


def _choose_keep(latencies: Mapping[float, float], budget: float) -> float:
    """The keep fraction with the highest latency within the budget, else the fastest."""
    fitting = {k: t for k, t in latencies.items() if t <= budget}
    if fitting:
        return max(fitting, key=lambda k: (fitting[k], k))
    return min(latencies, key=lambda k: (latencies[k], -k))


def _plot_accuracy_vs_latency(
    rows: Sequence[Mapping[str, Any]], budget: float, path: Path, candidates: Sequence[Any] = ()
) -> Path:
    """Top-1 (TFLite) against measured latency, one labelled point per row, budget line."""
    figure = Figure(figsize=(6.5, 4.5), constrained_layout=True)
    ax = figure.subplots()
    for row in rows:
        if row.get("latency_ms") is None or row.get("tflite_top1") is None:
            continue
        ax.scatter(row["latency_ms"], row["tflite_top1"], s=40)
        ax.annotate(
            str(row["scheme"]),
            (row["latency_ms"], row["tflite_top1"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
        if row.get("table_ms") is not None:  # where the latency table put it
            ax.scatter(row["table_ms"], row["tflite_top1"], s=25, facecolors="none", color="gray")
    for row in candidates:
        ax.axvline(row.median_ms, color="gray", alpha=0.15, linewidth=1)
    ax.axvline(budget, color="red", linestyle="--", label=f"budget {budget:g} ms")
    ax.set_xlabel("latency, median ms per image (LiteRT, batch 1)")
    ax.set_ylabel("top-1 (TFLite)")
    ax.set_title("HAKD student vs pruning baselines (hollow: table latency)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=110)
    return path


_HAKD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("scheme", "method"),
    ("model", "model"),
    ("bits", "bits (W/A)"),
    ("params", "params"),
    ("nonzero_params", "nonzero params"),
    ("file_bytes", "file B"),
    ("gzip_bytes", "gzip B"),
    ("keras_top1", "top-1 Keras"),
    ("tflite_top1", "top-1 TFLite"),
    ("latency_ms", "latency ms (deployed)"),
    ("latency_p90_ms", "p90 ms"),
    ("table_ms", "latency ms (table)"),
    ("within_budget", "deployed <= budget"),
)


def _fmt_ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def _markdown(
    config: HAKDConfig,
    rows: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any],
    device: Mapping[str, Any],
    target_device: Mapping[str, Any],
) -> str:
    shown = [
        {
            **row,
            "latency_ms": _fmt_ms(row.get("latency_ms")),
            "latency_p90_ms": _fmt_ms(row.get("latency_p90_ms")),
            "table_ms": _fmt_ms(row.get("table_ms")),
            "within_budget": "yes" if row.get("within_budget") else "no",
        }
        for row in rows
    ]
    selection, estimate = extra["selection"], extra["latency_estimate"]
    considered = "\n".join(
        f"| {r['name']} | {r['params']:,d} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
        f"{'yes' if r['median_ms'] <= config.latency_budget_ms else 'no'} |"
        for r in selection["considered"]
    )
    resumed = (
        []
        if target_device["id"] == device["id"]
        else [
            "",
            f"This run resumed here; the student, the keep fraction and the table columns come "
            f"from device `{target_device['id']}` ({target_device['cpu']}, "
            f"{target_device['cores']} cores), where it started; the deployed files were timed "
            "here.",
        ]
    )
    lines = [
        "# HAKD results",
        "",
        f"Device `{device['id']}` ({device['cpu']}, {device['cores']} cores), LiteRT "
        f"{device['litert']}, {config.num_threads} interpreter thread(s), median of "
        f"{config.runs} runs after {config.warmup} warm-up, batch 1. Budget "
        f"**{config.latency_budget_ms:g} ms**; dataset {config.dataset} "
        f"({config.train_split} / {config.test_split}), {config.epochs} epoch(s).",
        *resumed,
        "",
        reporting.markdown_table(shown, _HAKD_COLUMNS),
        "",
        "Latency ms (deployed): each row's converted file, timed here as the table's rows are "
        "(LiteRT, batch 1, median). Latency ms (table): the architecture's whole-network row of "
        "the latency table (`hardware.profile`), measured before training; the two differ by "
        "timing noise (compare p90). Magnitude pruning keeps dense kernels and so the teacher's "
        "latency. Both baselines start from the trained teacher and are fine-tuned on labels "
        f"only for {config.epochs} epoch(s).",
        "",
        "## Student selection",
        "",
        f"Rule: {selection['rule']}. Selected **{selection['name']}** "
        f"({selection['params']:,d} params, {selection['latency_ms']:.3f} ms in the table).",
        "",
        "| candidate | params | median ms | p90 ms | fits |",
        "|---|---|---|---|---|",
        considered,
        "",
        "## Additive latency estimate",
        "",
        f"Sum of the {estimate['blocks']} measured blocks of {selection['name']}: "
        f"{estimate['estimate_ms']:.3f} ms; the whole network measured: "
        f"{estimate['measured_ms']:.3f} ms; error {estimate['error_ms']:+.3f} ms "
        f"({estimate['error_pct']:+.1f}%). The sum leaves out pooling, the classifier, residual "
        "adds/concatenations and the interpreter's per-op overhead.",
        "",
        "## Channel-pruning keep fraction",
        "",
        "| keep | params | table ms |",
        "|---|---|---|",
        *[
            f"| {k} | {v['params']:,d} | {v['median_ms']:.3f} |"
            for k, v in extra["channel_keep_latency"].items()
        ],
        f"| teacher | {extra['teacher_table']['params']:,d} | "
        f"{extra['teacher_table']['median_ms']:.3f} |",
        "",
        f"Chosen: keep {extra['channel_keep']}.",
    ]
    if extra.get("steps") is not None:
        lines += ["", "## Latency steps (layer sweep)", ""]
        if extra["steps"]:
            lines += [
                "| op | size | channels | ms before | ms after | increase | MACs increase |",
                "|---|---|---|---|---|---|---|",
                *[
                    f"| {s['op']} | {s['input_size']} | {s['previous_channels']} -> "
                    f"{s['channels']} | {s['previous_ms']:.4f} | {s['ms']:.4f} | "
                    f"{s['relative_increase']:+.0%} | {s['expected_increase']:+.0%} |"
                    for s in extra["steps"]
                ],
            ]
        else:
            lines.append(
                f"No step above threshold {config.step_threshold} "
                f"(normalize={config.step_normalize or None!r})."
            )
    if extra.get("attention_stages"):
        pairs = ", ".join(f"{t} -> {s}" for t, s in extra["attention_stages"])
        lines += ["", f"Attention transfer stages (teacher -> student): {pairs}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# The run


def run(config: HAKDConfig) -> dict[str, Any]:
    """The whole HAKD pipeline (module docstring); returns the results written to results.json.

    Raises:
      RecipeError: a bad flag (nothing written), or no candidate within the budget (only the
        latency table has been written then).
    """
    checked = validate(config)
    # The latency table only grows (a new budget reuses it): it does not shape training.
    _common.claim_output_dir(
        checked.output_dir, config, reusable=("table",), files=("teacher_checkpoint",)
    )
    start = time.perf_counter()
    _common.configure_threads(config.threads)
    keras.utils.set_random_seed(config.seed)
    output_dir, table_path = checked.output_dir, checked.table_path
    verbose = config.verbose
    # One timing setting for every measurement of the run (the deployed files included).
    settings = hardware.ProfileSettings(
        config.num_threads, config.runs, config.warmup, quantize=checked.quantize
    )
    # Whose measurements choose: this machine's (timing what the table lacks), or, when this run
    # resumes on another machine, those of the device that first chose (looked up, never timed).
    target = checked.target_device["id"]
    elsewhere = target != checked.device["id"]
    device_rows = {"allow_foreign": config.allow_foreign or elsewhere, "device_id": target}
    extra: dict[str, Any] = {"device": checked.device, "target_device": checked.target_device}
    if elsewhere:
        _log(start, f"resuming with the measurements of {target}, which chose this run's student")

    # 1. Optional layer sweep: where does latency step on this machine?
    sweep_png = None
    if config.sweep:
        _log(start, "layer sweep")
        sweep = hardware.layer_sweep(
            config.sweep_sizes,
            config.sweep_channels,
            config.sweep_ops,
            settings=settings,
            cache=table_path,
            verbose=verbose,
            **device_rows,
        )
        normalize = config.step_normalize or None
        steps = hardware.find_steps(sweep, config.step_threshold, normalize=normalize)
        extra["steps"] = [dataclasses.asdict(step) for step in steps]
        sweep_png = hardware.plot_sweep(
            sweep,
            output_dir / "layer_sweep.png",
            threshold=config.step_threshold,
            normalize=normalize,
        )

    _log(start, "profiling the candidates")
    # 2. Profile the family's candidates and select the student under the budget.
    train = data.load(
        config.dataset, config.train_split, config.batch_size, augment=True, seed=config.seed
    )
    test = data.load(config.dataset, config.test_split, config.batch_size)
    input_shape = tuple(int(d) for d in next(iter(test))[0].shape[1:])
    candidates = hardware.student_candidates(
        config.family, checked.num_classes, input_shape, grid=checked.grid
    )
    profiled = hardware.profile(
        candidates, **dataclasses.asdict(settings), cache=table_path, verbose=verbose, **device_rows
    )
    try:
        selection = hardware.select_student(
            profiled,
            config.latency_budget_ms,
            family=config.family,
            allow_foreign=device_rows["allow_foreign"],
            device_id=target,
        )
    except ValueError as error:
        raise RecipeError(str(error)) from None
    extra["selection"] = selection.to_dict()
    _log(
        start,
        f"selected {selection.name}: {selection.latency_ms:.3f} ms (budget "
        f"{config.latency_budget_ms:g} ms), {selection.params:,d} params",
    )

    # 3. The additive latency model against the whole-network measurement.
    float_student = selection.build()
    estimate = hardware.estimate_network_latency(float_student, table_path, settings, **device_rows)
    measured = selection.row.median_ms
    extra["latency_estimate"] = {
        "model": selection.name,
        "blocks": len(hardware.network_blocks(float_student)),
        "estimate_ms": estimate,
        "measured_ms": measured,
        "error_ms": estimate - measured,
        "error_pct": 100.0 * (estimate - measured) / measured,
    }

    _log(start, f"additive estimate {estimate:.3f} ms vs measured {measured:.3f} ms")
    # 4. Teacher latency and the channel-pruning keep fraction (architectures only).
    policy = checked.policy
    extra["training_policy"] = policy

    def build_teacher() -> keras.Model:
        return _build_teacher(config, checked.teacher_depth, checked.num_classes)

    teacher = checked.teacher or build_teacher()
    pruned_archs = {
        keep: pruning.channel_prune(teacher, keep, copy_weights=False)
        for keep in sorted(set(config.channel_keep))
    }
    arch_rows = hardware.profile(
        {"teacher": teacher, **{f"teacher_keep{k:g}": m for k, m in pruned_archs.items()}},
        **dataclasses.asdict(dataclasses.replace(settings, quantize=None)),
        cache=table_path,
        verbose=verbose,
        **device_rows,
    )
    by_name = {row.name: row for row in arch_rows}
    keep_rows = {k: by_name[f"teacher_keep{k:g}"] for k in pruned_archs}
    keep = _choose_keep({k: r.median_ms for k, r in keep_rows.items()}, config.latency_budget_ms)
    extra["channel_keep"] = keep
    extra["channel_keep_latency"] = {
        str(k): {"params": r.params, "median_ms": r.median_ms} for k, r in keep_rows.items()
    }
    extra["teacher_table"] = {
        "params": by_name["teacher"].params,
        "median_ms": by_name["teacher"].median_ms,
    }
    # Chosen: a resume anywhere keeps these choices (rewriting a recorded device changes nothing).
    reporting.write_json(output_dir / TARGET_DEVICE_FILE, checked.target_device)

    steps_per_epoch = _common.steps_per_epoch(train)
    teacher_epochs = config.teacher_epochs or config.epochs
    finetune_lr = config.finetune_learning_rate or config.learning_rate / 10
    curves: dict[str, list[float]] = {}
    rows: list[dict[str, Any]] = []

    def finish_row(model: keras.Model, name: str, row: dict[str, Any]) -> None:
        path = output_dir / f"{name}.tflite"
        row = _common.deploy(model, path, test, row, verbose=verbose)
        row.update(
            hardware.time_tflite(path, config.num_threads, config.runs, config.warmup, config.seed)
        )
        row["within_budget"] = row["latency_ms"] <= config.latency_budget_ms
        rows.append(row)

    _log(start, f"channel-pruning keep fraction {keep:g}; training the teacher")
    # 5. Teacher: loaded from --teacher_checkpoint, or trained (resumable stage) under --precision.
    if checked.teacher is None:
        trained = precision.build_under(policy, build_teacher)
        _compile(trained, config.learning_rate, teacher_epochs * steps_per_epoch)
        history = _common.train_stage(
            "teacher", trained, train, teacher_epochs, output_dir, test, verbose=verbose
        )
        curves["teacher"] = history.get("val_accuracy", [])
        teacher = precision.policy_twin(trained, "float32", build_teacher)
    teacher_row = {
        "model": f"{config.teacher}_w{config.teacher_width:g}",
        "scheme": "teacher",
        "bits": "float",
        "params": teacher.count_params(),
        "nonzero_params": _nonzero(teacher),
        "table_ms": by_name["teacher"].median_ms,
    }
    finish_row(teacher, "teacher", teacher_row)

    _log(start, "teacher deployed; magnitude-pruning baseline")
    # 6. Baselines from the trained teacher, fine-tuned on labels.
    teacher.trainable = True
    sparsity = config.magnitude_sparsity or float(
        np.clip(1 - selection.params / teacher.count_params(), 0.5, 0.95)
    )
    magnitude, callbacks = pruning.magnitude_prune(
        teacher, sparsity, frequency=max(1, min(100, steps_per_epoch))
    )
    _compile(magnitude, finetune_lr, config.epochs * steps_per_epoch)
    history = _common.train_stage(
        "magnitude", magnitude, train, config.epochs, output_dir, test, callbacks, verbose
    )
    curves["magnitude pruning"] = history.get("val_accuracy", [])
    magnitude = pruning.strip(magnitude)
    finish_row(
        magnitude,
        "magnitude",
        {
            "model": teacher_row["model"],
            "scheme": f"magnitude pruning {sparsity:.0%}",
            "bits": "float",
            "params": magnitude.count_params(),
            "nonzero_params": _nonzero(magnitude),
            "sparsity": pruning.total_sparsity(magnitude),
            "table_ms": by_name["teacher"].median_ms,
        },
    )

    _log(start, "channel-pruning baseline")
    # Pruned from the teacher's twin under --precision (the pruned network keeps its source's
    # layer dtypes), it trains under that policy; its float32 twin is deployed.
    source = precision.policy_twin(teacher, policy, build_teacher)
    channel = precision.build_under(policy, lambda: pruning.channel_prune(source, keep))
    _compile(channel, finetune_lr, config.epochs * steps_per_epoch)
    history = _common.train_stage(
        "channel", channel, train, config.epochs, output_dir, test, verbose=verbose
    )
    curves["channel pruning"] = history.get("val_accuracy", [])
    channel = precision.policy_twin(
        channel, "float32", lambda: pruning.channel_prune(teacher, keep, copy_weights=False)
    )
    finish_row(
        channel,
        "channel",
        {
            "model": f"{teacher_row['model']}_keep{keep:g}",
            "scheme": f"channel pruning keep {keep:g}",
            "bits": "float",
            "params": channel.count_params(),
            "nonzero_params": _nonzero(channel),
            "table_ms": keep_rows[keep].median_ms,
        },
    )

    _log(start, "distilling the student")
    # 7. Distil the selected student from the frozen teacher (KD, + attention transfer): a float
    # student under --precision, a low-precision one in float32; the teacher as its twin under
    # --precision.
    if checked.quantize is None:
        student = precision.build_under(policy, selection.build)
    else:
        student = quantize_model(float_student, checked.quantize, checked.activation_bits)
    teacher = precision.policy_twin(teacher, policy, build_teacher)
    kd = {
        "alpha": config.alpha,
        "beta": config.beta,
        "gamma": config.gamma,
        "temperature": config.temperature,
    }
    stages = losses.match_stages(teacher, student) if config.attention_beta > 0 else []
    if stages:
        attention = losses.AttentionTransfer(
            stages, weight=config.attention_beta, form=config.attention_form
        )
        distiller = Distiller(student=student, teacher=teacher, extra_terms=[attention], **kd)
        scheme = "HAKD (KD+AT)"
    else:
        distiller = Distiller(student=student, teacher=teacher, **kd)
        scheme = "HAKD (KD)"
    extra["attention_stages"] = stages
    distiller.compile(
        optimizer=_optimizer(config.learning_rate, config.epochs * steps_per_epoch),
        metrics=["accuracy"],
    )
    history = _common.train_stage(
        "student", distiller, train, config.epochs, output_dir, test, verbose=verbose
    )
    curves["HAKD student"] = history.get("val_accuracy", [])
    student = distiller.student
    if checked.quantize is None:
        student = precision.policy_twin(student, "float32", selection.build)
    finish_row(
        student,
        "student",
        {
            "model": selection.name,
            "scheme": scheme,
            "bits": _bits(checked.quantize, checked.activation_bits),
            "params": selection.params,
            "nonzero_params": _nonzero(float_student) if checked.quantize is None else None,
            "table_ms": selection.latency_ms,
        },
    )
    rows.insert(0, rows.pop())  # the HAKD student first

    _log(start, "writing the results")
    # 8. Results.
    extra["pngs"] = {"accuracy_vs_latency": str(output_dir / "accuracy_vs_latency.png")}
    if sweep_png is not None:
        extra["pngs"]["layer_sweep"] = str(sweep_png)
    extra["latency_table"] = str(table_path)
    results = _common.finish(output_dir, config, rows, curves, extra)
    _plot_accuracy_vs_latency(
        rows, config.latency_budget_ms, output_dir / "accuracy_vs_latency.png", selection.rows
    )
    standard = (output_dir / "results.md").read_text()
    hakd_md = _markdown(config, rows, results, checked.device, checked.target_device)
    reporting.write_text(output_dir / "results.md", hakd_md + "\n" + standard)
    return results


# ----------------------------------------------------------------------------------------------
# absl


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define one absl flag per `HAKDConfig` field, with its default and `_HELP` text.

    Programs that run the recipe call it, importers do not (`_common.define_flags` says why).
    """
    _common.define_flags(HAKDConfig, _HELP, flag_values, enums={"precision": precision.POLICIES})


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> HAKDConfig:
    """The `HAKDConfig` of parsed flags (list flags converted to the field's element type)."""
    return _common.config_from_flags(HAKDConfig, _HELP, flag_values)


def main(argv: Sequence[str]) -> None:
    """absl entry point: flags -> HAKDConfig -> run(); prints the results table."""
    _common.recipe_main(argv, run, config_from_flags)


if __name__ == "__main__":
    define_flags()
    app.run(main)
