"""recipes/pretrain.py: a tiny float run, its warm restart from those weights, and bad settings.

Three training runs of one epoch on 128 images (a few seconds each with their TFLite conversions)
and the checks of bad settings, all in the default suite.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from apprentice_tf import zoo
from apprentice_tf.models import cifar_resnet
from recipes import pretrain
from recipes._common import SETTINGS_FILE, RecipeError, claim_output_dir

TINY = {
    "model": "resnet8",
    "width": 0.25,
    "train_split": "train[:128]",
    "test_split": "test[:64]",
    "epochs": 1,
    "batch_size": 64,
    "precision": "float32",
    "verbose": 0,
}


@pytest.fixture(scope="module")
def first_and_restart(tmp_path_factory):
    first_dir = tmp_path_factory.mktemp("first")
    first = pretrain.run(pretrain.PretrainConfig(output_dir=str(first_dir), **TINY))
    weights = first_dir / "float.weights.h5"
    restart_dir = tmp_path_factory.mktemp("restart")
    config = pretrain.PretrainConfig(
        output_dir=str(restart_dir), initial_weights=str(weights), learning_rate=0.05, **TINY
    )
    return {"first": first, "weights": weights, "config": config, "restart": pretrain.run(config)}


def test_a_run_writes_its_weights_log_and_results(first_and_restart):
    first = first_and_restart["first"]
    assert first["sha256"] == zoo.sha256(first_and_restart["weights"])
    assert first["command"].startswith("python -m recipes.pretrain --model=resnet8")
    assert "--initial_weights" not in first["command"]  # none: not spelled out
    assert len(first["val_accuracy"]) == 1 and "initial_weights" not in first


def test_a_rerun_with_another_budget_is_refused_and_changes_nothing(first_and_restart):
    config = first_and_restart["config"]
    files = {p: p.stat().st_mtime_ns for p in Path(config.output_dir).rglob("*")}
    with pytest.raises(RecipeError, match="--epochs=1 there, 2 now"):
        pretrain.run(dataclasses.replace(config, epochs=2))
    assert {p: p.stat().st_mtime_ns for p in Path(config.output_dir).rglob("*")} == files


def test_a_warm_restart_records_where_it_started(first_and_restart):
    restart, first = first_and_restart["restart"], first_and_restart["first"]
    weights = first_and_restart["weights"]
    assert f"--initial_weights={weights}" in restart["command"]
    assert restart["initial_weights"] == {
        "path": str(weights),
        "sha256": first["sha256"],
        "command": first["command"],
        "epochs": 1,
        "test_top1": first["test_top1"],
    }
    config = first_and_restart["config"]
    written = json.loads((Path(config.output_dir) / "results.json").read_text())
    assert written["initial_weights"]["sha256"] == first["sha256"]


def test_a_warm_restart_starts_from_the_given_weights(first_and_restart, tmp_path):
    # At a learning rate of ~0 (and no weight decay) training cannot move the trainable weights:
    # the restart ends with the first run's kernels only if it started from them.
    config = dataclasses.replace(
        first_and_restart["config"], output_dir=str(tmp_path), learning_rate=1e-12, weight_decay=0.0
    )
    pretrain.run(config)
    start, end = (cifar_resnet(8, width_multiplier=0.25) for _ in range(2))
    start.load_weights(str(first_and_restart["weights"]))
    end.load_weights(str(tmp_path / "float.weights.h5"))
    for before, after in zip(start.trainable_weights, end.trainable_weights, strict=True):
        np.testing.assert_allclose(after.numpy(), before.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"initial_weights": "no/such/float.weights.h5"}, "--initial_weights='no/such/"),
        ({"epochs": 0}, "--epochs and --batch_size must be >= 1"),
        ({"model": "resnet9"}, "--model"),
    ],
)
def test_bad_settings_stop_before_anything_is_written(tmp_path, overrides, message):
    config = pretrain.PretrainConfig(**{**TINY, "output_dir": str(tmp_path / "out"), **overrides})
    with pytest.raises(RecipeError, match=message):
        pretrain.run(config)
    assert not (tmp_path / "out").exists()


def test_weights_of_another_network_are_refused_naming_the_flag(tmp_path):
    other = zoo.load("cifar10/resnet20")  # 16-32-64 channels: not a resnet8 x0.25
    weights = tmp_path / "resnet20.weights.h5"
    other.save_weights(str(weights))
    config = pretrain.PretrainConfig(
        **{**TINY, "output_dir": str(tmp_path / "out"), "initial_weights": str(weights)}
    )
    with pytest.raises(RecipeError, match=r"--initial_weights=.*does not fit a resnet8 x0.25"):
        pretrain.run(config)
    assert not (tmp_path / "out").exists()


def test_flags():
    flag_values = flags.FlagValues()
    pretrain.define_flags(flag_values)
    flag_values(["pretrain", "--initial_weights=w.h5", "--learning_rate=0.05", "--epochs=20"])
    config = pretrain.config_from_flags(flag_values)
    assert (config.initial_weights, config.learning_rate, config.epochs) == ("w.h5", 0.05, 20)


def test_a_checkpoint_setting_is_claimed_by_its_content_not_its_path(tmp_path):
    weights = tmp_path / "a" / "start.weights.h5"
    weights.parent.mkdir()
    weights.write_bytes(b"trained weights")
    config = pretrain.PretrainConfig(initial_weights=str(weights), output_dir=str(tmp_path / "o"))
    claim_output_dir(tmp_path / "o", config, files=("initial_weights",))
    recorded = json.loads((tmp_path / "o" / SETTINGS_FILE).read_text())
    assert recorded["initial_weights"] == {"sha256": zoo.sha256(weights)}
    moved = tmp_path / "b" / "elsewhere.weights.h5"  # the same file on another machine
    moved.parent.mkdir()
    moved.write_bytes(weights.read_bytes())
    claim_output_dir(
        tmp_path / "o",
        dataclasses.replace(config, initial_weights=str(moved)),
        files=("initial_weights",),
    )
    moved.write_bytes(b"other weights")
    with pytest.raises(RecipeError, match="--initial_weights=.*sha256.* there"):
        claim_output_dir(
            tmp_path / "o",
            dataclasses.replace(config, initial_weights=str(moved)),
            files=("initial_weights",),
        )
