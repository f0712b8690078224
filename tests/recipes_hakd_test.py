"""recipes/hakd.py: smoke run on tiny CIFAR-10 slices and flag checks (attention transfer is
the library's `losses.AttentionTransfer`, tested in distiller_test.py)."""

import dataclasses
import json

import pytest
from absl import flags

from apprentice_tf import hardware
from recipes import hakd
from recipes._common import RecipeError

_TINY_GRID = json.dumps([{"depth": 8, "width_multiplier": w} for w in (0.25, 0.5)])


def tiny_config(tmp_path, **overrides) -> hakd.HAKDConfig:
    """Seconds-scale settings: ResNet-8 teacher and students, 256/128 images, 1 epoch, 3 runs."""
    settings = {
        "train_split": "train[:256]",
        "test_split": "test[:128]",
        "teacher": "resnet8",
        "teacher_width": 1.0,
        "family": "resnet",
        "grid": _TINY_GRID,
        "latency_budget_ms": 5.0,
        "runs": 3,
        "warmup": 1,
        "epochs": 1,
        "batch_size": 64,
        "channel_keep": (0.5,),
        "sweep_ops": ("conv",),
        "sweep_sizes": (8,),
        "sweep_channels": (8, 16),
        "output_dir": str(tmp_path / "run"),
        "threads": 2,
        "precision": "float32",
        "verbose": 0,
    }
    settings.update(overrides)
    return hakd.HAKDConfig(**settings)


def test_smoke_run_writes_results_within_budget(tmp_path):
    # mixed_bfloat16 forced (emulated where the CPU lacks it): the teacher stage, the channel-pruned
    # baseline and the float student train under it, and every network deploys as float32.
    config = tiny_config(tmp_path, sweep=True, precision="mixed_bfloat16")
    results = hakd.run(config)
    out = tmp_path / "run"
    assert results["training_policy"] == "mixed_bfloat16"
    for row in results["rows"]:  # float32 exports: the files reproduce their Keras networks
        assert row["agreement"]["max_abs_diff"] <= 1e-3 * max(
            1.0, row["agreement"]["max_abs_output"]
        )
        assert not any(w["dtype"] == "BFLOAT16" for w in row["inspection"]), row["scheme"]

    for name in ("results.json", "results.md", "latency_table.json", "student.tflite"):
        assert (out / name).is_file(), name
    for png in ("layer_sweep.png", "accuracy_vs_latency.png", "curves.png", "accuracy_vs_size.png"):
        assert (out / png).stat().st_size > 1000, png
    stored = json.loads((out / "results.json").read_text())
    assert stored["config"]["latency_budget_ms"] == 5.0

    schemes = [row["scheme"] for row in results["rows"]]
    assert schemes[0] == "HAKD (KD+AT)" and schemes[1] == "teacher"
    assert any(s.startswith("magnitude pruning") for s in schemes)
    assert any(s.startswith("channel pruning") for s in schemes)
    for row in results["rows"]:
        assert row["latency_ms"] > 0 and row["latency_p90_ms"] >= row["latency_ms"]
        assert 0 <= row["tflite_top1"] <= 1 and row["file_bytes"] > 0

    # The selected student fits the budget per the table, and no bigger candidate does.
    selection = results["selection"]
    table = hardware.LatencyTable.load(out / "latency_table.json")
    chosen = table.filter(kind="student", names=[selection["name"]]).rows
    assert len(chosen) == 1 and 0 < chosen[0].median_ms <= config.latency_budget_ms
    for other in selection["considered"]:
        if other["params"] > selection["params"]:
            assert other["median_ms"] > config.latency_budget_ms
    assert results["rows"][0]["table_ms"] == pytest.approx(chosen[0].median_ms)

    estimate = results["latency_estimate"]
    assert estimate["estimate_ms"] > 0 and estimate["measured_ms"] > 0
    assert estimate["error_ms"] == pytest.approx(estimate["estimate_ms"] - estimate["measured_ms"])
    assert isinstance(results["steps"], list)
    assert results["attention_stages"] and results["channel_keep"] == 0.5

    magnitude = next(r for r in results["rows"] if r["scheme"].startswith("magnitude"))
    assert magnitude["nonzero_params"] < magnitude["params"]
    markdown = (out / "results.md").read_text()
    assert "latency ms (deployed)" in markdown and selection["name"] in markdown
    assert "error" in markdown


