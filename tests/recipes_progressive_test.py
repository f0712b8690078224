"""Tests for recipes/progressive.py: plain vs progressive low-precision training, end to end.

One interrupted-then-resumed run on a tiny CIFAR-10 slice (module fixture) backs the default
tests: files, results, the stripped student's .tflite, λ per epoch, and λ restored by
BackupAndRestore. Runs with a teacher or other settings are marked slow. Flag errors must stop
before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from absl import flags
from tensorflow.lite.python import schema_py_generated as schema

from apprentice_tf import progressive, tflite
from apprentice_tf.compat import keras
from recipes import progressive as recipe
from recipes._common import RecipeError, read_history

TINY = {
    "train_split": "train[:256]",
    "test_split": "test[:128]",
    "model": "resnet8",
    "width": 0.25,
    "epochs": 2,
    "batch_size": 64,  # 4 steps per epoch
    "threads": 2,
    "verbose": 0,
}
RESNET8_LOW_PRECISION_CONVS = 8  # 6 block convs + 2 projections; conv1 stays float


class _Interrupted(RuntimeError):
    pass


class _InterruptAt(keras.callbacks.Callback):
    """Stops a fit like a kill would: at the start of `epoch`, after the previous was backed up."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch:
            raise _Interrupted(f"interrupted at epoch {epoch}")


class _RecordAtTrainBegin(keras.callbacks.Callback):
    """λ and the optimizer step right after BackupAndRestore (earlier in the list) restored."""

    def __init__(self) -> None:
        super().__init__()
        self.scales: list[float] | None = None
        self.step: int | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.scales = progressive.get_ancillary_scale(self.model)
        self.step = int(self.model.optimizer.iterations.numpy())


def _with_callbacks(monkeypatch, stage: str, *extra: keras.callbacks.Callback) -> None:
    """Make the recipe's `train_stage` add `extra` callbacks to stage `stage`."""
    original = recipe.train_stage

    def train_stage(name, model, *args, callbacks=(), **kwargs):
        if name == stage:
            callbacks = [*callbacks, *extra]
        return original(name, model, *args, callbacks=callbacks, **kwargs)

    monkeypatch.setattr(recipe, "train_stage", train_stage)


def _tensor_names(path: Path) -> list[str]:
    model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    return [
        tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
        for subgraph in model.subgraphs
        for tensor in subgraph.tensors
    ]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A tiny ternary run killed after the progressive stage's first epoch, then run again."""
    config = recipe.ProgressiveConfig(
        **TINY, output_dir=str(tmp_path_factory.mktemp("progressive") / "out")
    )
    keras.utils.set_random_seed(0)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _with_callbacks(monkeypatch, "progressive", _InterruptAt(1))
        with pytest.raises(_Interrupted):
            recipe.run(config)
    output_dir = Path(config.output_dir)
    lambda_before = read_history(output_dir / "progressive.csv")["ancillary_scale"]
    record = _RecordAtTrainBegin()
    with pytest.MonkeyPatch.context() as monkeypatch:
        _with_callbacks(monkeypatch, "progressive", record)
        results = recipe.run(config)
    return {
        "config": config,
        "dir": output_dir,
        "results": results,
        "record": record,
        "lambda_before": lambda_before,
    }


# ------------------------------------------------------------------------------------------------
# The run (default suite: one tiny run, interrupted and resumed)


