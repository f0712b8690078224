"""Tests for recipes/apprentice.py (schemes A, B, C), end to end.

One scheme-B run on a tiny CIFAR-10 slice, interrupted by a KeyboardInterrupt in the second epoch
of its distillation stage and then run again (module fixture), backs the default tests: the files
it writes, the results, the students' .tflite levels, and the resume itself. Schemes A and C, the
cached-logit path and a teacher checkpoint are marked slow. Flag errors must stop
before anything is written.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest
from absl import app, flags

from apprentice_tf import tflite
from apprentice_tf.compat import keras
from apprentice_tf.models import cifar_resnet
from recipes import apprentice
from recipes._common import RecipeError

TINY = {
    "train_split": "train[:256]",
    "test_split": "test[:128]",
    "teacher": "resnet8",
    "teacher_width": 0.25,
    "student": "resnet8",
    "student_width": 0.25,
    "epochs": 1,
    "teacher_epochs": 1,
    "student_pretrain_epochs": 1,
    "finetune_epochs": 1,
    "batch_size": 64,  # 4 steps per epoch
    "threads": 2,
    # Forced, not "auto", so that every CPU runs the same path: float networks train (and the
    # frozen teacher distils) under bfloat16, and are evaluated and exported in float32.
    "precision": "mixed_bfloat16",
    "verbose": 0,
}
RESNET8_LOW_PRECISION_CONVS = 8  # 6 block convs + 2 projections; conv1 and logits stay float
RESULT_KEYS = {
    "config",
    "machine",
    "rows",
    "curves",
    "distillation_gain",
    "teacher_source",
    "training_policy",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(output_dir: Path, **overrides) -> apprentice.ApprenticeConfig:
    return apprentice.ApprenticeConfig(**{**TINY, "output_dir": str(output_dir), **overrides})


class _KeyboardInterruptAt(keras.callbacks.Callback):
    """Presses Ctrl-C during the second batch of `epoch` (after the previous one was backed up)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch
        self.current = -1

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.current = epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self.current == self.epoch and batch == 1:
            raise KeyboardInterrupt


