"""Quickstart: a trained float ResNet-20 becomes a distilled ternary one on the full CIFAR-10.

The README's first command. It is Apprentice scheme C (Mishra & Marr, ICLR 2018) as a user with a
trained float network runs it, on the reference networks that ship with the package
(`apprentice_tf.zoo`):

1. the float student (``cifar10/resnet20``) and the float teacher (``cifar10/resnet56``) are
   loaded by name, their weights checked by sha256;
2. the student's precision is lowered (`apprentice_tf.quantize_model`: ternary weights, 3 levels
   per output channel, 8-bit activations; first conv and last dense float), its BatchNorm
   statistics and activation ranges are re-estimated on ``--calibration_steps`` training batches
   (`apprentice_tf.calibrate`; no trained weight changes), and it is evaluated as it is: the drop
   that quantization alone causes;
3. the ternary student is fine-tuned for ``--epochs`` (a fraction of an epoch is allowed) on the
   full train split with a short cosine schedule from lr 0.02 (linear warm-up over the first
   tenth), (a) alone, on the labels, and (b) with the Apprentice loss from the teacher
   (α, β, γ = 1, 0.5, 0.5; τ = ``--temperature``, default 4: in the CIFAR-10 study τ = 4 gained
   +0.53 ± 0.17 points over this fine-tune's baseline at 3 epochs where the paper's τ = 1 gained
   −0.24 ± 0.28, three seeds each), from the same weights, batches and seed;
4. every network is converted to TFLite and evaluated on the full test split (10,000 images) in
   Keras and under LiteRT; the table shows top-1 of both, file and gzip bytes, the most levels
   any low-precision layer stores per channel, and LiteRT latency (batch 1, 1 thread);
5. it prints the distilled file's inspection and the distillation gain (over ``--seeds``, with
   its spread when there are several).

Everything is written to ``--output_dir`` (results.json, results.md, the .tflite files); running
the same command again after a kill resumes where it stopped, and ``--seeds`` may grow between
runs. A run with other settings (``--epochs``, ``--temperature``, ...) into a directory that
holds another run's stages is refused before it starts (`recipes._common.claim_output_dir`).

    python -m recipes.quickstart            # or: apprentice-tf run quickstart
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from apprentice_tf import data, reporting, tflite, zoo
from apprentice_tf.compat import keras
from apprentice_tf.distiller import Distiller
from apprentice_tf.quantize import calibrate, quantize_model

from . import _common
from ._common import (
    RecipeError,
    check_int,
    check_output_dir,
    check_positive,
    claim_output_dir,
    configure_threads,
    deploy,
    make_optimizer,
    steps_per_epoch,
    train_stage,
)

#: Table columns: (row key, header).
COLUMNS = (
    ("network", "network"),
    ("keras_top1", "top-1 Keras"),
    ("tflite_top1", "top-1 TFLite"),
    ("file_bytes", "file B"),
    ("gzip_bytes", "gzip B"),
    ("levels_per_channel", "levels/channel"),
    ("latency_ms", "LiteRT ms (1 thread)"),
)


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """The quickstart's settings (``--output_dir``, ``--epochs``, ``--seeds``,
    ``--calibration_steps``, ``--temperature``, ``--threads``; the others are fixed, and the tests
    shrink them)."""

    student: str = "cifar10/resnet20"
    teacher: str = "cifar10/resnet56"
    epochs: float = 0.25
    seeds: tuple[int, ...] = (0,)
    learning_rate: float = 0.02
    calibration_steps: int = 20
    temperature: float = 4.0
    batch_size: int = 128
    train_split: str = "train"
    test_split: str = "test"
    zoo_dir: str = ""
    output_dir: str = "runs/quickstart"
    threads: int = 2
    verbose: int = 1


#: Help text of each flag; the flags are the `QuickstartConfig` fields named here.
_HELP: dict[str, str] = {
    "output_dir": "Directory for every output.",
    "epochs": "Fine-tuning epochs of each ternary student (fractions allowed: 0.25 = 98 steps).",
    "seeds": "Seeds: one alone/distilled pair each.",
    "calibration_steps": (
        "Training batches that re-estimate the ternary network's BatchNorm statistics and "
        "activation ranges before fine-tuning (apprentice_tf.calibrate); 0: none."
    ),
    "temperature": (
        "Distillation temperature τ of the distilled student (the paper's is 1; in the CIFAR-10 "
        "study 4 was the one setting whose gain cleared the seeds' spread)."
    ),
    "threads": "TensorFlow threads (0: its choice).",
}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define the recipe's flags (`_HELP`; defaults from `QuickstartConfig`) in `flag_values`.

    Programs that run the recipe call it, importers do not (`_common.define_flags` says why).
    """
    _common.define_flags(QuickstartConfig, _HELP, flag_values)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> QuickstartConfig:
    """The `QuickstartConfig` of parsed flags (not yet validated: `run` validates)."""
    return _common.config_from_flags(QuickstartConfig, _HELP, flag_values)


