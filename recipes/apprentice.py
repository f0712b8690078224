r"""Apprentice schemes A, B and C (Mishra & Marr, ICLR 2018, arXiv:1711.05852) on CIFAR.

A low-precision student (ternary or k-bit weights, `apprentice_tf.quantize_model`) learns from a
full-precision teacher with the Apprentice loss

    L = α·H(y, p_T) + β·H(y, p_A) + γ·τ²·H(p_T(τ), p_A(τ))      (paper: α=1, β=0.5, γ=0.5, τ=1)

- **A** (joint): teacher and student start from scratch and train together in one loop
  (``Distiller(..., train_teacher=True)``), ``--epochs`` epochs. Stage ``distill``.
- **B** (frozen teacher): the teacher is trained first (stage ``teacher``, ``--teacher_epochs``)
  or loaded from ``--teacher_checkpoint``, saved as ``teacher.keras`` and frozen; the student
  starts from scratch and distils for ``--epochs``. With ``--cache_teacher_logits`` the teacher
  runs once over an un-augmented, deterministic copy of the training split and its logits are
  reused every epoch (the cached data is reshuffled each epoch after caching).
- **C** (fine-tune a float student): teacher as in B; the student is first trained in full
  precision (stage ``student_float``, ``--student_pretrain_epochs``), its precision is lowered
  (`Distiller.from_pretrained_student` copies the float weights into the quantized model), its
  BatchNorm statistics and activation ranges are re-estimated on ``--calibration_steps``
  un-augmented training batches (`apprentice_tf.calibrate`), and it is fine-tuned with
  distillation for ``--finetune_epochs`` at
  ``--learning_rate * --finetune_lr_factor``. ``--epochs`` is not used by scheme C.

Every scheme also trains the same low-precision student **without distillation** (stage
``baseline``, scheme "alone" in the table): plain ``model.fit`` with sparse cross-entropy from
logits, the same seed, initial weights, data pipeline, optimizer and number of epochs as the
distilled student. In A and B that is ``--epochs`` from scratch; in C it is the *same quantized
and calibrated copy of the pre-trained float student*, fine-tuned for ``--finetune_epochs`` at
the fine-tuning learning rate, so the difference between the two rows is exactly what
distillation adds. The results record ``distillation_gain`` = distilled top-1 − baseline top-1
(TFLite and Keras).

Optimisation (all stages): SGD with Nesterov momentum 0.9, a linear learning-rate warm-up over
``--warmup_epochs`` followed by a cosine decay to 0 over the rest of the stage's steps, and
decoupled weight decay ``--weight_decay`` (`recipes._common.make_optimizer`). Each stage starts
with ``keras.utils.set_random_seed(--seed)`` and builds fresh input pipelines, so the baseline and
the distilled student start from identical weights and see the same batches (with
``--cache_teacher_logits``, the distilled student's batches come from the cached copy, reshuffled
with the same seed). Stages are resumable (``recipes/_common.train_stage``): after a kill, the
same command skips finished stages and resumes the interrupted one from its last finished epoch.
``--student_checkpoint`` (scheme C) starts from an already trained float student;
``--nobaseline`` skips the no-distillation stage (e.g. when another run already trained it).

Precision (``--precision``, `apprentice_tf.precision`): the float networks (a teacher trained as a
stage or jointly in A, C's float student) train under Keras's ``mixed_bfloat16`` policy where the
CPU has bfloat16 instructions, and a frozen teacher computes its logits under it (a twin holding
the same float32 weights, `apprentice_tf.precision.policy_twin`); logits stay float32. Low-precision
students always train in float32: tfmot's FakeQuant ops take float32 only. Every network is
evaluated, saved and exported in float32.

Deployment: the teacher, the baseline and the distilled student are converted to TFLite,
inspected (stored levels per channel) and evaluated with the LiteRT interpreter against Keras
(`recipes._common.deploy`). The teacher's ``bits`` column says what its file stores: "float32",
or "float (int8 dyn. weights)" if the converter stored its kernels as dynamic-range int8.

Every flag is checked before anything is trained or written (a bad one raises `RecipeError`;
``main`` prints it on one line), including a ``--teacher_checkpoint`` that does not fit the
``--teacher`` architecture built for the dataset's classes. ``--activation_bits=0`` (float
activations) is refused there: the converter would store such a student's kernels as float32.

Outputs in ``--output_dir``: ``<stage>.csv`` / ``<stage>.weights.h5`` per stage,
``teacher.keras`` (the trained or loaded teacher), ``teacher.tflite``, ``student_baseline.tflite``,
``student_distilled.tflite``, ``results.json``, ``results.md``, ``curves.png`` (validation
top-1 per epoch of each stage) and ``accuracy_vs_size.png``.

Example::

    python -m recipes.apprentice --scheme=B --teacher=resnet56 --student=resnet20 \
        --weight_bits=ternary --activation_bits=8 --output_dir=runs/apprentice_b
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from apprentice_tf import data, precision
from apprentice_tf.caching import cache_teacher_logits
from apprentice_tf.compat import keras, tf
from apprentice_tf.distiller import Distiller
from apprentice_tf.models import cifar_resnet
from apprentice_tf.quantize import calibrate, quantize_model

from . import _common
from ._common import (
    RecipeError,
    check_choice,
    check_dataset,
    check_file,
    check_int,
    check_output_dir,
    check_positive,
    claim_output_dir,
    configure_threads,
    deploy,
    finish,
    load_checkpoint,
    make_optimizer,
    resnet_depth,
    steps_per_epoch,
    train_stage,
    training_policy,
)

SCHEMES = ("A", "B", "C")
WEIGHT_BITS = ("ternary", "2", "4", "8")
ACTIVATION_BITS = (8, 4)  # 0 (float activations) is refused: see _check_flags
#: 32x32 datasets whose CIFAR ResNets these recipes build (apprentice_tf.data.SMALL_IMAGE_STATS).
DATASETS = tuple(data.SMALL_IMAGE_STATS)


@dataclasses.dataclass(frozen=True)
class ApprenticeConfig:
    """One run of an Apprentice scheme; every field is the flag of the same name."""

    scheme: str = "B"
    dataset: str = "cifar10"
    train_split: str = "train"
    test_split: str = "test"
    teacher: str = "resnet56"
    teacher_width: float = 1.0
    student: str = "resnet20"
    student_width: float = 1.0
    weight_bits: str = "ternary"
    activation_bits: int = 8
    alpha: float = 1.0
    beta: float = 0.5
    gamma: float = 0.5
    temperature: float = 1.0
    epochs: int = 200
    teacher_epochs: int = 200
    student_pretrain_epochs: int = 200
    finetune_epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 0.1
    finetune_lr_factor: float = 0.1
    calibration_steps: int = 20
    warmup_epochs: float = 1.0
    weight_decay: float = 5e-4
    augment: bool = True
    seed: int = 0
    teacher_checkpoint: str = ""
    student_checkpoint: str = ""
    baseline: bool = True
    output_dir: str = "runs/apprentice"
    threads: int = 0
    cache_teacher_logits: bool = False
    precision: str = "auto"
    verbose: int = 1


#: Help text of each flag; the flags are the `ApprenticeConfig` fields named here.
_HELP: dict[str, str] = {
    "scheme": "A (joint), B (frozen teacher), C (fine-tune).",
    "dataset": f"tfds dataset, one of {list(DATASETS)}.",
    "train_split": "tfds split to train on.",
    "test_split": "tfds split to validate and test on.",
    "teacher": "Teacher: CIFAR ResNet, resnet<6n+2>.",
    "teacher_width": "Teacher width multiplier.",
    "student": "Student: CIFAR ResNet, resnet<6n+2>.",
    "student_width": "Student width multiplier.",
    "weight_bits": (
        f"Student weights, one of {list(WEIGHT_BITS)} (ternary: 3 levels per output channel); "
        "the first conv and the last dense layer stay float."
    ),
    "activation_bits": (
        "Student activation bits, 8 or 4 (0 = float activations is refused: such a student "
        "cannot be deployed with integer weights)."
    ),
    "alpha": "Weight of the teacher's label loss (scheme A).",
    "beta": "Weight of the student's label loss.",
    "gamma": "Weight of the distillation loss.",
    "temperature": "Distillation temperature τ.",
    "epochs": "Schemes A and B: student epochs (the baseline's too).",
    "teacher_epochs": "Schemes B and C: teacher epochs.",
    "student_pretrain_epochs": (
        "Scheme C: epochs of the full-precision student before its precision is lowered."
    ),
    "finetune_epochs": "Scheme C: low-precision fine-tuning epochs (distilled and baseline).",
    "batch_size": "Batch size.",
    "learning_rate": (
        "Initial learning rate of SGD (momentum 0.9), cosine-decayed to 0 over each stage."
    ),
    "finetune_lr_factor": "Scheme C: fine-tuning starts at learning_rate * finetune_lr_factor.",
    "warmup_epochs": (
        "Epochs of linear learning-rate warm-up at the start of each stage (capped below the "
        "stage's length)."
    ),
    "weight_decay": "Decoupled weight decay λ of every stage.",
    "calibration_steps": (
        "Scheme C: training batches (un-augmented) that re-estimate the lowered student's "
        "BatchNorm statistics and activation ranges before fine-tuning (apprentice_tf.calibrate);"
        " 0: none."
    ),
    "augment": "Pad-crop-flip training augmentation.",
    "seed": "Seed set at the start of every stage.",
    "teacher_checkpoint": (
        "Schemes B and C: load the teacher's weights (.keras or .weights.h5 of the --teacher "
        "architecture) instead of training it."
    ),
    "student_checkpoint": (
        "Scheme C: load the full-precision student's weights (.weights.h5 of the --student "
        "architecture, e.g. from recipes.pretrain) instead of training it."
    ),
    "baseline": "Also train the same student without distillation (the 'alone' row).",
    "output_dir": "Directory for every output.",
    "threads": "TensorFlow threads (0: its default).",
    "cache_teacher_logits": (
        "Scheme B only: run the frozen teacher once over the training split and reuse its "
        "logits every epoch. Needs --noaugment: cached logits are paired with examples by "
        "position, so every example must be the same image on every pass; a random crop or flip"
        " would be trained towards the logits of a different view. The cached data is "
        "reshuffled each epoch."
    ),
    "precision": (
        "Keras dtype policy of the float networks: the teachers (trained, frozen or trained "
        "jointly in A) and C's float student: auto = mixed_bfloat16 where the CPU has bfloat16 "
        "instructions, float32 elsewhere (apprentice_tf.precision). Low-precision students "
        "always train in float32 (tfmot's FakeQuant ops take float32 only); float networks are "
        "evaluated and exported in float32."
    ),
    "verbose": "0 silent, 1 progress bars, 2 a line per epoch.",
}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define the recipe's flags (`_HELP`; defaults from `ApprenticeConfig`) in `flag_values`.

    Programs that run the recipe call it, importers do not (`_common.define_flags` says why).
    """
    _common.define_flags(
        ApprenticeConfig, _HELP, flag_values, enums={"precision": precision.POLICIES}
    )


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ApprenticeConfig:
    """The `ApprenticeConfig` of parsed flags (not yet validated: `run` validates)."""
    return _common.config_from_flags(ApprenticeConfig, _HELP, flag_values)