def _fake_foreign_table(path):
    row = hardware.LatencyRow(
        name="x",
        key="k",
        kind="block",
        device_id="elsewhere-4c-00000000",
        num_threads=1,
        quantize=None,
        batch_size=1,
        params=1,
        tflite_bytes=1,
        median_ms=1.0,
        p90_ms=1.0,
        p10_ms=1.0,
        spread_ms=0.0,
        std_ms=0.0,
        runs=1,
        warmup=0,
    )
    table = hardware.LatencyTable()
    table.add(row, {"id": "elsewhere-4c-00000000", "cpu": "elsewhere"})
    table.save(path)
    return str(path)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"latency_budget_ms": 0.0}, "latency_budget_ms"),
        ({"latency_budget_ms": -1.0}, "latency_budget_ms"),
        ({"num_threads": 0}, "num_threads"),
        ({"runs": 0}, "runs"),
        ({"family": "vgg"}, "family"),
        ({"teacher_checkpoint": "/nonexistent/teacher.weights.h5"}, "teacher_checkpoint"),
        ({"teacher": "resnet21"}, "teacher"),
        ({"weight_bits": "3"}, "weight_bits"),
        ({"grid": '[{"width": 2}]'}, "grid"),
        ({"channel_keep": (0.0,)}, "channel_keep"),
        ({"table": "/nonexistent/table.json"}, "table"),
        ({"sweep": True, "sweep_ops": ("dilated",)}, "sweep_ops"),
        ({"precision": "float16"}, "--precision"),
    ],
)
def test_bad_flags_raise_before_anything_is_written(tmp_path, overrides, match):
    config = tiny_config(tmp_path, **overrides)
    with pytest.raises(RecipeError, match=match):
        hakd.run(config)
    assert not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "run"
    target.write_text("not a directory")
    with pytest.raises(RecipeError, match="output_dir"):
        hakd.run(tiny_config(tmp_path))
    assert target.read_text() == "not a directory"


def test_foreign_table_needs_allow_foreign(tmp_path):
    table = _fake_foreign_table(tmp_path / "foreign.json")
    before = (tmp_path / "foreign.json").read_text()
    with pytest.raises(RecipeError, match="another device"):
        hakd.run(tiny_config(tmp_path, table=table))
    assert not (tmp_path / "run").exists()
    assert (tmp_path / "foreign.json").read_text() == before
    hakd.validate(tiny_config(tmp_path, table=table, allow_foreign=True))  # accepted


def test_flags_parse_into_the_config():
    values = flags.FlagValues()
    hakd.define_flags(values)
    values(
        [
            "hakd",
            "--latency_budget_ms=0.5",
            "--family=densenet",
            "--channel_keep=0.25,0.5",
            "--sweep_channels=8,16",
            "--weight_bits=ternary",
            "--sweep",
            "--precision=mixed_bfloat16",
        ]
    )
    config = hakd.config_from_flags(values)
    assert config == dataclasses.replace(
        hakd.HAKDConfig(),
        latency_budget_ms=0.5,
        family="densenet",
        channel_keep=(0.25, 0.5),
        sweep_channels=(8, 16),
        weight_bits="ternary",
        sweep=True,
        precision="mixed_bfloat16",
    )


def test_choose_keep_prefers_the_slowest_fitting_fraction():
    assert hakd._choose_keep({0.25: 1.0, 0.5: 2.0, 0.75: 4.0}, 3.0) == 0.5
    assert hakd._choose_keep({0.25: 5.0, 0.5: 6.0}, 3.0) == 0.25  # none fits: the fastest


