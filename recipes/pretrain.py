r"""Train a full-precision CIFAR ResNet: the teachers and float students other recipes start from.

The reference networks of `apprentice_tf.zoo` were trained with this recipe. Optimisation is the
standard short CIFAR schedule (He et al., CVPR 2016; Loshchilov & Hutter, ICLR 2017):

    SGD, Nesterov momentum 0.9, batch 128, decoupled weight decay w ← w − η_t·λ·w (λ = 5e-4),
    η_t rising linearly from 0 to η_max over the warm-up epochs, then
    η_t = η_max · ½(1 + cos(π·t/T)) down to 0 at the last step,

with the pad-4/crop/flip augmentation of `apprentice_tf.data.load`, under Keras's ``mixed_bfloat16``
policy where the CPU has bfloat16 instructions and float32 elsewhere (`apprentice_tf.precision`).
The run is resumable: killing it and running the same command again resumes from the last finished
epoch (`BackupAndRestore`).

Outputs in ``--output_dir``: ``float.weights.h5`` (the trained weights), ``float.csv`` (one line per
epoch: loss, accuracy, val_loss, val_accuracy, learning rate, seconds), ``float.tflite`` (the
network as a float TFLite file), ``results.json`` (the command, the configuration, the test top-1
on the full ``--test_split`` in Keras and LiteRT with their agreement, the sha256 of the weights
file, the machine and the measured seconds per epoch).

Example (the float student of the CIFAR-10 study)::

    python -m recipes.pretrain --model=resnet20 --epochs=15 --output_dir=runs/study/float_resnet20
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from apprentice_tf import data, precision, reporting, zoo
from apprentice_tf.compat import keras
from apprentice_tf.models import cifar_resnet

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
    load_checkpoint,
    make_optimizer,
    resnet_depth,
    train_stage,
    training_policy,
)

DATASETS = tuple(data.SMALL_IMAGE_STATS)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """One full-precision training run; every field is the flag of the same name."""

    model: str = "resnet20"
    width: float = 1.0
    dataset: str = "cifar10"
    train_split: str = "train"
    test_split: str = "test"
    epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 0.1
    warmup_epochs: float = 1.0
    weight_decay: float = 5e-4
    seed: int = 0
    precision: str = "auto"
    initial_weights: str = ""
    output_dir: str = "runs/pretrain"
    threads: int = 0
    verbose: int = 2


#: Help text of each flag; the flags are the `PretrainConfig` fields named here.
_HELP: dict[str, str] = {
    "model": "CIFAR ResNet, resnet<6n+2>.",
    "width": "Width multiplier.",
    "dataset": f"tfds dataset, one of {list(DATASETS)}.",
    "train_split": "tfds split to train on.",
    "test_split": "tfds split to validate and test on.",
    "epochs": "Training epochs.",
    "batch_size": "Batch size.",
    "learning_rate": "Peak learning rate η_max.",
    "warmup_epochs": "Linear warm-up epochs.",
    "weight_decay": "Decoupled weight decay λ.",
    "seed": "Seed of initialisation, order and augmentation.",
    "precision": (
        "Keras dtype policy of training: auto = mixed_bfloat16 where the CPU has bfloat16 "
        "instructions, float32 elsewhere (apprentice_tf.precision)."
    ),
    "initial_weights": (
        "Start from these weights of the same network (e.g. another run's float.weights.h5) "
        "instead of a random initialisation: a warm restart of the schedule (SGDR)."
    ),
    "output_dir": "Directory for every output.",
    "threads": "TensorFlow threads (0: its default).",
    "verbose": "0 silent, 1 progress bars, 2 a line per epoch.",
}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define the recipe's flags (`_HELP`; defaults from `PretrainConfig`) in `flag_values`.

    Programs that run the recipe call it, importers do not (`_common.define_flags` says why).
    """
    _common.define_flags(
        PretrainConfig, _HELP, flag_values, enums={"precision": precision.POLICIES}
    )


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> PretrainConfig:
    """The `PretrainConfig` of parsed flags (not yet validated: `run` validates)."""
    return _common.config_from_flags(PretrainConfig, _HELP, flag_values)