def test_writes_every_file(resumed):
    out = resumed["dir"]
    for name in (
        "results.json",
        "results.md",
        "curves.png",
        "accuracy_vs_size.png",
        "plain.tflite",
        "progressive.tflite",
        "plain.csv",
        "progressive.csv",
        "plain.weights.h5",
        "progressive.weights.h5",
    ):
        assert (out / name).stat().st_size > 0, name
    for plot in ("curves.png", "accuracy_vs_size.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "teacher.csv").exists()
    markdown = (out / "results.md").read_text()
    assert "| resnet8 w0.25 | ternary/8 | plain |" in markdown
    assert "| resnet8 w0.25 | ternary/8 | progressive |" in markdown
    assert "## Per epoch" in markdown


def test_results_json_has_both_runs_with_values_in_range(resumed):
    results = json.loads((resumed["dir"] / "results.json").read_text())
    config = resumed["config"]
    assert results["config"] == dataclasses.asdict(config)
    assert {"machine", "rows", "curves", "lambda", "decay", "ancillary", "histories"} <= set(
        results
    )
    plain, prog = results["rows"]
    assert (plain["scheme"], prog["scheme"]) == ("plain", "progressive")
    for row in (plain, prog):
        assert row["bits"] == "ternary/8"
        assert 0.0 <= row["keras_top1"] <= 1.0
        assert 0.0 <= row["tflite_top1"] <= 1.0
        assert abs(row["keras_top1"] - row["tflite_top1"]) <= 0.1
        assert row["agreement"]["top1_agreement"] >= 0.8
        assert 0 < row["packed_bytes"] < row["gzip_bytes"] < row["float32_bytes"]
    # Stripping leaves exactly the plain topology: the same sizes.
    assert prog["packed_bytes"] == plain["packed_bytes"]
    assert prog["float32_bytes"] == plain["float32_bytes"]
    for stage in ("plain", "progressive"):
        curve = results["curves"][stage]
        assert len(curve) == config.epochs
        assert all(0.0 <= value <= 1.0 for value in curve)
        assert curve == results["histories"][stage]["val_accuracy"]
    assert results["decay"] == {
        "schedule": "linear",
        "by": "step",
        "end_step": 4,
        "end_epoch": 1.0,
        "steps_per_epoch": 4,
        "total_steps": 8,
    }
    ancillary = results["ancillary"]
    assert ancillary["branches"] == RESNET8_LOW_PRECISION_CONVS
    assert ancillary["parameters_expanded"] > ancillary["parameters_deployed"]


def test_lambda_per_epoch_follows_the_schedule_and_ends_at_zero(resumed):
    scales = resumed["results"]["lambda"]["progressive"]
    # Linear to 0 at step 4; λ at an epoch's end is the value of its last step (3, then 7).
    assert scales == [0.25, 0.0]
    assert json.loads((resumed["dir"] / "results.json").read_text())["lambda"] == {
        "progressive": scales
    }


def test_backup_and_restore_restores_lambda_on_resume(resumed):
    record = resumed["record"]
    # Resumed after epoch 1 of 2: 4 steps done, and λ is the backed-up 0.25, not a new model's 1.
    assert resumed["lambda_before"] == [0.25]
    assert record.step == 4
    assert record.scales == [0.25]
    # Each epoch is logged once although the stage ran in two pieces.
    for stage in ("plain", "progressive"):
        lines = (resumed["dir"] / f"{stage}.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in lines] == ["epoch", "0", "1"], stage


def test_stripped_student_tflite_has_no_ancillary_tensors_and_ternary_levels(resumed):
    out = resumed["dir"]
    names = _tensor_names(out / "progressive.tflite")
    assert any("quant_stage1_block1_conv1" in name for name in names)
    assert not [name for name in names if "ancillary" in name.lower()]

    weights = tflite.inspect(out / "progressive.tflite")
    low_precision = [w for w in weights if "/quant_" in w.name.split(";")[0]]
    assert len(low_precision) == RESNET8_LOW_PRECISION_CONVS
    for w in low_precision:
        assert w.op == "CONV_2D"
        assert not w.dtype.startswith("FLOAT"), w
        assert w.levels <= 3, w
    plain = tflite.inspect(out / "plain.tflite")
    assert [(w.op, w.dtype, w.shape) for w in weights] == [(w.op, w.dtype, w.shape) for w in plain]


@pytest.mark.slow
def test_second_run_loads_finished_stages(resumed, capsys):
    results = recipe.run(resumed["config"])
    printed = capsys.readouterr().out
    assert "[plain] finished earlier" in printed
    assert "[progressive] finished earlier" in printed
    assert results["curves"] == resumed["results"]["curves"]
    assert results["lambda"] == resumed["results"]["lambda"]


# ------------------------------------------------------------------------------------------------
# Flags


def _flag_config(tmp_path: Path, *argv: str) -> recipe.ProgressiveConfig:
    flag_values = flags.FlagValues()
    recipe.define_flags(flag_values)
    flag_values(["progressive", f"--output_dir={tmp_path / 'out'}", *argv])
    return recipe.config_from_flags(flag_values)


def test_flag_defaults_are_the_config_defaults(tmp_path):
    config = _flag_config(tmp_path)
    assert config == dataclasses.replace(
        recipe.ProgressiveConfig(), output_dir=str(tmp_path / "out")
    )


def test_flags_become_config_fields(tmp_path):
    config = _flag_config(
        tmp_path,
        "--weight_bits=4",
        "--activation_bits=4",
        "--decay_schedule=cosine",
        "--decay_end_fraction=1",
        "--kernel_size=1",
        "--branch_norm",
        "--teacher=resnet56",
        "--temperature=4",
        "--noaugment",
    )
    assert (config.weight_bits, config.activation_bits) == ("4", 4)
    assert (config.decay_schedule, config.decay_end_fraction) == ("cosine", 1.0)
    assert (config.kernel_size, config.teacher, config.augment) == (1, "resnet56", False)
    assert config.branch_norm is True
    assert config.temperature == 4.0
    assert recipe.validate(config) == tmp_path / "out"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--decay_schedule=polynomial"], "--decay_schedule='polynomial' is not allowed"),
        (["--weight_bits=3"], "--weight_bits='3' is not allowed"),
        (["--weight_bits=binary"], "--weight_bits='binary' is not allowed"),
        (["--activation_bits=2"], "--activation_bits=2 is not allowed"),
        (["--decay_end_fraction=0"], "--decay_end_fraction must be in (0, 1], received 0.0"),
        (["--decay_end_fraction=-0.5"], "--decay_end_fraction must be in (0, 1]"),
        (["--decay_end_fraction=1.5"], "--decay_end_fraction must be in (0, 1], received 1.5"),
        (["--kernel_size=3"], "--kernel_size=3 is not allowed"),
        (["--model=resnet21"], "--model='resnet21' is not a CIFAR ResNet"),
        (["--model=vgg16"], "--model='vgg16' is not a CIFAR ResNet"),
        (["--teacher=mobilenet"], "--teacher='mobilenet' is not a CIFAR ResNet"),
        (["--dataset=mnist"], "--dataset='mnist' is not allowed"),
        (["--epochs=0"], "--epochs must be > 0"),
        (["--width=0"], "--width must be > 0"),
        (["--batch_size=0"], "--batch_size must be > 0"),
        (["--learning_rate=-0.1"], "--learning_rate must be > 0"),
        (["--threads=-1"], "--threads must be >= 0"),
        (["--temperature=0"], "--temperature must be > 0, received 0.0"),
        (["--teacher=resnet8", "--teacher_checkpoint=/no/such/teacher.weights.h5"], "not exist"),
        (["--teacher_checkpoint=/no/such/teacher.weights.h5"], "needs --teacher"),
    ],
)
def test_bad_flags_stop_before_anything_is_written(tmp_path, argv, message):
    config = _flag_config(tmp_path, *argv)
    with pytest.raises(RecipeError) as error:
        recipe.run(config)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("not a directory")
    config = recipe.ProgressiveConfig(output_dir=str(target))
    with pytest.raises(RecipeError, match="is a file"):
        recipe.run(config)
    assert target.read_text() == "not a directory"