def test_a_resume_elsewhere_chooses_with_the_recorded_devices_table(tmp_path):
    # The run started on "elsewhere" (its table and target_device.json say so): a rerun here
    # takes that device's rows without --allow_foreign; any other device still needs it.
    out = tmp_path / "run"
    out.mkdir()
    _fake_foreign_table(out / "latency_table.json")
    target = {"id": "elsewhere-4c-00000000", "cpu": "elsewhere", "cores": 4}
    (out / hakd.TARGET_DEVICE_FILE).write_text(json.dumps(target))
    checked = hakd.validate(tiny_config(tmp_path))
    assert checked.target_device == target
    assert checked.device["id"] == hardware.device_fingerprint()["id"]

    other = hardware.LatencyTable.load(out / "latency_table.json")
    row = other.rows[0]
    other.add(
        dataclasses.replace(row, device_id="third-2c-00000000"),
        {"id": "third-2c-00000000", "cpu": "third"},
    )
    other.save(out / "latency_table.json")
    with pytest.raises(RecipeError, match="third-2c-00000000.*--allow_foreign"):
        hakd.validate(tiny_config(tmp_path))

    (out / "latency_table.json").unlink()  # that device's latency cannot be measured here
    with pytest.raises(RecipeError, match="latency table .* is missing"):
        hakd.validate(tiny_config(tmp_path))
    (out / hakd.TARGET_DEVICE_FILE).write_text("{not json")
    with pytest.raises(RecipeError, match=hakd.TARGET_DEVICE_FILE + " cannot be read"):
        hakd.validate(tiny_config(tmp_path))


def _move_run_to(out, device_id):
    """Make `out` look started on `device_id`: its table's rows and its recorded device."""
    table = hardware.LatencyTable.load(out / "latency_table.json")
    here = hardware.device_fingerprint()["id"]
    fingerprint = {**table.devices[here], "id": device_id, "cpu": "Elsewhere CPU"}
    moved = hardware.LatencyTable()
    for row in table:
        moved.add(dataclasses.replace(row, device_id=device_id), fingerprint)
    moved.save(out / "latency_table.json")
    (out / hakd.TARGET_DEVICE_FILE).write_text(json.dumps(fingerprint))


@pytest.mark.slow
def test_ternary_student_run_resumes_and_reuses_the_table(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, weight_bits="ternary", attention_beta=0.0)
    first = hakd.run(config)
    assert first["rows"][0]["bits"] == "ternary/8" and first["rows"][0]["scheme"] == "HAKD (KD)"
    levels = [w["levels"] for w in first["rows"][0]["inspection"] if w["levels"] <= 3]
    assert levels, "no ternary layer in the deployed student"

    table = tmp_path / "run" / "latency_table.json"
    stored = table.read_bytes()
    measured = []
    monkeypatch.setattr(
        hardware.profiling, "_measure", lambda item, *a, **k: measured.append(item.name)
    )
    # Every stage finished and every candidate's latency is in the table: no candidate is
    # converted or timed again (only the deployed files are, by `hardware.time_tflite`).
    second = hakd.run(config)
    assert measured == []
    assert table.read_bytes() == stored
    assert second["selection"]["name"] == first["selection"]["name"]
    for a, b in zip(first["rows"], second["rows"], strict=True):
        assert a["keras_top1"] == pytest.approx(b["keras_top1"])
    recorded = json.loads((tmp_path / "run" / hakd.TARGET_DEVICE_FILE).read_text())
    assert recorded == first["device"] == first["target_device"]

    # Resumed on another machine: the device that chose is the one whose rows choose again
    # (nothing converted or timed for the table), and the report says where each part ran.
    _move_run_to(tmp_path / "run", "elsewhere-2c-00000000")
    third = hakd.run(config)
    assert measured == []
    assert third["target_device"]["id"] == "elsewhere-2c-00000000"
    assert third["device"]["id"] == hardware.device_fingerprint()["id"]
    assert third["selection"]["name"] == first["selection"]["name"]
    assert third["selection"]["row"]["device_id"] == "elsewhere-2c-00000000"
    assert third["channel_keep"] == first["channel_keep"]
    assert "This run resumed here" in (tmp_path / "run" / "results.md").read_text()
