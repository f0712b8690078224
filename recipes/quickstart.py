"""Quickstart: a ternary ResNet-20 distilled from a float teacher on CIFAR-10, in minutes on a CPU.

The README's first command. It runs Apprentice scheme B (Mishra & Marr, ICLR 2018) through
`recipes.apprentice.run` on a slice of CIFAR-10 (the first 10% of the training split, the first
20% of the test split):

1. a float ResNet-20 teacher is trained (``--epochs`` epochs);
2. a ResNet-20 student at half width, ternary weights (3 levels per output channel; first conv
   and last dense float) and 8-bit activations, is trained on labels alone (the baseline);
3. the same student, from the same initial weights, is distilled from the frozen teacher with
   α=1, β=0.5, γ=0.5, τ=1; the teacher's logits are computed once and cached (no augmentation);
4. all three are converted to TFLite, inspected and evaluated with the LiteRT interpreter.

It prints results.md (accuracy of Keras and TFLite, file sizes, the weights each file stores)
and, last, the distilled student's .tflite path and its inspection table. Everything is written
to ``--output_dir``; rerunning the same command after a kill resumes where it stopped.

This is a demonstration on 5,000 training images and a few epochs: the accuracies are far below
the paper's full-data numbers, and the distillation gain on such a short run is noisy. For a real
run use `recipes/apprentice.py` with the full splits (its defaults).

Flags: ``--output_dir`` (default runs/quickstart), ``--epochs``, ``--threads`` (default 2).
They share their names with `recipes.apprentice`'s flags and replace them in absl's registry
(``allow_override``) when this module is imported; the other apprentice flags are refused here.

    python -m recipes.quickstart            # or: apprentice-tf run quickstart
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from apprentice_tf import tflite
from recipes import apprentice
from recipes._common import RecipeError
from recipes.apprentice import ApprenticeConfig

#: The quickstart's own flags (all other settings are fixed in `quickstart_config`).
OWN_FLAGS = ("output_dir", "epochs", "threads")
DEFAULT_OUTPUT_DIR = "runs/quickstart"
DEFAULT_EPOCHS = 3
DEFAULT_THREADS = 2


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define --output_dir, --epochs and --threads with the quickstart's defaults.

    ``allow_override``: they replace `recipes.apprentice`'s flags of the same names (imported
    first), as the recipes do with each other.
    """
    common = {"flag_values": flag_values, "allow_override": True}
    flags.DEFINE_string("output_dir", DEFAULT_OUTPUT_DIR, "Directory for every output.", **common)
    flags.DEFINE_integer(
        "epochs",
        DEFAULT_EPOCHS,
        "Epochs of the teacher, the baseline student and the distilled student each.",
        **common,
    )
    flags.DEFINE_integer(
        "threads", DEFAULT_THREADS, "TensorFlow threads (0: TensorFlow's choice).", **common
    )


def quickstart_config(
    output_dir: str = DEFAULT_OUTPUT_DIR,
    epochs: int = DEFAULT_EPOCHS,
    threads: int = DEFAULT_THREADS,
    **overrides: Any,
) -> ApprenticeConfig:
    """The quickstart's `ApprenticeConfig`: scheme B on a CIFAR-10 slice.

    `overrides` replace any other field (the tests shrink the run with them).
    """
    config = ApprenticeConfig(
        scheme="B",
        dataset="cifar10",
        train_split="train[:10%]",
        test_split="test[:20%]",
        teacher="resnet20",
        teacher_width=1.0,
        student="resnet20",
        student_width=0.5,
        weight_bits="ternary",
        activation_bits=8,
        epochs=epochs,
        teacher_epochs=epochs,
        batch_size=128,
        learning_rate=0.1,
        augment=False,
        cache_teacher_logits=True,
        output_dir=output_dir,
        threads=threads,
        verbose=1,
    )
    return dataclasses.replace(config, **overrides)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ApprenticeConfig:
    """The quickstart config of parsed flags; refuses recipes.apprentice's other flags."""
    others = [
        f"--{field.name}"
        for field in dataclasses.fields(ApprenticeConfig)
        if field.name not in OWN_FLAGS
        and field.name in flag_values
        and flag_values[field.name].present
    ]
    if others:
        raise RecipeError(
            f"quickstart takes only --output_dir, --epochs and --threads, received "
            f"{', '.join(others)}; use recipes/apprentice.py to change the other settings."
        )
    return quickstart_config(
        flag_values["output_dir"].value, flag_values["epochs"].value, flag_values["threads"].value
    )


def report(results: dict[str, Any]) -> str:
    """results.md, then the distilled student's file, inspection table and distillation gain."""
    output_dir = Path(results["config"]["output_dir"])
    rows = {row["scheme"]: row for row in results["rows"]}
    student, baseline = rows[results["config"]["scheme"]], rows["alone"]
    weights = tflite.inspect(student["tflite"])
    table = tflite.format_inspection(weights, tflite.size_report(student["tflite"], weights))
    gain = results["distillation_gain"]["tflite_top1"]
    markdown = (output_dir / "results.md").read_text(encoding="utf-8")
    return (
        f"{markdown.rstrip()}\n\n"
        f"## The distilled student ({student['bits']}): {student['tflite']}\n\n"
        f"{table}\n\n"
        f"TFLite top-1 {student['tflite_top1']:.4f}, without distillation "
        f"{baseline['tflite_top1']:.4f} (distillation gain {gain:+.4f}); results.md, "
        f"results.json, curves.png and accuracy_vs_size.png are in {output_dir}/.\n"
    )


def run(config: ApprenticeConfig) -> dict[str, Any]:
    """`recipes.apprentice.run`, then the report printed to the terminal."""
    results = apprentice.run(config)
    print()
    print(report(results))
    return results


define_flags()


def main(argv: Sequence[str]) -> None:
    """absl entry point; a bad flag exits with a one-line message before anything is written."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        run(config_from_flags())
    except RecipeError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    app.run(main)
