"""benchmarks/quickstart_budget.py: its ``--runs`` parsing and the per-budget summary."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks.quickstart_budget import finished_run, parse_run, summarise
from recipes import quickstart


def test_parse_run():
    assert parse_run("0.25:0,1,2") == (0.25, (0, 1, 2))
    assert parse_run("2:0") == (2.0, (0,))


@pytest.mark.parametrize("text", ["1", "0:0", "x:0", "1:a", "1:"])
def test_a_malformed_run_names_the_flag(text):
    with pytest.raises(ValueError, match=r"--runs=.*expected <epochs>:<seeds>"):
        parse_run(text)


def _row(network, top1, seconds=None):
    row = {"network": network, "tflite_top1": top1}
    if seconds is not None:
        row["fine_tuning_seconds"] = seconds
    return row


def test_summary_averages_the_seeds_and_measures_the_gap_to_float():
    results = {
        "config": {"epochs": 1.0, "seeds": [0, 1], "temperature": 4.0},
        "teacher_top1": 0.8888,
        "rows": [
            _row("float cifar10/resnet20 (zoo)", 0.87),
            _row("ternary W2A8, before fine-tuning", 0.14),
            _row("ternary, fine-tuned alone", 0.84, 60),
            _row("ternary, fine-tuned with distillation from cifar10/resnet56", 0.86, 120),
            _row("ternary, fine-tuned alone", 0.85, 60),
            _row("ternary, fine-tuned with distillation from cifar10/resnet56", 0.84, 120),
        ],
        "distillation_gain": {"per_seed": [0.02, -0.01], "mean": 0.005, "std": 0.0212},
    }
    line = summarise(results, target_points=2.0)
    assert line["alone_top1"] == pytest.approx(0.845)
    assert line["distilled_top1"] == pytest.approx(0.85)
    assert line["gap_points"] == pytest.approx(2.0)
    assert line["within_target"] is True
    assert line["gain_points"] == pytest.approx(0.5) and line["gain_std_points"] == 2.12
    assert line["minutes_per_student"] == pytest.approx(1.5)  # median of 1, 1, 2, 2 minutes
    assert (line["temperature"], line["teacher_top1"]) == (4.0, 0.8888)
    assert summarise(results, target_points=1.9)["within_target"] is False


def test_a_finished_run_is_reused_only_with_the_same_settings(tmp_path):
    config = quickstart.QuickstartConfig(epochs=1.0, seeds=(0, 1), output_dir=str(tmp_path))
    assert finished_run(config) is None
    stored = {**dataclasses.asdict(config), "seeds": [0, 1], "threads": 1, "verbose": 0}
    (tmp_path / "results.json").write_text(json.dumps({"config": stored, "rows": []}))
    assert finished_run(config) == {"config": stored, "rows": []}  # threads/verbose differ: same
    assert finished_run(dataclasses.replace(config, seeds=(0, 1, 2))) is None
    assert finished_run(dataclasses.replace(config, calibration_steps=0)) is None
    assert finished_run(dataclasses.replace(config, temperature=config.temperature * 2)) is None
