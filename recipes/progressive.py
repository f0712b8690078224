"""Progressive learning of a low-precision network, with and without ancillary branches.

Zhou et al., "Progressive learning of low-precision networks", arXiv:1905.11781 (METHODS.md §2).
The same low-precision network (ternary or k-bit weights, k-bit activations, first conv and last
dense kept float) is trained twice on the same budget, data order and seed:

- stage ``plain``: the network alone (`apprentice_tf.quantize.quantize_model`);
- stage ``progressive``: every low-precision conv gets a full-precision twin,
  y = conv_lp(x) + λ·conv_fp(x) (`apprentice_tf.progressive.add_ancillary`), λ goes from 1 to
  exactly 0 at ``decay_end_fraction`` of the training steps (`AncillaryDecay`, ``by="step"``),
  training continues with λ = 0, and the twins are removed (`strip_ancillary`). With
  ``--branch_norm`` each twin has its own BatchNormalization and joins after the conv's,
  y = BN(conv_lp(x)) + λ·BN_fp(conv_fp(x)): the form of the authors' code (EXP-Net), which also
  decays λ by a cosine over the first quarter of training (``--decay_schedule=cosine
  --decay_end_fraction=0.25``).

With ``--teacher`` both stages are distilled (`apprentice_tf.distiller.Distiller`, the Apprentice
loss with the paper's weights, at temperature ``--temperature``) from a full-precision ResNet
trained first as stage ``teacher`` or loaded from ``--teacher_checkpoint``. Optimiser: SGD, momentum
0.9, cosine learning-rate decay to 0 over the run. Each deployable network is converted to TFLite,
inspected and evaluated (`recipes._common.deploy`). Written to ``--output_dir``: ``results.json``
(rows, validation top-1 per epoch of both stages, λ per epoch), ``results.md``, ``curves.png``
(validation top-1 per epoch, both stages), ``accuracy_vs_size.png``, ``plain.tflite``,
``progressive.tflite`` and the per-stage logs and weights that make a second run of the same command
resume (`recipes._common`).

Note on the curves: while λ > 0 the progressive stage's validation top-1 is that of the expanded
network (with the float twins); from the epoch where λ reaches 0 it is that of the deployable one.

Usage::

    python -m recipes.progressive --model=resnet20 --weight_bits=ternary --epochs=30 \\
        --decay_schedule=cosine --decay_end_fraction=0.5 --output_dir=runs/progressive
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from apprentice_tf import data as atf_data
from apprentice_tf import precision, progressive, reporting
from apprentice_tf.compat import keras, tf
from apprentice_tf.distiller import Distiller
from apprentice_tf.models import resnet
from apprentice_tf.quantize import quantize_model

from . import _common
from ._common import (
    RecipeError,
    check_choice,
    check_file,
    check_output_dir,
    check_positive,
    claim_output_dir,
    configure_threads,
    deploy,
    finish,
    keras_top1,
    load_checkpoint,
    make_optimizer,
    resnet_depth,
    steps_per_epoch,
    train_stage,
    training_policy,
)

__all__ = [
    "ProgressiveConfig",
    "WEIGHT_BITS",
    "ACTIVATION_BITS",
    "KERNEL_SIZES",
    "define_flags",
    "config_from_flags",
    "validate",
    "decay_end_step",
    "build_resnet",
    "run",
    "main",
]

#: Allowed ``--weight_bits`` values (strings, as the flag gives them).
WEIGHT_BITS = ("ternary", "2", "4", "8")
#: Allowed ``--activation_bits`` values.
ACTIVATION_BITS = (8, 4)
#: Allowed ``--kernel_size`` values: None (the twin has the conv's kernel size) or 1 (1×1 twin).
KERNEL_SIZES = (None, 1)


@dataclasses.dataclass(frozen=True)
class ProgressiveConfig:
    """Settings of one run (the flags of the same names).

    Attributes:
      dataset: a 32×32 tfds dataset (cifar10, cifar100, svhn_cropped).
      train_split, test_split: tfds split expressions (e.g. "train[:20%]").
      model: the student, a CIFAR ResNet "resnet<6n+2>" (resnet20, resnet32, ...).
      width: the student's width multiplier.
      weight_bits: "ternary", "2", "4" or "8".
      activation_bits: 8 or 4.
      epochs: training epochs of each stage (the same budget for both).
      decay_schedule: λ's decay law, one of `apprentice_tf.progressive.SCHEDULES`.
      decay_end_fraction: λ reaches exactly 0 after this fraction of the training steps, in (0, 1].
      kernel_size: None (ancillary twin has the conv's kernel size) or 1 (1×1 twin).
      branch_norm: each twin gets its own BatchNormalization and joins after the conv's
        (`apprentice_tf.progressive.add_ancillary`'s ``branch_norm``).
      teacher: "" (no distillation) or a CIFAR ResNet name for the full-precision teacher.
      teacher_width: the teacher's width multiplier.
      teacher_checkpoint: "" (train the teacher as stage "teacher") or a teacher's weights
        (``.weights.h5`` / ``.h5`` / checkpoint of the same architecture) or a ``.keras`` model.
      temperature: the distillation temperature τ of `apprentice_tf.distiller.Distiller` (with a
        teacher only): the γ term is τ²·H(softmax(z_T/τ), softmax(z_S/τ)).
      batch_size, learning_rate: SGD (Nesterov momentum 0.9), a linear warm-up over
        `warmup_epochs`, then a cosine decay of `learning_rate` to 0, with decoupled weight
        decay `weight_decay` (`recipes._common.make_optimizer`).
      plain: also train the same network without ancillary branches (the "plain" row).
      augment: pad-crop-flip augmentation of the training split.
      seed: seeds the weights, the data order and the augmentation of every stage.
      output_dir: where everything is written.
      threads: TensorFlow intra/inter-op threads (0: TensorFlow's default).
      verbose: Keras verbosity (0, 1, 2).
    """

    dataset: str = "cifar10"
    train_split: str = "train"
    test_split: str = "test"
    model: str = "resnet20"
    width: float = 1.0
    weight_bits: str = "ternary"
    activation_bits: int = 8
    epochs: int = 100
    decay_schedule: str = "linear"
    decay_end_fraction: float = 0.5
    kernel_size: int | None = None
    branch_norm: bool = False
    teacher: str = ""
    teacher_width: float = 1.0
    teacher_checkpoint: str = ""
    temperature: float = 1.0
    batch_size: int = 128
    learning_rate: float = 0.1
    warmup_epochs: float = 1.0
    weight_decay: float = 5e-4
    plain: bool = True
    augment: bool = True
    seed: int = 0
    output_dir: str = "runs/progressive"
    threads: int = 0
    precision: str = "auto"
    verbose: int = 1


# ------------------------------------------------------------------------------------------------
# Flags


#: Help text of each flag; the flags are the `ProgressiveConfig` fields named here.
_HELP: dict[str, str] = {
    "dataset": "32x32 tfds dataset.",
    "train_split": "tfds training split.",
    "test_split": "tfds test split.",
    "model": "Student: CIFAR ResNet, resnet<6n+2>.",
    "width": "Student width multiplier.",
    "weight_bits": f"One of {list(WEIGHT_BITS)}.",
    "activation_bits": f"One of {list(ACTIVATION_BITS)}.",
    "epochs": "Epochs of each stage.",
    "decay_schedule": f"One of {list(progressive.SCHEDULES)}.",
    "decay_end_fraction": "λ reaches 0 after this fraction of the training steps, in (0, 1].",
    "kernel_size": "Unset: twins copy the kernel size; 1: 1x1 twins.",
    "branch_norm": "Twins get their own BatchNorm and join after the conv's (authors' form).",
    "teacher": "Empty, or a CIFAR ResNet teacher name.",
    "teacher_width": "Teacher width multiplier.",
    "teacher_checkpoint": "Trained teacher (else trained).",
    "temperature": "Distillation temperature τ (with --teacher).",
    "batch_size": "Batch size.",
    "learning_rate": "Initial SGD learning rate.",
    "warmup_epochs": "Linear warm-up epochs.",
    "weight_decay": "Decoupled weight decay λ.",
    "plain": "Also train the network without branches.",
    "augment": "Pad-crop-flip training augmentation.",
    "seed": "Seed of weights, data order, augmentation.",
    "output_dir": "Output directory.",
    "threads": "TensorFlow threads (0: default).",
    "precision": (
        "Keras dtype policy of the float teacher (trained or frozen): auto = mixed_bfloat16 where "
        "the CPU has bfloat16 instructions, float32 elsewhere (apprentice_tf.precision); the "
        "low-precision students train in float32."
    ),
    "verbose": "Keras verbosity.",
}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define the recipe's flags (`_HELP`; defaults from `ProgressiveConfig`) in `flag_values`.

    Programs that run the recipe call it, importers do not (`_common.define_flags` says why).
    """
    _common.define_flags(
        ProgressiveConfig, _HELP, flag_values, enums={"precision": precision.POLICIES}
    )


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ProgressiveConfig:
    """The `ProgressiveConfig` of parsed flags (not yet validated: `run` validates)."""
    return _common.config_from_flags(ProgressiveConfig, _HELP, flag_values)


# ------------------------------------------------------------------------------------------------
# Checks and small pieces


def _weight_bits(value: str | int) -> str | int:
    """'ternary' or the integer bit width, from the flag's string."""
    text = str(value)
    return text if text == "ternary" else int(text)


def validate(config: ProgressiveConfig) -> Path:
    """Check every setting before anything is trained or written; returns the output directory.

    Raises:
      RecipeError: one line naming the flag, what was received and what is allowed.
    """
    output_dir = check_output_dir(config.output_dir)
    check_choice("dataset", config.dataset, sorted(atf_data.SMALL_IMAGE_STATS))
    for flag in ("train_split", "test_split"):
        if not getattr(config, flag):
            raise RecipeError(f"--{flag} must be a tfds split expression, received ''.")
    resnet_depth("model", config.model)
    check_positive("width", config.width)
    if isinstance(config.weight_bits, bool) or str(config.weight_bits) not in WEIGHT_BITS:
        raise RecipeError(
            f"--weight_bits={config.weight_bits!r} is not allowed; use one of {list(WEIGHT_BITS)}."
        )
    check_choice("activation_bits", config.activation_bits, ACTIVATION_BITS)
    if isinstance(config.epochs, bool) or not isinstance(config.epochs, int):
        raise RecipeError(f"--epochs must be an integer, received {config.epochs!r}.")
    check_positive("epochs", config.epochs)
    check_choice("decay_schedule", config.decay_schedule, progressive.SCHEDULES)
    fraction = config.decay_end_fraction
    if not (isinstance(fraction, int | float) and 0.0 < fraction <= 1.0):
        raise RecipeError(f"--decay_end_fraction must be in (0, 1], received {fraction!r}.")
    check_choice("kernel_size", config.kernel_size, KERNEL_SIZES)
    if config.teacher:
        resnet_depth("teacher", config.teacher)
        check_positive("teacher_width", config.teacher_width)
    elif config.teacher_checkpoint:
        raise RecipeError(
            f"--teacher_checkpoint={config.teacher_checkpoint!r} needs --teacher (the teacher's "
            "architecture, e.g. --teacher=resnet56)."
        )
    check_file("teacher_checkpoint", config.teacher_checkpoint)
    check_positive("temperature", config.temperature)
    training_policy("precision", config.precision)
    check_positive("batch_size", config.batch_size)
    check_positive("learning_rate", config.learning_rate)
    if config.threads < 0:
        raise RecipeError(f"--threads must be >= 0, received {config.threads}.")
    return output_dir


def decay_end_step(fraction: float, total_steps: int) -> int:
    """The optimizer step T at which λ becomes exactly 0 (`AncillaryDecay`'s ``end_step``).

    T = round(fraction · total_steps), at least 1, and at most total_steps − 1 so that the last
    update is made, and the last validation measured, with λ = 0 even when ``fraction = 1``.
    """
    if total_steps < 2:
        raise RecipeError(
            f"the progressive stage needs at least 2 training steps (λ must reach 0 before the "
            f"end), received {total_steps}: use more epochs, more data or a smaller --batch_size."
        )
    return min(max(1, round(fraction * total_steps)), total_steps - 1)


def build_resnet(name: str, width: float, num_classes: int) -> keras.Model:
    """The float CIFAR ResNet ``resnet<depth>`` (He et al., 2016) at `width`."""
    depth = resnet_depth("model", name)
    return resnet.cifar_resnet(depth, num_classes=num_classes, width_multiplier=width)


def _datasets(config: ProgressiveConfig) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    train = atf_data.load(
        config.dataset,
        config.train_split,
        config.batch_size,
        augment=config.augment,
        seed=config.seed,
    )
    test = atf_data.load(config.dataset, config.test_split, config.batch_size)
    return train, test


def _optimizer(config: ProgressiveConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """The recipes' SGD: warm-up, cosine decay to 0 over `total_steps`, weight decay."""
    return make_optimizer(
        config.learning_rate,
        1,
        total_steps,
        warmup_epochs=min(config.warmup_epochs / config.epochs, 0.5),
        weight_decay=config.weight_decay,
        nesterov=True,
    )


def _load_teacher(config: ProgressiveConfig, num_classes: int) -> keras.Model:
    """The --teacher architecture with the weights of --teacher_checkpoint."""
    return load_checkpoint(
        "teacher_checkpoint",
        config.teacher_checkpoint,
        build_resnet(config.teacher, config.teacher_width, num_classes),
        f"--teacher={config.teacher} --teacher_width={config.teacher_width:g} with "
        f"{num_classes} classes ({config.dataset})",
    )


def _fit(
    stage: str,
    student: keras.Model,
    teacher: keras.Model | None,
    config: ProgressiveConfig,
    total_steps: int,
    output_dir: Path,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, list[float]]:
    """Train `student` (distilled from `teacher` if given) as a resumable stage."""
    train, test = _datasets(config)
    if teacher is None:
        model = student
        model.compile(
            optimizer=_optimizer(config, total_steps),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    else:
        model = Distiller(student=student, teacher=teacher, temperature=config.temperature)
        model.compile(optimizer=_optimizer(config, total_steps), metrics=["accuracy"])
    return train_stage(
        stage,
        model,
        train,
        config.epochs,
        output_dir,
        validation_data=test,
        callbacks=callbacks,
        verbose=config.verbose,
    )


def _per_epoch_table(curves: dict[str, list[float]], scales: list[float]) -> str:
    epochs = max([len(values) for values in curves.values()] + [len(scales)])
    rows = []
    for epoch in range(epochs):
        row: dict[str, Any] = {"epoch": epoch + 1}
        for name, values in curves.items():
            row[name] = values[epoch] if epoch < len(values) else None
        row["lambda"] = scales[epoch] if epoch < len(scales) else None
        rows.append(row)
    columns = [("epoch", "epoch")]
    columns += [(name, f"{name} val top-1") for name in curves]
    columns += [("lambda", "λ (end of epoch)")]
    return reporting.markdown_table(rows, columns)


# ------------------------------------------------------------------------------------------------
# The run


def run(config: ProgressiveConfig) -> dict[str, Any]:
    """Train plain and progressive low-precision networks, deploy both, write the results.

    Returns:
      The results dictionary written to ``results.json``: ``config``, ``machine``, ``rows``
      (teacher, if any, then plain and progressive, each deployed via TFLite), ``curves``
      (validation top-1 per epoch of "plain" and "progressive"), ``lambda`` (λ at the end of
      each epoch of the progressive stage), ``decay`` (schedule, end step, steps per epoch,
      total steps), ``ancillary`` (branch count and parameter counts) and ``histories``.

    Raises:
      RecipeError: a bad setting (see `validate`), a split too small for the decay, or a teacher
        checkpoint that does not load; raised before anything is written.
    """
    output_dir = validate(config)
    configure_threads(config.threads)
    weight_bits = _weight_bits(config.weight_bits)
    num_classes = atf_data.num_classes(config.dataset)
    train, _ = _datasets(config)
    steps = steps_per_epoch(train)
    total_steps = steps * config.epochs
    end_step = decay_end_step(config.decay_end_fraction, total_steps)
    teacher = None
    if config.teacher_checkpoint:
        teacher = _load_teacher(config, num_classes)
    claim_output_dir(output_dir, config, files=("teacher_checkpoint",))  # every check passed

    rows: list[dict[str, Any]] = []
    histories: dict[str, dict[str, list[float]]] = {}
    test = _datasets(config)[1]
    policy = training_policy("precision", config.precision)
    distilling = None  # the frozen teacher as the Distiller runs it, under --precision's policy
    if config.teacher:

        def build_teacher() -> keras.Model:
            return build_resnet(config.teacher, config.teacher_width, num_classes)

        if teacher is None:
            keras.utils.set_random_seed(config.seed)
            teacher = precision.build_under(policy, build_teacher)
            histories["teacher"] = _fit("teacher", teacher, None, config, total_steps, output_dir)
        teacher.trainable = False
        distilling = precision.policy_twin(teacher, policy, build_teacher)
        teacher = precision.policy_twin(teacher, "float32", build_teacher)
        rows.append(
            {
                "model": f"{config.teacher} w{config.teacher_width:g}",
                "bits": "32/32",
                "scheme": "teacher",
                "keras_top1": keras_top1(teacher, test),
            }
        )

    quantize_kwargs = {"weight_bits": weight_bits, "activation_bits": config.activation_bits}
    plain = None
    if config.plain:
        keras.utils.set_random_seed(config.seed)
        plain = quantize_model(
            build_resnet(config.model, config.width, num_classes), **quantize_kwargs
        )
        histories["plain"] = _fit("plain", plain, distilling, config, total_steps, output_dir)

    keras.utils.set_random_seed(config.seed)  # the same float weights as the plain network
    expanded = progressive.add_ancillary(
        build_resnet(config.model, config.width, num_classes),
        kernel_size=config.kernel_size,
        branch_norm=config.branch_norm,
        **quantize_kwargs,
    )
    decay = progressive.AncillaryDecay(config.decay_schedule, end_step=end_step, by="step")
    histories["progressive"] = _fit(
        "progressive",
        expanded,
        distilling,
        config,
        total_steps,
        output_dir,
        callbacks=[decay],
    )
    final_scales = progressive.get_ancillary_scale(expanded)
    if any(value != 0.0 for value in final_scales):
        raise RuntimeError(
            f"progressive stage ended with λ = {final_scales}, expected 0 after step {end_step} "
            f"of {total_steps}; delete {output_dir / 'progressive.weights.h5'} and run again."
        )
    stripped = progressive.strip_ancillary(expanded)

    model_label = f"{config.model} w{config.width:g}"
    bits = f"{config.weight_bits}/{config.activation_bits}"
    suffix = "+KD" if teacher is not None else ""
    networks = (
        (("plain", plain), ("progressive", stripped)) if plain else (("progressive", stripped),)
    )
    for stage, network in networks:
        row = {"model": model_label, "bits": bits, "scheme": f"{stage}{suffix}"}
        rows.append(deploy(network, output_dir / f"{stage}.tflite", test, row, config.verbose))

    curves = {stage: histories[stage].get("val_accuracy", []) for stage, _ in networks}
    scales = histories["progressive"].get("ancillary_scale", [])
    twin_classes = (progressive.AncillaryConv2D, progressive.AncillaryDepthwiseConv2D)
    twins = [layer for layer in expanded.layers if isinstance(layer, twin_classes)]
    extra = {
        "lambda": {"progressive": scales},
        "decay": {
            "schedule": config.decay_schedule,
            "by": "step",
            "end_step": end_step,
            "end_epoch": end_step / steps,
            "steps_per_epoch": steps,
            "total_steps": total_steps,
        },
        "ancillary": {
            "branches": len(twins),
            "kernel_size": config.kernel_size,
            "branch_norm": config.branch_norm,
            "parameters_expanded": int(expanded.count_params()),
            "parameters_deployed": int(stripped.count_params()),
        },
        "histories": histories,
        # of the teacher (trained or frozen); the students train in float32
        "training_policy": policy,
    }
    results = finish(output_dir, config, rows, curves, extra)
    results_md = output_dir / "results.md"
    reporting.write_text(
        results_md,
        results_md.read_text(encoding="utf-8")
        + "\n## Per epoch\n\n"
        + _per_epoch_table(curves, scales)
        + f"\n\nλ: {config.decay_schedule} decay to 0 at step {end_step} of {total_steps} "
        f"(epoch {end_step / steps:.2f}); {len(twins)} ancillary branches.\n",
    )
    return results


def main(argv: Sequence[str]) -> None:
    """absl entry point: flags → `ProgressiveConfig` → `run`; prints the results table."""
    _common.recipe_main(argv, run, config_from_flags)


if __name__ == "__main__":
    define_flags()
    app.run(main)