class _EpochsSeen(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs.append(epoch)


def _with_callbacks(patch: pytest.MonkeyPatch, stage: str, *extra: keras.callbacks.Callback):
    """Make the recipe's `train_stage` add `extra` callbacks to stage `stage`."""
    original = apprentice.train_stage

    def train_stage(name, model, *args, callbacks=(), **kwargs):
        if name == stage:
            callbacks = [*callbacks, *extra]
        return original(name, model, *args, callbacks=callbacks, **kwargs)

    patch.setattr(apprentice, "train_stage", train_stage)


def _mtimes(output_dir: Path, *names: str) -> dict[str, int]:
    return {name: (output_dir / name).stat().st_mtime_ns for name in names}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Scheme B, distilled for 2 epochs: killed in the second, then run again to the end."""
    output_dir = tmp_path_factory.mktemp("apprentice_b") / "run"
    config = _config(output_dir, scheme="B", epochs=2)
    with pytest.MonkeyPatch.context() as patch:
        _with_callbacks(patch, "distill", _KeyboardInterruptAt(epoch=1))
        with pytest.raises(KeyboardInterrupt):
            apprentice.run(config)
    interrupted = {
        "files": sorted(p.name for p in output_dir.iterdir()),
        "distill_rows": (output_dir / "distill.csv").read_text().count("\n") - 1,
        "mtimes": _mtimes(output_dir, "teacher.weights.h5", "baseline.weights.h5", "teacher.csv"),
    }
    seen = _EpochsSeen()
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        _with_callbacks(patch, "distill", seen)
        results = apprentice.run(config)
    return {
        "config": config,
        "output_dir": output_dir,
        "results": results,
        "interrupted": interrupted,
        "resumed_epochs": seen.epochs,
        "printed": printed.getvalue(),
    }


# ------------------------------------------------------------------------------------------------
# Scheme B end to end (default run)


def test_results_json_has_every_key_and_values_in_range(resumed):
    results = json.loads((resumed["output_dir"] / "results.json").read_text())
    assert set(results) == RESULT_KEYS
    assert results["training_policy"] == "mixed_bfloat16"  # TINY forces it
    assert results["config"] == dataclasses.asdict(resumed["config"])
    assert results["teacher_source"] == "trained"
    rows = results["rows"]
    assert [row["scheme"] for row in rows] == ["teacher", "alone", "B"]
    assert [row["bits"] for row in rows] == ["float32", "ternary/A8", "ternary/A8"]
    assert [row["model"] for row in rows] == ["resnet8 x0.25"] * 3
    for row in rows:
        assert 0.0 <= row["keras_top1"] <= 1.0
        assert 0.0 <= row["tflite_top1"] <= 1.0
        assert 0.0 <= row["agreement"]["top1_agreement"] <= 1.0
        assert row["file_bytes"] > 0 and row["packed_bytes"] > 0
        assert Path(row["tflite"]).is_file()
    teacher, baseline, distilled = rows
    assert distilled["packed_bytes"] < teacher["packed_bytes"] / 4
    gain = results["distillation_gain"]
    assert gain["tflite_top1"] == pytest.approx(distilled["tflite_top1"] - baseline["tflite_top1"])
    assert gain["keras_top1"] == pytest.approx(distilled["keras_top1"] - baseline["keras_top1"])
    curves = results["curves"]
    assert {name: len(values) for name, values in curves.items()} == {
        "teacher (float)": 1,
        "baseline (alone)": 2,
        "distilled (B)": 2,
    }
    assert all(0.0 <= v <= 1.0 for values in curves.values() for v in values)


@pytest.mark.parametrize("name", ["student_baseline.tflite", "student_distilled.tflite"])
def test_student_tflite_stores_at_most_three_levels_per_channel(resumed, name):
    weights = tflite.inspect(resumed["output_dir"] / name)
    quantized = [w for w in weights if "/quant_" in w.name]
    assert len(quantized) == RESNET8_LOW_PRECISION_CONVS
    for w in quantized:
        assert not w.dtype.startswith("FLOAT"), w
        assert 2 <= w.levels <= 3, w
    floats = [w for w in weights if "/quant_" not in w.name]
    assert [w.dtype for w in floats] == ["FLOAT32", "FLOAT32"]  # first conv, logits


def test_teacher_is_saved_and_deployed_in_float(resumed):
    output_dir = resumed["output_dir"]
    saved = keras.models.load_model(output_dir / "teacher.keras")
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    weights = tflite.inspect(output_dir / "teacher.tflite")
    assert weights and all(w.dtype == "FLOAT32" for w in weights)


def test_plots_and_markdown_are_written(resumed):
    output_dir = resumed["output_dir"]
    for name in ("curves.png", "accuracy_vs_size.png"):
        content = (output_dir / name).read_bytes()
        assert content.startswith(PNG_MAGIC) and len(content) > 1000
    markdown = (output_dir / "results.md").read_text()
    assert "| model | bits (W/A) | scheme | top-1 Keras | top-1 TFLite |" in markdown
    for scheme in ("teacher", "alone", "B"):
        assert f"| {scheme} |" in markdown
    assert "levels/channel" in markdown


def test_interrupted_run_left_finished_stages_and_a_backup(resumed):
    interrupted = resumed["interrupted"]
    assert "distill.weights.h5" not in interrupted["files"]
    assert {"teacher.weights.h5", "baseline.weights.h5", "teacher.keras", "backup"} <= set(
        interrupted["files"]
    )
    assert "results.json" not in interrupted["files"]
    assert interrupted["distill_rows"] == 1


def test_rerun_loads_finished_stages_and_resumes_distillation(resumed):
    output_dir = resumed["output_dir"]
    assert (
        _mtimes(output_dir, *resumed["interrupted"]["mtimes"]) == resumed["interrupted"]["mtimes"]
    )
    assert "[teacher] finished earlier" in resumed["printed"]
    assert "[baseline] finished earlier" in resumed["printed"]
    assert resumed["resumed_epochs"] == [1]  # BackupAndRestore skipped the finished epoch 0
    for stage, epochs in (("teacher", [0]), ("baseline", [0, 1]), ("distill", [0, 1])):
        with (output_dir / f"{stage}.csv").open() as handle:
            assert [int(row["epoch"]) for row in csv.DictReader(handle)] == epochs, stage
    assert (output_dir / "distill.weights.h5").is_file()


# ------------------------------------------------------------------------------------------------
# Bad flags: a one-line RecipeError, nothing written


BAD_FLAGS = [
    ({"scheme": "D"}, "--scheme='D'"),
    ({"scheme": "b"}, "--scheme='b'"),
    ({"weight_bits": "3"}, "--weight_bits='3'"),
    ({"weight_bits": 4}, "--weight_bits=4"),
    ({"activation_bits": 16}, "--activation_bits=16"),
    ({"activation_bits": 0}, "--activation_bits=0"),
    ({"teacher": "resnet21"}, "--teacher='resnet21'"),
    ({"student": "vgg16"}, "--student='vgg16'"),
    ({"dataset": "mnist"}, "--dataset='mnist'"),
    ({"train_split": "trian"}, "Unknown split"),
    ({"epochs": 0}, "--epochs"),
    ({"teacher_epochs": -1}, "--teacher_epochs"),
    ({"finetune_epochs": 0}, "--finetune_epochs"),
    ({"student_pretrain_epochs": 0}, "--student_pretrain_epochs"),
    ({"batch_size": 0}, "--batch_size"),
    ({"learning_rate": 0.0}, "--learning_rate"),
    ({"finetune_lr_factor": -1.0}, "--finetune_lr_factor"),
    ({"student_width": 0.0}, "--student_width"),
    ({"temperature": 0.0}, "--temperature"),
    ({"gamma": float("nan")}, "--gamma"),
    ({"beta": 0.0, "gamma": 0.0}, "--beta and --gamma"),
    ({"scheme": "A", "alpha": 0.0}, "--alpha=0"),
    ({"threads": -1}, "--threads"),
    ({"precision": "float16"}, "--precision"),
    ({"cache_teacher_logits": True, "augment": True}, "--noaugment"),
    ({"cache_teacher_logits": True, "augment": False, "scheme": "C"}, "scheme B only"),
    ({"teacher_checkpoint": "/no/such/teacher.keras"}, "does not exist"),
    ({"scheme": "A", "teacher_checkpoint": "/no/such.keras"}, "schemes B and C"),
]


@pytest.mark.parametrize(
    "overrides, message",
    BAD_FLAGS,
    ids=[",".join(o) + f"={list(o.values())}" for o, _ in BAD_FLAGS],
)
def test_bad_flag_is_refused_before_anything_is_written(tmp_path, overrides, message):
    output_dir = tmp_path / "out"
    with pytest.raises(RecipeError) as error:
        apprentice.run(_config(output_dir, **overrides))
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not output_dir.exists()


def test_bad_flag_leaves_an_existing_output_dir_unchanged(tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("keep")
    with pytest.raises(RecipeError, match="--epochs"):
        apprentice.run(_config(output_dir, epochs=-3))
    assert [p.name for p in output_dir.iterdir()] == ["notes.txt"]


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    output_file = tmp_path / "out"
    output_file.write_text("a file")
    with pytest.raises(RecipeError, match="is a file"):
        apprentice.run(_config(output_file))
    assert output_file.read_text() == "a file"


@pytest.mark.parametrize(
    "classes, width, suffix",
    [(100, 0.25, ".weights.h5"), (100, 0.25, ".keras"), (10, 0.5, ".weights.h5")],
    ids=["100-classes-h5", "100-classes-keras", "other-width"],
)
def test_teacher_checkpoint_that_does_not_fit_is_refused(tmp_path, classes, width, suffix):
    checkpoint = tmp_path / f"teacher{suffix}"
    model = cifar_resnet(8, num_classes=classes, width_multiplier=width)
    if suffix == ".keras":
        model.save(checkpoint)
    else:
        model.save_weights(checkpoint)
    output_dir = tmp_path / "out"
    with pytest.raises(RecipeError, match="does not fit --teacher=resnet8") as error:
        apprentice.run(_config(output_dir, scheme="C", teacher_checkpoint=str(checkpoint)))
    assert "\n" not in str(error.value)
    if classes != 10:
        assert "(16, 100)" in str(error.value)  # the checkpoint's logits kernel
    assert not output_dir.exists()


# ------------------------------------------------------------------------------------------------
# Flags and main


def _flag_config(*argv: str) -> apprentice.ApprenticeConfig:
    flag_values = flags.FlagValues()
    apprentice.define_flags(flag_values)
    flag_values(["apprentice", *argv])
    return apprentice.config_from_flags(flag_values)


def test_flag_defaults_are_the_config_defaults():
    assert _flag_config() == apprentice.ApprenticeConfig()


def test_flags_become_config_fields():
    config = _flag_config(
        "--scheme=C",
        "--weight_bits=4",
        "--activation_bits=4",
        "--teacher=resnet110",
        "--teacher_width=2",
        "--noaugment",
        "--teacher_checkpoint=t.keras",
        "--finetune_lr_factor=0.05",
    )
    assert (config.scheme, config.weight_bits, config.activation_bits) == ("C", "4", 4)
    assert (config.teacher, config.teacher_width, config.augment) == ("resnet110", 2.0, False)
    assert (config.teacher_checkpoint, config.finetune_lr_factor) == ("t.keras", 0.05)


def test_main_exits_with_one_line_on_a_bad_flag(tmp_path):
    output_dir = tmp_path / "out"
    # Other recipes imported into this process may have replaced shared flag names.
    apprentice.define_flags()
    bad = "--scheme=D"
    try:
        with pytest.raises(SystemExit) as exit_info:
            app.run(apprentice.main, argv=["apprentice", bad, f"--output_dir={output_dir}"])
    finally:
        flags.FLAGS.unparse_flags()
    message = str(exit_info.value.code)
    assert message.startswith("error: --")
    assert bad.split("=")[0] in message
    assert "\n" not in message
    assert not output_dir.exists()


# ------------------------------------------------------------------------------------------------
# Slow: the other schemes, cached logits, a teacher checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["A", "C"])
def test_scheme_end_to_end(tmp_path, scheme):
    output_dir = tmp_path / scheme
    results = apprentice.run(_config(output_dir, scheme=scheme))
    assert [row["scheme"] for row in results["rows"]] == ["teacher", "alone", scheme]
    expected = {
        "A": {"baseline (alone)", "teacher (A, joint)", "distilled (A)"},
        "C": {
            "teacher (float)",
            "student (float)",
            "baseline (alone, fine-tuned)",
            "distilled (C)",
        },
    }[scheme]
    assert set(results["curves"]) == expected
    assert all(len(values) == 1 for values in results["curves"].values())
    stages = {
        "A": ["baseline", "distill"],
        "C": ["teacher", "student_float", "baseline", "distill"],
    }
    for stage in stages[scheme]:
        assert (output_dir / f"{stage}.weights.h5").is_file()
    assert (output_dir / "teacher.keras").is_file()
    for name in ("student_baseline.tflite", "student_distilled.tflite"):
        quantized = [w for w in tflite.inspect(output_dir / name) if "/quant_" in w.name]
        assert len(quantized) == RESNET8_LOW_PRECISION_CONVS
        assert all(w.levels <= 3 for w in quantized)
    assert json.loads((output_dir / "results.json").read_text())["distillation_gain"]


@pytest.mark.slow
def test_scheme_b_with_cached_logits_and_a_teacher_checkpoint(tmp_path, resumed):
    checkpoint = resumed["output_dir"] / "teacher.keras"
    config = _config(
        tmp_path / "cached",
        scheme="B",
        teacher_checkpoint=str(checkpoint),
        cache_teacher_logits=True,
        augment=False,
        weight_bits="4",
        activation_bits=4,
    )
    results = apprentice.run(config)
    output_dir = tmp_path / "cached"
    assert not (output_dir / "teacher.csv").exists()  # loaded, not trained
    assert results["teacher_source"] == str(checkpoint)
    teacher_row = results["rows"][0]
    assert teacher_row["keras_top1"] == resumed["results"]["rows"][0]["keras_top1"]
    assert [row["bits"] for row in results["rows"][1:]] == ["W4/A4", "W4/A4"]
    quantized = [
        w for w in tflite.inspect(output_dir / "student_distilled.tflite") if "/quant_" in w.name
    ]
    assert quantized and all(w.levels <= 15 for w in quantized)
    assert set(results["curves"]) == {"baseline (alone)", "distilled (B)"}