def test_too_few_steps_for_the_decay_is_refused_before_writing(tmp_path):
    config = recipe.ProgressiveConfig(
        **{**TINY, "epochs": 1, "batch_size": 256}, output_dir=str(tmp_path / "out")
    )
    with pytest.raises(RecipeError, match="at least 2 training steps"):
        recipe.run(config)
    assert not (tmp_path / "out").exists()


def test_main_prints_one_line_error_and_exits(tmp_path):
    recipe.define_flags()  # ours again, should another recipe have redefined shared names
    flags.FLAGS(["progressive", "--weight_bits=ternery", f"--output_dir={tmp_path / 'out'}"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            recipe.main(["progressive"])
    finally:
        flags.FLAGS.unparse_flags()
    assert str(exit_info.value.code).startswith("error: --weight_bits='ternery' is not allowed")
    assert "\n" not in str(exit_info.value.code)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "fraction, total, expected",
    [(0.5, 8, 4), (1.0, 8, 7), (0.01, 8, 1), (0.25, 10, 2), (1.0, 2, 1)],
)
def test_decay_end_step_reaches_zero_before_the_last_update(fraction, total, expected):
    assert recipe.decay_end_step(fraction, total) == expected


# ------------------------------------------------------------------------------------------------
# Longer runs


@pytest.mark.slow
def test_teacher_trained_then_loaded_from_checkpoint_distils_both_stages(tmp_path):
    common = {**TINY, "epochs": 1, "teacher": "resnet8", "teacher_width": 0.25}
    first = recipe.run(recipe.ProgressiveConfig(**common, output_dir=str(tmp_path / "a")))
    assert (tmp_path / "a" / "teacher.csv").exists()
    schemes = [row["scheme"] for row in first["rows"]]
    assert schemes == ["teacher", "plain+KD", "progressive+KD"]
    for stage in ("plain", "progressive"):
        assert "distillation" in first["histories"][stage]
    assert first["lambda"]["progressive"][-1] == 0.0

    checkpoint = tmp_path / "a" / "teacher.weights.h5"
    second = recipe.run(
        recipe.ProgressiveConfig(
            **common, teacher_checkpoint=str(checkpoint), output_dir=str(tmp_path / "b")
        )
    )
    assert not (tmp_path / "b" / "teacher.csv").exists()  # loaded, not trained
    assert second["rows"][0]["keras_top1"] == first["rows"][0]["keras_top1"]


@pytest.mark.slow
def test_wrong_teacher_architecture_is_refused_before_writing(tmp_path):
    keras.utils.set_random_seed(0)
    other = recipe.build_resnet("resnet14", 0.25, 10)
    path = tmp_path / "teacher.weights.h5"
    other.save_weights(path)
    config = recipe.ProgressiveConfig(
        **TINY,
        teacher="resnet8",
        teacher_width=0.25,
        teacher_checkpoint=str(path),
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(RecipeError, match="does not fit --teacher=resnet8"):
        recipe.run(config)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_one_by_one_twins_four_bit_cosine_to_the_end(tmp_path):
    config = recipe.ProgressiveConfig(
        **TINY,
        weight_bits="4",
        kernel_size=1,
        decay_schedule="cosine",
        decay_end_fraction=1.0,
        output_dir=str(tmp_path / "out"),
    )
    results = recipe.run(config)
    assert results["decay"]["end_step"] == 7  # λ = 0 for the last update
    scales = results["lambda"]["progressive"]
    assert 0.0 < scales[0] < 1.0 and scales[-1] == 0.0
    ancillary = results["ancillary"]
    # 1×1 twins: the 3×3 convs' twins have 4608 / 9 weights, the 1×1 projections' 32 + 128,
    # plus the one shared λ (3×3 twins would add 4608 + 160 + 1).
    assert ancillary["parameters_expanded"] - ancillary["parameters_deployed"] == 512 + 160 + 1
    weights = tflite.inspect(tmp_path / "out" / "progressive.tflite")
    low_precision = [w for w in weights if "/quant_" in w.name.split(";")[0]]
    assert len(low_precision) == RESNET8_LOW_PRECISION_CONVS
    assert all(w.levels <= 15 and not w.dtype.startswith("FLOAT") for w in low_precision)


@pytest.mark.slow
def test_authors_form_branch_norm_with_cosine_over_the_first_quarter(tmp_path):
    config = recipe.ProgressiveConfig(
        **TINY,
        branch_norm=True,
        decay_schedule="cosine",
        decay_end_fraction=0.25,
        plain=False,
        output_dir=str(tmp_path / "out"),
    )
    results = recipe.run(config)
    assert results["decay"]["end_step"] == 2
    assert results["lambda"]["progressive"] == [0.0, 0.0]
    ancillary = results["ancillary"]
    assert ancillary["branch_norm"] is True
    # The twins (4608 + 160 weights, as in the test above), a BatchNorm of 4 vectors per twin
    # channel (4 + 4 + 8 + 8 + 16 + 16 block channels, 8 + 16 projection channels: 80), one λ.
    twins_and_norms = ancillary["parameters_expanded"] - ancillary["parameters_deployed"]
    assert twins_and_norms == 4608 + 160 + 4 * 80 + 1
    weights = tflite.inspect(tmp_path / "out" / "progressive.tflite")
    low_precision = [w for w in weights if "/quant_" in w.name.split(";")[0]]
    assert len(low_precision) == RESNET8_LOW_PRECISION_CONVS
    assert all(w.levels <= 3 and not w.dtype.startswith("FLOAT") for w in low_precision)
    assert not [w for w in weights if "ancillary" in w.name]