def command(config: PretrainConfig) -> str:
    """The shell command that runs `config` (every training setting spelled out)."""
    skip = {"output_dir", "threads", "verbose"}
    settings = " ".join(
        f"--{name}={value}"
        for name, value in dataclasses.asdict(config).items()
        if name not in skip and not (name == "initial_weights" and not value)
    )
    return f"python -m recipes.pretrain {settings}"


def _provenance(weights: Path) -> dict[str, Any]:
    """Where a warm restart started: the weights' path and sha256 and, when the run that wrote
    them left its ``results.json`` beside them, that run's command, epochs and test top-1."""
    provenance: dict[str, Any] = {"path": str(weights), "sha256": zoo.sha256(weights)}
    earlier = weights.parent / "results.json"
    if earlier.exists():
        previous = json.loads(earlier.read_text())
        provenance.update(
            command=previous.get("command"),
            epochs=previous.get("config", {}).get("epochs"),
            test_top1=previous.get("test_top1"),
        )
    return provenance


def run(config: PretrainConfig) -> dict[str, Any]:
    """Train, evaluate and describe one float network; returns the results dictionary."""
    depth = resnet_depth("model", config.model)
    check_choice("dataset", config.dataset, DATASETS)
    for flag in ("width", "learning_rate"):
        check_positive(flag, getattr(config, flag))
    if config.epochs < 1 or config.batch_size < 1:
        raise RecipeError("--epochs and --batch_size must be >= 1.")
    if config.warmup_epochs < 0 or config.weight_decay < 0:
        raise RecipeError(
            f"--warmup_epochs and --weight_decay must be >= 0, received {config.warmup_epochs} "
            f"and {config.weight_decay}."
        )
    check_file("initial_weights", config.initial_weights)
    output_dir = check_output_dir(config.output_dir)
    configure_threads(config.threads)
    num_classes = data.num_classes(config.dataset)
    train = data.load(
        config.dataset, config.train_split, config.batch_size, augment=True, seed=config.seed
    )
    test = data.load(config.dataset, config.test_split, 256)

    policy = training_policy("precision", config.precision)

    def build() -> keras.Model:
        return cifar_resnet(depth, num_classes=num_classes, width_multiplier=config.width)

    keras.utils.set_random_seed(config.seed)
    model = precision.build_under(policy, build)
    label = config.model if config.width == 1 else f"{config.model} x{config.width:g}"
    if config.initial_weights:
        load_checkpoint(
            "initial_weights", config.initial_weights, model, f"a {label} for {config.dataset}"
        )
    claim_output_dir(output_dir, config, files=("initial_weights",))  # every check passed
    model.compile(
        optimizer=make_optimizer(
            config.learning_rate,
            config.epochs,
            int(train.cardinality()),
            warmup_epochs=min(config.warmup_epochs, config.epochs / 2),
            weight_decay=config.weight_decay,
            nesterov=True,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = train_stage(
        "float",
        model,
        train,
        config.epochs,
        output_dir,
        validation_data=test,
        verbose=config.verbose,
    )
    weights = output_dir / "float.weights.h5"
    model = precision.policy_twin(model, "float32", build)  # a float32 network for export
    row = deploy(
        model,
        output_dir / "float.tflite",
        test,
        {"model": label, "bits": "float32", "scheme": "float"},
        verbose=0,
    )
    results = {
        "command": command(config),
        "config": dataclasses.asdict(config),
        "test_top1": row["keras_top1"],
        "num_classes": num_classes,
        "training_policy": policy,
        "rows": [{k: v for k, v in row.items() if k != "inspection_table"}],
        "weights": weights.name,
        "sha256": zoo.sha256(weights),
        "seconds_per_epoch": history.get("seconds", []),
        "val_accuracy": history.get("val_accuracy", []),
        "machine": reporting.machine_info(config.threads),
    }
    if config.initial_weights:
        results["initial_weights"] = _provenance(Path(config.initial_weights))
    reporting.write_json(output_dir / "results.json", results)
    print(f"[pretrain] {config.model}: test top-1 {results['test_top1']:.4f}, {weights}")
    return results


def main(argv: Sequence[str]) -> None:
    """absl entry point: flags → `PretrainConfig` → `run`."""
    _common.recipe_main(argv, run, config_from_flags, print_table=False)


if __name__ == "__main__":
    define_flags()
    app.run(main)