# ------------------------------------------------------------------------------------------------
# Checks: everything is validated before anything is trained or written.


@dataclasses.dataclass
class _Setup:
    """What the checks resolved: parsed bits, class count, the loaded teacher."""

    output_dir: Path
    num_classes: int
    weight_bits: str | int
    activation_bits: int
    teacher: keras.Model | None  # loaded from --teacher_checkpoint
    student: keras.Model | None  # loaded from --student_checkpoint (scheme C)
    policy: str  # --precision resolved: the Keras dtype policy float networks train under


def _check_weight(flag: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise RecipeError(f"--{flag} must be a finite number >= 0, received {value!r}.")


def _check_flags(config: ApprenticeConfig) -> None:
    """Checks that need neither the dataset nor a model."""
    check_choice("scheme", config.scheme, SCHEMES)
    check_choice("dataset", config.dataset, DATASETS)
    resnet_depth("teacher", config.teacher)
    resnet_depth("student", config.student)
    check_choice("weight_bits", config.weight_bits, WEIGHT_BITS)
    if config.activation_bits == 0:
        raise RecipeError(
            "--activation_bits=0 (float activations) cannot be deployed: the TFLite converter "
            "keeps low-precision kernels as integers only between quantized activations, so the "
            "student file would store float32 weights; use --activation_bits=8 or 4."
        )
    check_choice("activation_bits", config.activation_bits, ACTIVATION_BITS)
    for flag in ("teacher_width", "student_width", "learning_rate", "finetune_lr_factor"):
        check_positive(flag, getattr(config, flag))
    for flag in (
        "epochs",
        "teacher_epochs",
        "student_pretrain_epochs",
        "finetune_epochs",
        "batch_size",
    ):
        check_int(flag, getattr(config, flag), 1)
    check_int("seed", config.seed, 0)
    check_int("threads", config.threads, 0)
    check_int("calibration_steps", config.calibration_steps, 0)
    check_choice("verbose", config.verbose, (0, 1, 2))
    for flag in ("alpha", "beta", "gamma", "warmup_epochs", "weight_decay"):
        _check_weight(flag, getattr(config, flag))
    if config.student_checkpoint and config.scheme != "C":
        raise RecipeError(
            f"--student_checkpoint is for scheme C (received --scheme={config.scheme}): A and B "
            "train the low-precision student from scratch."
        )
    _check_weight("temperature", config.temperature)
    check_positive("temperature", config.temperature)
    if config.beta == config.gamma == 0:
        raise RecipeError("--beta and --gamma are both 0, so the student would not learn.")
    if config.scheme == "A" and config.alpha == 0:
        raise RecipeError(
            "--scheme=A trains the teacher with alpha·H(y, p_T): --alpha=0 would leave it "
            "untrained; use --alpha > 0 (paper: 1)."
        )
    if config.scheme == "A" and config.teacher_checkpoint:
        raise RecipeError(
            "--teacher_checkpoint is for schemes B and C; scheme A trains the teacher from "
            "scratch together with the student."
        )
    if config.cache_teacher_logits and config.scheme != "B":
        raise RecipeError(
            f"--cache_teacher_logits is for scheme B only (received --scheme={config.scheme}): "
            "A trains the teacher, so its logits change; C fine-tunes briefly from live logits."
        )
    if config.cache_teacher_logits and config.augment:
        raise RecipeError(
            "--cache_teacher_logits needs --noaugment: cached logits belong to one view of each "
            "image, so random crops and flips would be trained towards another view's logits."
        )
    check_file("teacher_checkpoint", config.teacher_checkpoint)
    check_file("student_checkpoint", config.student_checkpoint)


def _weight_bits(value: str) -> str | int:
    return value if value == "ternary" else int(value)


def _model_label(name: str, width: float) -> str:
    return name if width == 1 else f"{name} x{width:g}"


def _bits_label(config: ApprenticeConfig) -> str:
    weights = "ternary" if config.weight_bits == "ternary" else f"W{config.weight_bits}"
    return f"{weights}/A{config.activation_bits}"


def _build(name: str, width: float, num_classes: int, role: str) -> keras.Model:
    return cifar_resnet(
        resnet_depth(role, name),
        num_classes=num_classes,
        width_multiplier=width,
        name=f"{role}_{name}",
    )


def _build_teacher(config: ApprenticeConfig, num_classes: int) -> keras.Model:
    return _build(config.teacher, config.teacher_width, num_classes, "teacher")


def _build_student(config: ApprenticeConfig, num_classes: int) -> keras.Model:
    return _build(config.student, config.student_width, num_classes, "student")


def _load(config: ApprenticeConfig, num_classes: int, role: str) -> keras.Model:
    """The teacher or student architecture for the dataset's classes, with the weights of
    --<role>_checkpoint (role: "teacher" or "student")."""
    name, width = getattr(config, role), getattr(config, f"{role}_width")
    return load_checkpoint(
        f"{role}_checkpoint",
        getattr(config, f"{role}_checkpoint"),
        _build(name, width, num_classes, role),
        f"--{role}={name} --{role}_width={width:g} with {num_classes} classes ({config.dataset})",
    )


def _check(config: ApprenticeConfig) -> _Setup:
    """Every check, in order of cost; raises RecipeError before anything is written."""
    if not isinstance(config, ApprenticeConfig):
        raise RecipeError(f"run() needs an ApprenticeConfig, received {type(config).__name__}.")
    _check_flags(config)
    policy = training_policy("precision", config.precision)
    output_dir = check_output_dir(config.output_dir)
    configure_threads(config.threads)
    num_classes = check_dataset(
        config.dataset, train_split=config.train_split, test_split=config.test_split
    )
    teacher = _load(config, num_classes, "teacher") if config.teacher_checkpoint else None
    student = _load(config, num_classes, "student") if config.student_checkpoint else None
    return _Setup(
        output_dir=output_dir,
        num_classes=num_classes,
        weight_bits=_weight_bits(config.weight_bits),
        activation_bits=config.activation_bits,
        teacher=teacher,
        student=student,
        policy=policy,
    )


# ------------------------------------------------------------------------------------------------
# Stages


def _train_data(config: ApprenticeConfig) -> tf.data.Dataset:
    """A fresh training pipeline (same seed, so every stage sees the same batches)."""
    return data.load(
        config.dataset,
        config.train_split,
        config.batch_size,
        augment=config.augment,
        seed=config.seed,
    )


def _calibration_data(config: ApprenticeConfig) -> tf.data.Dataset | None:
    """Scheme C: the un-augmented training batches `calibrate` reads (None: no calibration)."""
    if not config.calibration_steps:
        return None
    return data.load(config.dataset, config.train_split, config.batch_size, seed=config.seed)


def _test_data(config: ApprenticeConfig) -> tf.data.Dataset:
    return data.load(config.dataset, config.test_split, config.batch_size)


def _optimizer(
    config: ApprenticeConfig, learning_rate: float, epochs: int, steps: int
) -> keras.optimizers.Optimizer:
    """SGD (Nesterov momentum 0.9), warm-up then cosine decay to 0, decoupled weight decay."""
    return make_optimizer(
        learning_rate,
        epochs,
        steps,
        warmup_epochs=min(config.warmup_epochs, epochs / 2),
        weight_decay=config.weight_decay,
        nesterov=True,
    )


def _finished(output_dir: Path, stage: str) -> bool:
    """True if `train_stage` will load the stage's weights instead of training."""
    return (output_dir / f"{stage}.weights.h5").exists()


def _say(config: ApprenticeConfig, message: str) -> None:
    if config.verbose:
        print(message, flush=True)


def _fit_plain(
    stage: str,
    model: keras.Model,
    config: ApprenticeConfig,
    output_dir: Path,
    epochs: int,
    learning_rate: float,
) -> dict[str, list[float]]:
    """Train `model` on labels alone (sparse cross-entropy from logits) as a resumable stage."""
    train = _train_data(config)
    model.compile(
        optimizer=_optimizer(config, learning_rate, epochs, steps_per_epoch(train)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    _say(config, f"[{stage}] {model.name}: {epochs} epochs from lr {learning_rate:g}")
    return train_stage(
        stage,
        model,
        train,
        epochs,
        output_dir,
        validation_data=_test_data(config),
        verbose=config.verbose,
    )


def _distill(
    distiller: Distiller,
    config: ApprenticeConfig,
    output_dir: Path,
    epochs: int,
    learning_rate: float,
    teacher: keras.Model,
) -> dict[str, list[float]]:
    """The resumable stage "distill": fit the Distiller (cached teacher logits in B if asked)."""
    train = _train_data(config)
    steps = steps_per_epoch(train)
    if config.cache_teacher_logits and not _finished(output_dir, "distill"):
        _say(config, "[distill] caching the frozen teacher's logits")
        deterministic = data.load(
            config.dataset,
            config.train_split,
            config.batch_size,
            deterministic=True,
            seed=config.seed,
        )
        cached = cache_teacher_logits(teacher, deterministic, verbose=config.verbose)
        # Pairs are fixed before shuffling, so reshuffling each epoch keeps them intact. unbatch()
        # loses the cardinality; re-batching the same examples gives the same number of
        # batches, so state it (Keras's progress bar then knows the epoch's total).
        train = (
            cached.unbatch()
            .shuffle(10_000, seed=config.seed, reshuffle_each_iteration=True)
            .batch(config.batch_size)
            .apply(tf.data.experimental.assert_cardinality(steps))
            .prefetch(tf.data.AUTOTUNE)
        )
    distiller.compile(
        optimizer=_optimizer(config, learning_rate, epochs, steps), metrics=["accuracy"]
    )
    _say(
        config,
        f"[distill] scheme {config.scheme}: {distiller.student.name} from {teacher.name}, "
        f"{epochs} epochs from lr {learning_rate:g}",
    )
    return train_stage(
        "distill",
        distiller,
        train,
        epochs,
        output_dir,
        validation_data=_test_data(config),
        verbose=config.verbose,
    )


def _load_or_train(
    stage: str,
    role: str,
    epochs: int,
    curve: str,
    config: ApprenticeConfig,
    setup: _Setup,
    curves: dict[str, list[float]],
) -> tuple[keras.Model, bool]:
    """The float32 `role` network ("teacher" or "student"): the one loaded from
    --<role>_checkpoint by the checks, or a new one trained on labels as stage `stage` under
    --precision's policy (its validation accuracy becomes `curves[curve]`). Returns (model,
    trained)."""
    loaded = getattr(setup, role)
    if loaded is not None:
        _say(config, f"[{stage}] loaded {getattr(config, f'{role}_checkpoint')}")
        return loaded, False

    def build() -> keras.Model:
        name, width = getattr(config, role), getattr(config, f"{role}_width")
        return _build(name, width, setup.num_classes, role)

    keras.utils.set_random_seed(config.seed)
    model = precision.build_under(setup.policy, build)
    history = _fit_plain(stage, model, config, setup.output_dir, epochs, config.learning_rate)
    curves[curve] = _val(history)
    return precision.policy_twin(model, "float32", build), True


def _teacher_stage(
    config: ApprenticeConfig, setup: _Setup, curves: dict[str, list[float]]
) -> keras.Model:
    """Schemes B and C: the trained (or loaded) teacher, saved as teacher.keras and frozen."""
    teacher, trained = _load_or_train(
        "teacher", "teacher", config.teacher_epochs, "teacher (float)", config, setup, curves
    )
    if trained:
        # A copy without the stage's optimizer, which would otherwise join the Distiller's
        # checkpoints (BackupAndRestore) as unrestorable slots.
        trained = teacher
        teacher = _build_teacher(config, setup.num_classes)
        teacher.set_weights(trained.get_weights())
    saved = setup.output_dir / "teacher.keras"
    checkpoint = Path(config.teacher_checkpoint) if config.teacher_checkpoint else None
    if checkpoint is None or checkpoint.resolve() != saved.resolve():
        teacher.save(saved)
    teacher.trainable = False
    return teacher


def _distilling_teacher(
    teacher: keras.Model, config: ApprenticeConfig, setup: _Setup
) -> keras.Model:
    """The frozen float32 `teacher` as the Distiller runs it: its twin under --precision's policy
    (on a CPU with bfloat16 instructions its forward pass alone took 0.61x the float32 time, a
    whole scheme-B step 0.96x: benchmarks/step_cost.py)."""
    return precision.policy_twin(
        teacher, setup.policy, lambda: _build_teacher(config, setup.num_classes)
    )


def _quantize(model: keras.Model, setup: _Setup) -> keras.Model:
    return quantize_model(
        model, weight_bits=setup.weight_bits, activation_bits=setup.activation_bits
    )


def _distiller_kwargs(config: ApprenticeConfig) -> dict[str, float]:
    return {
        "alpha": config.alpha,
        "beta": config.beta,
        "gamma": config.gamma,
        "temperature": config.temperature,
    }


def _val(history: dict[str, list[float]], key: str = "val_accuracy") -> list[float]:
    return history.get(key, [])


def _baseline(
    config: ApprenticeConfig,
    setup: _Setup,
    curves: dict[str, list[float]],
    float_student: keras.Model | None = None,
) -> keras.Model | None:
    """The same low-precision student trained on labels alone (stage "baseline"), if asked.

    From scratch (schemes A, B), or from a quantized copy of `float_student` at the fine-tuning
    learning rate (scheme C).
    """
    if not config.baseline:
        return None
    keras.utils.set_random_seed(config.seed)
    if float_student is None:
        baseline = _quantize(_build_student(config, setup.num_classes), setup)
        epochs, learning_rate, label = config.epochs, config.learning_rate, "baseline (alone)"
    else:
        baseline = _quantize(float_student, setup)  # the float weights, copied
        if config.calibration_steps:
            calibrate(baseline, _calibration_data(config), steps=config.calibration_steps)
        epochs = config.finetune_epochs
        learning_rate = config.learning_rate * config.finetune_lr_factor
        label = "baseline (alone, fine-tuned)"
    history = _fit_plain("baseline", baseline, config, setup.output_dir, epochs, learning_rate)
    curves[label] = _val(history)
    return baseline


def _float_student(
    config: ApprenticeConfig, setup: _Setup, curves: dict[str, list[float]]
) -> keras.Model:
    """Scheme C: the full-precision student, loaded (--student_checkpoint) or trained."""
    epochs = config.student_pretrain_epochs
    return _load_or_train(
        "student_float", "student", epochs, "student (float)", config, setup, curves
    )[0]


def _train(
    config: ApprenticeConfig, setup: _Setup
) -> tuple[keras.Model, keras.Model | None, keras.Model, dict[str, list[float]]]:
    """All training stages of the scheme: (teacher, baseline student or None, distilled
    student, curves)."""
    out = setup.output_dir
    curves: dict[str, list[float]] = {}
    if config.scheme == "A":
        baseline = _baseline(config, setup, curves)
        keras.utils.set_random_seed(config.seed)  # same student initialisation as the baseline
        student = _quantize(_build_student(config, setup.num_classes), setup)

        def build_teacher() -> keras.Model:
            return _build_teacher(config, setup.num_classes)

        teacher = precision.build_under(setup.policy, build_teacher)
        distiller = Distiller(
            student=student, teacher=teacher, train_teacher=True, **_distiller_kwargs(config)
        )
        history = _distill(distiller, config, out, config.epochs, config.learning_rate, teacher)
        curves["teacher (A, joint)"] = _val(history, "val_teacher_accuracy")
        curves["distilled (A)"] = _val(history)
        teacher = precision.policy_twin(teacher, "float32", build_teacher)  # evaluated and exported
        teacher.save(out / "teacher.keras")
        return teacher, baseline, distiller.student, curves

    teacher = _teacher_stage(config, setup, curves)
    if config.scheme == "B":
        baseline = _baseline(config, setup, curves)
        keras.utils.set_random_seed(config.seed)
        student = _quantize(_build_student(config, setup.num_classes), setup)
        distilling = _distilling_teacher(teacher, config, setup)
        distiller = Distiller(student=student, teacher=distilling, **_distiller_kwargs(config))
        history = _distill(distiller, config, out, config.epochs, config.learning_rate, distilling)
        curves["distilled (B)"] = _val(history)
        return teacher, baseline, distiller.student, curves

    # Scheme C.
    float_student = _float_student(config, setup, curves)
    baseline = _baseline(config, setup, curves, float_student)
    keras.utils.set_random_seed(config.seed)
    distilling = _distilling_teacher(teacher, config, setup)
    distiller = Distiller.from_pretrained_student(
        float_student,
        distilling,
        weight_bits=setup.weight_bits,
        activation_bits=setup.activation_bits,
        calibration_data=_calibration_data(config),
        calibration_steps=config.calibration_steps,
        **_distiller_kwargs(config),
    )
    finetune_lr = config.learning_rate * config.finetune_lr_factor
    history = _distill(distiller, config, out, config.finetune_epochs, finetune_lr, distilling)
    curves["distilled (C)"] = _val(history)
    return teacher, baseline, distiller.student, curves


def _teacher_bits(row: dict[str, Any]) -> str:
    """What the teacher's file stores: float32 kernels, or dynamic-range int8 ones."""
    if all(w["dtype"].startswith("FLOAT") for w in row["inspection"]):
        return "float32"
    return "float (int8 dyn. weights)"


def run(config: ApprenticeConfig) -> dict[str, Any]:
    """Train, deploy and report one Apprentice scheme; returns the results dictionary.

    Raises:
      RecipeError: a bad flag (before anything is trained or written).
    """
    setup = _check(config)
    claim_output_dir(setup.output_dir, config, files=("teacher_checkpoint", "student_checkpoint"))
    teacher, baseline, student, curves = _train(config, setup)

    out = setup.output_dir
    test = _test_data(config)
    _say(config, "[deploy] converting, inspecting and evaluating the TFLite files")
    teacher_row = deploy(
        teacher,
        out / "teacher.tflite",
        test,
        {
            "model": _model_label(config.teacher, config.teacher_width),
            "bits": "float",
            "scheme": "teacher",
        },
        verbose=config.verbose,
    )
    teacher_row["bits"] = _teacher_bits(teacher_row)
    student_label = _model_label(config.student, config.student_width)
    bits = _bits_label(config)
    rows = [teacher_row]
    if baseline is not None:
        rows.append(
            deploy(
                baseline,
                out / "student_baseline.tflite",
                test,
                {"model": student_label, "bits": bits, "scheme": "alone"},
                verbose=config.verbose,
            )
        )
    distilled_row = deploy(
        student,
        out / "student_distilled.tflite",
        test,
        {"model": student_label, "bits": bits, "scheme": config.scheme},
        verbose=config.verbose,
    )
    rows.append(distilled_row)
    gain = (
        {key: distilled_row[key] - rows[1][key] for key in ("tflite_top1", "keras_top1")}
        if baseline is not None
        else None
    )
    return finish(
        out,
        config,
        rows,
        curves,
        extra={
            "distillation_gain": gain,
            "teacher_source": config.teacher_checkpoint or "trained",
            "training_policy": setup.policy,  # of the float networks and the teacher
        },
    )


def main(argv: Sequence[str]) -> None:
    """absl entry point: flags → `ApprenticeConfig` → `run`; a bad flag exits with one line."""
    _common.recipe_main(argv, run, config_from_flags)


if __name__ == "__main__":
    define_flags()
    app.run(main)