def _check(config: QuickstartConfig) -> tuple[Path, str | None]:
    if not isinstance(config.epochs, int | float) or not config.epochs > 0:
        raise RecipeError(f"--epochs must be > 0, received {config.epochs!r}.")
    check_positive("learning_rate", config.learning_rate)
    check_positive("temperature", config.temperature)
    check_int("calibration_steps", config.calibration_steps, 0)
    if (
        not config.seeds
        or any(s < 0 for s in config.seeds)
        or len(set(config.seeds)) != len(config.seeds)
    ):
        raise RecipeError(f"--seeds must be distinct integers >= 0, received {config.seeds}.")
    output_dir = check_output_dir(config.output_dir)
    root = config.zoo_dir or None
    for role, name in (("student", config.student), ("teacher", config.teacher)):
        try:
            zoo.info(name, root)
        except ValueError as error:
            raise RecipeError(f"the {role}: {error}") from None
    return output_dir, root


def _levels(row: dict[str, Any]) -> int | None:
    """The most distinct values per output channel of any integer kernel in the file."""
    counts = [w["levels"] for w in row["inspection"] if not w["dtype"].startswith("FLOAT")]
    return max(counts) if counts else None


def fine_tune(
    stage: str,
    model: keras.Model,
    train: Any,
    config: QuickstartConfig,
    output_dir: Path,
) -> float:
    """Fine-tune `model` for ``config.epochs`` (whole or fractional) as a resumable stage; returns
    its training wall seconds (from the stage's log, so also for a stage finished earlier).

    SGD with Nesterov momentum 0.9 over T = round(epochs · batches per epoch) steps: linear
    warm-up to ``config.learning_rate`` over the first tenth, then cosine to 0
    (`recipes._common.make_optimizer`). A `Distiller` brings its own loss; any other model is
    trained on the labels with sparse categorical cross-entropy on logits. The finished weights
    are ``<output_dir>/<stage>.weights.h5``; a rerun loads them instead of training again.
    """
    per_epoch = steps_per_epoch(train)
    total = max(1, round(config.epochs * per_epoch))
    epochs = max(1, math.floor(config.epochs))
    steps = math.ceil(total / epochs)
    model.compile(
        optimizer=make_optimizer(
            config.learning_rate, 1, epochs * steps, warmup_epochs=0.1, nesterov=True
        ),
        **(
            {}
            if isinstance(model, Distiller)
            else {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
        ),
        metrics=["accuracy"],
    )
    # A repeated dataset with steps_per_epoch: a fraction of an epoch, with a known total.
    history = train_stage(
        stage,
        model,
        train.repeat(),
        epochs,
        output_dir,
        validation_data=None,
        verbose=config.verbose,
        steps_per_epoch=steps,
    )
    return float(sum(history.get("seconds", [])))


def run(config: QuickstartConfig) -> dict[str, Any]:
    """Load, quantize, fine-tune (alone and distilled), deploy and report; returns the results."""
    output_dir, root = _check(config)
    # Each seed's stages have names of their own: --seeds may grow between runs.
    claim_output_dir(output_dir, config, reusable=("seeds",))
    configure_threads(config.threads)
    student_entry = zoo.info(config.student, root)
    float_student = zoo.load(config.student, root)
    teacher = zoo.load(config.teacher, root)
    teacher.trainable = False
    test = data.load(student_entry.dataset, config.test_split, 256)

    def row(network: keras.Model, file: str, name: str, seed: int | None = None) -> dict:
        print(f"[quickstart] {name}: converting and evaluating on {config.test_split}", flush=True)
        result = deploy(
            network,
            output_dir / file,
            test,
            {"network": name},
            verbose=0,
            num_threads=config.threads or 1,
        )
        result["levels_per_channel"] = _levels(result)
        result["seed"] = seed
        return result

    rows = [row(float_student, "float.tflite", f"float {config.student} (zoo)")]
    # One quantization-aware copy of the float student (quantize_model takes seconds): every
    # fine-tuning run below starts from exactly these weights, restored with set_weights.
    ternary = quantize_model(float_student, weight_bits="ternary", activation_bits=8)
    before_name = "ternary W2A8, before fine-tuning"
    if config.calibration_steps:
        print(
            f"[quickstart] calibrating on {config.calibration_steps} batches of "
            f"{config.train_split}",
            flush=True,
        )
        calibration = data.load(student_entry.dataset, config.train_split, config.batch_size)
        calibrate(ternary, calibration, steps=config.calibration_steps)
        before_name = "ternary W2A8, calibrated, before fine-tuning"
    rows.append(row(ternary, "ternary_before.tflite", before_name))
    before = ternary.get_weights()
    gains = []
    for seed in config.seeds:
        train = data.load(
            student_entry.dataset, config.train_split, config.batch_size, augment=True, seed=seed
        )
        keras.utils.set_random_seed(seed)
        ternary.set_weights(before)
        alone_seconds = fine_tune(f"alone_seed{seed}", ternary, train, config, output_dir)
        alone_row = row(ternary, f"alone_seed{seed}.tflite", "ternary, fine-tuned alone", seed)
        alone_row["fine_tuning_seconds"] = alone_seconds
        keras.utils.set_random_seed(seed)
        ternary.set_weights(before)
        # Scheme C; Distiller.from_pretrained_student(float_student, teacher) does the same in
        # one call, quantizing a fresh copy.
        distiller = Distiller(student=ternary, teacher=teacher, temperature=config.temperature)
        distilled_seconds = fine_tune(f"distilled_seed{seed}", distiller, train, config, output_dir)
        distilled_row = row(
            distiller.student,
            f"distilled_seed{seed}.tflite",
            f"ternary, fine-tuned with distillation from {config.teacher}",
            seed,
        )
        distilled_row["fine_tuning_seconds"] = distilled_seconds
        rows += [alone_row, distilled_row]
        gains.append(distilled_row["tflite_top1"] - alone_row["tflite_top1"])

    # Every file timed side by side in one call (alternating), so machine drift hits all alike.
    timings = tflite.latency([r["tflite"] for r in rows], num_threads=1)
    for result, timing in zip(rows, timings, strict=True):
        result["latency_ms"] = timing.median_ms
    results = {
        "config": dataclasses.asdict(config),
        "machine": reporting.machine_info(config.threads),
        "teacher_top1": zoo.info(config.teacher, root).test_top1,
        "rows": [{k: v for k, v in r.items() if k != "inspection_table"} for r in rows],
        "distillation_gain": {
            "per_seed": gains,
            "mean": statistics.fmean(gains),
            "std": statistics.stdev(gains) if len(gains) > 1 else None,
        },
    }
    reporting.write_json(output_dir / "results.json", results)
    text = report(results, rows[-1]["inspection_table"])
    reporting.write_text(output_dir / "results.md", text)
    print()
    print(text)
    return results


def report(results: dict[str, Any], inspection_table: str) -> str:
    """The table, the distilled file's inspection and the distillation gain, as markdown."""
    config = results["config"]
    rows = results["rows"]
    gain = results["distillation_gain"]
    spread = (
        f" ± {100 * gain['std']:.2f} (std over seeds {config['seeds']})"
        if gain["std"] is not None
        else f" (one seed, {config['seeds'][0]}: no spread; pass --seeds=0,1,2 for one)"
    )
    return (
        f"# Quickstart: scheme C on {config['train_split']} / {config['test_split']} "
        f"({config['epochs']:g} fine-tuning epochs per student)\n\n"
        f"{reporting.markdown_table(rows, COLUMNS)}\n\n"
        f"## The distilled student: {rows[-1]['tflite']}\n\n{inspection_table}\n\n"
        f"Distillation gain (TFLite top-1, distilled − alone): {100 * gain['mean']:+.2f} "
        f"points{spread}.\n"
    )


def main(argv: Sequence[str]) -> None:
    """absl entry point; a bad flag exits with a one-line message before anything is written."""
    _common.recipe_main(argv, run, config_from_flags, print_table=False)


if __name__ == "__main__":
    define_flags()
    app.run(main)
