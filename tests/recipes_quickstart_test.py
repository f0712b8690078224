"""recipes/quickstart.py end to end on a tiny zoo (untrained ResNet-8s) and a CIFAR-10 slice.

The end-to-end run (four conversions, two fine-tunings, a rerun) is marked slow; the checks of
bad settings and flags run in the default suite.
"""

from __future__ import annotations

import dataclasses

import pytest
from absl import flags
from conftest import make_zoo_entry

from recipes import quickstart
from recipes._common import SETTINGS_FILE, RecipeError, claim_output_dir


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    make_zoo_entry(root, "resnet8", width=0.25, accuracy=0.4)
    make_zoo_entry(root, "resnet14", width=0.25, accuracy=0.6)
    output_dir = tmp_path_factory.mktemp("quickstart")
    config = quickstart.QuickstartConfig(
        student="cifar10/resnet8",
        teacher="cifar10/resnet14",
        epochs=1.0,
        seeds=(0,),
        batch_size=64,
        train_split="train[:128]",
        test_split="test[:64]",
        zoo_dir=str(root),
        output_dir=str(output_dir),
        verbose=0,
    )
    return {"config": config, "results": quickstart.run(config), "output_dir": output_dir}


@pytest.mark.slow
def test_table_has_every_network_evaluated_on_the_split(quick):
    rows = quick["results"]["rows"]
    assert [r["network"] for r in rows] == [
        "float cifar10/resnet8 (zoo)",
        "ternary W2A8, calibrated, before fine-tuning",
        "ternary, fine-tuned alone",
        "ternary, fine-tuned with distillation from cifar10/resnet14",
    ]
    for row in rows:
        assert row["test_examples"] == 64
        assert 0.0 <= row["keras_top1"] <= 1.0 and 0.0 <= row["tflite_top1"] <= 1.0
        assert row["latency_ms"] > 0
    assert all(row["fine_tuning_seconds"] > 0 for row in rows[2:])
    assert "fine_tuning_seconds" not in rows[0] and "fine_tuning_seconds" not in rows[1]
    assert rows[0]["levels_per_channel"] is None  # float file: no integer kernels
    assert all(row["levels_per_channel"] == 3 for row in rows[1:])  # ternary, in the file


@pytest.mark.slow
def test_gain_is_distilled_minus_alone(quick):
    rows = quick["results"]["rows"]
    gain = quick["results"]["distillation_gain"]
    assert gain["per_seed"] == [rows[3]["tflite_top1"] - rows[2]["tflite_top1"]]
    assert gain["std"] is None
    text = (quick["output_dir"] / "results.md").read_text()
    assert "Distillation gain" in text and "one seed" in text and "levels/channel" in text


@pytest.mark.slow
def test_rerun_loads_the_finished_fine_tuning(quick, capsys):
    quickstart.run(quick["config"])
    printed = capsys.readouterr().out
    assert "[alone_seed0] finished earlier" in printed
    assert "[distilled_seed0] finished earlier" in printed


@pytest.mark.slow
def test_rerun_with_other_settings_is_refused_before_anything_is_written(quick):
    files = sorted(quick["output_dir"].rglob("*"))
    for change, flag in (({"epochs": 2.0}, "--epochs"), ({"temperature": 1.0}, "--temperature")):
        config = dataclasses.replace(quick["config"], **change)
        with pytest.raises(RecipeError, match=f"{flag}=.* there, .* now"):
            quickstart.run(config)
    assert sorted(quick["output_dir"].rglob("*")) == files


def test_an_output_dir_is_claimed_by_the_settings_that_shape_training(tmp_path):
    first = quickstart.QuickstartConfig(output_dir=str(tmp_path), seeds=(0,), threads=2)
    claim_output_dir(tmp_path, first, reusable=("seeds",))
    recorded = (tmp_path / SETTINGS_FILE).read_text()
    assert '"epochs": 0.25' in recorded and "seeds" not in recorded and "threads" not in recorded
    # More seeds (stages of their own), other threads or verbosity: the same training, accepted.
    same = dataclasses.replace(first, seeds=(0, 1, 2), threads=1, verbose=0)
    claim_output_dir(tmp_path, same, reusable=("seeds",))
    other = dataclasses.replace(first, epochs=1.0, temperature=1.0)
    with pytest.raises(RecipeError) as error:
        claim_output_dir(tmp_path, other, reusable=("seeds",))
    message = str(error.value)
    assert "--epochs=0.25 there, 1.0 now; --temperature=4.0 there, 1.0 now" in message
    assert "pass another --output_dir" in message
    assert (tmp_path / SETTINGS_FILE).read_text() == recorded  # unchanged


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": 0}, "--epochs must be > 0"),
        ({"seeds": (0, 0)}, "--seeds must be distinct"),
        ({"calibration_steps": -1}, "--calibration_steps must be an integer >= 0"),
        ({"temperature": 0.0}, "--temperature must be > 0"),
        ({"teacher": "cifar10/resnet99"}, "the teacher: .*unknown network 'cifar10/resnet99'"),
    ],
)
def test_bad_settings_stop_before_anything_is_written(tmp_path, overrides, message):
    make_zoo_entry(tmp_path / "zoo", "resnet8")
    make_zoo_entry(tmp_path / "zoo", "resnet14")
    settings = {"student": "cifar10/resnet8", "teacher": "cifar10/resnet14", **overrides}
    config = quickstart.QuickstartConfig(
        output_dir=str(tmp_path / "out"), zoo_dir=str(tmp_path / "zoo"), **settings
    )
    with pytest.raises(RecipeError, match=message):
        quickstart.run(config)
    assert not (tmp_path / "out").exists()


def test_flags():
    flag_values = flags.FlagValues()
    quickstart.define_flags(flag_values)
    flag_values(
        ["quickstart", "--epochs=0.5", "--seeds=0,1,2", "--output_dir=x", "--temperature=2"]
    )
    config = quickstart.config_from_flags(flag_values)
    assert (config.epochs, config.seeds, config.output_dir) == (0.5, (0, 1, 2), "x")
    assert config.temperature == 2.0
    assert config.student == "cifar10/resnet20" and config.teacher == "cifar10/resnet56"
