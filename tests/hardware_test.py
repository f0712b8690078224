"""Tests for apprentice_tf.hardware: LiteRT latency tables, reuse, steps and student selection.

Timings are never compared with absolute values (the CPU is shared): only positivity, the order
of percentiles, reuse without timing, and the selection logic on synthetic tables.
"""

import dataclasses
import json

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from apprentice_tf import hardware as hw
from apprentice_tf.compat import keras
from apprentice_tf.hardware import profiling

RUNS = 3
TINY = {
    "conv": hw.BlockSpec("conv", 8, 8, 8),
    "separable": hw.BlockSpec("separable", 8, 8, 16),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Two tiny blocks profiled once into a JSON cache; (table, cache path)."""
    path = tmp_path_factory.mktemp("latency") / "table.json"
    table = hw.profile(TINY, runs=RUNS, warmup=1, cache=path, verbose=0)
    return table, path


@pytest.fixture
def invokes(monkeypatch):
    """Counts LiteRT invoke() calls."""
    calls = []
    original = Interpreter.invoke

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(Interpreter, "invoke", counting)
    return calls


def _fake_timing(monkeypatch, times_ms):
    """Conversion writes a 10-byte file and every timing returns `times_ms`."""

    def convert(model, quantize, single_block, seed, path):
        path.write_bytes(b"x" * 10)
        return None

    monkeypatch.setattr(profiling, "_convert", convert)
    monkeypatch.setattr(profiling, "_time_file", lambda path, settings: np.array(times_ms))


def _row(name, median, params, *, family="mobilenet", spread=0.01, device=None, **fields):
    device = device or hw.device_fingerprint()["id"]
    values = dict(
        name=name,
        key=f"{family}:{name}",
        kind="student",
        device_id=device,
        num_threads=1,
        quantize=None,
        batch_size=1,
        params=params,
        tflite_bytes=4 * params,
        median_ms=median,
        p90_ms=median + spread,
        p10_ms=median - spread,
        spread_ms=2 * spread,
        std_ms=spread,
        runs=RUNS,
        warmup=1,
        family=family,
        spec={"width_multiplier": params / 1000},
    )
    values.update(fields)
    return hw.LatencyRow(**values)


def _table(rows, device=None):
    fingerprint = hw.device_fingerprint()
    if device is not None:
        fingerprint = {**fingerprint, "id": device, "cpu": "Elsewhere CPU"}
    table = hw.LatencyTable()
    for row in rows:
        table.add(dataclasses.replace(row, device_id=fingerprint["id"]), fingerprint)
    return table


# -- profiling -----------------------------------------------------------------------------------


def test_profile_records_positive_latencies_with_a_spread(measured):
    table, _ = measured
    assert [row.name for row in table] == ["conv", "separable"]
    here = hw.device_fingerprint(1)
    for row in table:
        assert row.device_id == here["id"] and row.num_threads == 1 and row.runs == RUNS
        assert 0 < row.p10_ms <= row.median_ms <= row.p90_ms
        assert row.spread_ms == pytest.approx(row.p90_ms - row.p10_ms)
        assert row.params > 0 and row.tflite_bytes > 0
    assert table.rows[0].params == TINY["conv"].build().count_params()
    assert table.rows[0].spec == TINY["conv"].to_dict()


def test_save_load_round_trip(measured, tmp_path):
    table, path = measured
    loaded = hw.LatencyTable.load(path)
    assert loaded.rows == table.rows and loaded.devices == table.devices
    again = hw.LatencyTable.load(loaded.save(tmp_path / "copy.json"))
    assert again.to_dict() == loaded.to_dict()
    assert loaded.lookup(TINY["conv"].key) == table.rows[0]
    assert loaded.lookup(table.rows[1].row_key) == table.rows[1]
    assert loaded.lookup("missing") is None
    csv = loaded.to_csv(tmp_path / "table.csv").read_text().splitlines()
    assert csv[0].startswith("name,key,kind") and len(csv) == 3


def test_second_profile_reuses_the_cache_without_timing(measured, invokes, monkeypatch):
    table, path = measured
    before = path.read_bytes()
    again = hw.profile(TINY, runs=RUNS, warmup=1, cache=path, verbose=0)
    assert invokes == []
    assert again.rows == table.rows
    assert path.read_bytes() == before
    # A new candidate is timed (warmup + runs invokes) and added; the stored ones are not.
    cache = hw.LatencyTable.load(path)
    extra = hw.BlockSpec("grouped", 8, 8, 8, groups=2)
    mixed = hw.profile([TINY["conv"], extra], runs=RUNS, warmup=1, cache=cache, verbose=0)
    assert len(invokes) == 1 + RUNS
    assert mixed.rows[0].median_ms == table.rows[0].median_ms
    assert cache.lookup(extra.key) == mixed.rows[1] and len(cache) == 3


def test_other_settings_are_separate_rows(measured, monkeypatch):
    _, path = measured
    table = hw.LatencyTable.load(path)
    _fake_timing(monkeypatch, [1.0, 2.0, 3.0])
    two = hw.profile(TINY, num_threads=2, runs=RUNS, cache=table, verbose=0)
    assert [row.num_threads for row in two] == [2, 2]
    assert two.rows[0].median_ms == pytest.approx(2.0)
    with pytest.raises(ValueError, match="num_threads"):
        table.lookup(TINY["conv"].key)  # two rows now: the message asks which
    assert table.lookup(TINY["conv"].key, num_threads=2).median_ms == pytest.approx(2.0)


def test_quantized_block_keeps_ternary_levels():
    table = hw.profile([TINY["separable"]], runs=RUNS, warmup=1, quantize="ternary", verbose=0)
    row = table.rows[0]
    assert row.quantize == "ternary" and row.levels_verified is True and row.median_ms > 0


def _as_measured_on_a_phone(path, foreign, **row_fields):
    """Write the table at `path` to `foreign` as if measured on device phone-8c-0000."""
    data = json.loads(path.read_text())
    here = hw.device_fingerprint()["id"]
    data["devices"] = {"phone-8c-0000": {**data["devices"][here], "id": "phone-8c-0000"}}
    for row in data["rows"]:
        row.update(device_id="phone-8c-0000", **row_fields)
    foreign.write_text(json.dumps(data))
    return data


def test_foreign_table_is_refused_without_allow_foreign(measured, tmp_path, invokes):
    foreign = tmp_path / "foreign.json"
    data = _as_measured_on_a_phone(measured[1], foreign)
    with pytest.raises(ValueError, match="another device.*allow_foreign"):
        hw.profile(TINY, runs=RUNS, cache=foreign, verbose=0)
    assert json.loads(foreign.read_text()) == data and invokes == []

    students = _table([_row("a", 1.0, 100)], device="phone-8c-0000")
    with pytest.raises(ValueError, match="another device.*allow_foreign"):
        hw.select_student(students, 5.0)
    assert hw.select_student(students, 5.0, allow_foreign=True).name == "a"


def test_another_devices_rows_are_looked_up_never_timed(measured, tmp_path, invokes):
    # A table measured on the target (or by the machine where a run started), used elsewhere.
    foreign = tmp_path / "foreign.json"
    data = _as_measured_on_a_phone(measured[1], foreign, median_ms=7.0)
    rows = hw.profile(
        TINY, runs=RUNS, warmup=1, cache=foreign, verbose=0, device_id="phone-8c-0000"
    )
    assert invokes == [] and json.loads(foreign.read_text()) == data
    assert [r.name for r in rows] == ["conv", "separable"]
    assert {r.device_id for r in rows} == {"phone-8c-0000"} and {r.median_ms for r in rows} == {7.0}

    # A candidate the table lacks cannot be measured for that device here: refused, named.
    extra = hw.BlockSpec("grouped", 8, 8, 8, groups=2)
    with pytest.raises(ValueError, match=r"device_id='phone-8c-0000'.*\['" + extra.key):
        hw.profile(
            [TINY["conv"], extra], runs=RUNS, cache=foreign, verbose=0, device_id="phone-8c-0000"
        )
    assert invokes == [] and json.loads(foreign.read_text()) == data
    with pytest.raises(ValueError, match="device_id"):
        hw.profile(TINY, runs=RUNS, cache=foreign, verbose=0, device_id="")


def test_device_fingerprint_is_stable_and_thread_independent():
    one, two = hw.device_fingerprint(1), hw.device_fingerprint(2)
    assert one["id"] == two["id"] and one["threads"] == 1 and two["threads"] == 2
    assert one["cores"] >= 1 and one["cpu"] and one["litert"] and one["tensorflow"]


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"candidates": []}, "candidates"),
        ({"candidates": {}}, "candidates"),
        ({"num_threads": 0}, "num_threads"),
        ({"runs": 0}, "runs"),
        ({"warmup": -1}, "warmup"),
        ({"quantize": "int4"}, "quantize"),
        ({"candidates": ["not a model"]}, "candidates"),
        ({"candidates": [TINY["conv"], TINY["conv"]]}, "unique"),
    ],
)
def test_profile_rejects_bad_input_and_writes_nothing(kwargs, argument, tmp_path, invokes):
    path = tmp_path / "never.json"
    arguments = {"candidates": TINY, "runs": RUNS, "cache": path, "verbose": 0, **kwargs}
    with pytest.raises(ValueError, match=argument) as error:
        hw.profile(**arguments)
    assert "received" in str(error.value)
    assert not path.exists() and invokes == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"op": "dilated", "input_size": 8, "in_channels": 8, "out_channels": 8}, "op"),
        ({"op": "conv", "input_size": 0, "in_channels": 8, "out_channels": 8}, "input_size"),
        (
            {"op": "grouped", "input_size": 8, "in_channels": 6, "out_channels": 8, "groups": 4},
            "groups",
        ),
        (
            {"op": "conv", "input_size": 8, "in_channels": 8, "out_channels": 8, "groups": 2},
            "groups",
        ),
    ],
)
def test_block_spec_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hw.BlockSpec(**kwargs)


@pytest.mark.parametrize("op", hw.OPS)
def test_block_spec_builds_its_block_with_a_stable_key(op):
    spec = hw.BlockSpec(op, 8, 8, 16, stride=2)
    model = spec.build()
    assert model.input_shape == (None, 8, 8, 8) and model.output_shape == (None, 4, 4, 16)
    assert spec.key == hw.BlockSpec(op, 8, 8, 16, stride=2).key
    assert spec.key.startswith(op) and "8x8x8-16" in spec.key
    assert hw.BlockSpec(**spec.to_dict()) == spec


# -- steps and plots -------------------------------------------------------------------------------


def _sweep_table(latencies, op="conv", spread=0.001):
    here = hw.device_fingerprint()
    table = hw.LatencyTable()
    for channels, ms in latencies.items():
        spec = hw.BlockSpec(op, 8, channels, channels)
        row = _row(spec.key, ms, channels, family=None, spread=spread, kind="block")
        table.add(dataclasses.replace(row, key=spec.key, spec=spec.to_dict()), here)
    return table


def test_find_steps_reports_the_jumps_of_a_staircase(tmp_path):
    table = _sweep_table({8: 1.0, 16: 1.02, 24: 1.05, 32: 2.0, 40: 2.05, 48: 2.8})
    steps = hw.find_steps(table, threshold=0.15)
    assert [s.channels for s in steps] == [32, 48]
    assert steps[0].previous_channels == 24 and steps[0].relative_increase == pytest.approx(
        2.0 / 1.05 - 1
    )
    # Normalised by the work (MACs ~ c^2), only 24 -> 32 grows faster than its work.
    assert [s.channels for s in hw.find_steps(table, 0.05, normalize="macs")] == [32]
    # A jump inside the timing noise is not a step.
    assert hw.find_steps(_sweep_table({8: 1.0, 16: 1.3}, spread=0.5)) == []
    png = hw.plot_sweep(table, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layer_sweep_times_every_block_of_the_grid(monkeypatch):
    _fake_timing(monkeypatch, [1.0, 2.0, 4.0])
    table = hw.layer_sweep((8,), (4, 6), ("conv", "grouped"), groups=4, runs=RUNS, verbose=0)
    assert [row.spec["op"] for row in table] == ["conv", "conv", "grouped"]  # 6 % 4 skipped
    assert all(row.median_ms == pytest.approx(2.0) for row in table)


def test_profile_settings_are_one_object_for_every_timing_function(monkeypatch):
    _fake_timing(monkeypatch, [1.0, 2.0, 4.0])
    settings = hw.ProfileSettings(runs=RUNS, warmup=0)
    table = hw.layer_sweep((8,), (4,), ("conv",), settings=settings, num_threads=2, verbose=0)
    (row,) = table.rows
    assert (row.num_threads, row.runs, row.warmup, row.quantize) == (2, RUNS, 0, None)
    assert settings.num_threads == 1  # keywords replace fields of a copy
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.runs = 5
    with pytest.raises(TypeError, match="threads"):
        hw.layer_sweep((8,), (4,), ("conv",), threads=2)
    with pytest.raises(ValueError, match=r"layer_sweep: `runs` .*received 0"):
        hw.layer_sweep((8,), (4,), ("conv",), settings=settings, runs=0)
    with pytest.raises(ValueError, match="`settings`.*received"):
        hw.measure_model_latency(None, settings={"runs": 1})


# -- networks ------------------------------------------------------------------------------------


def test_network_blocks_merge_depthwise_and_pointwise():
    candidate = hw.student_candidates(
        "mobilenet",
        num_classes=3,
        input_shape=(16, 16, 3),
        grid=[{"stage_widths": (8, 16), "stage_depths": (1, 1)}],
    )["mobilenet_sw8-16_sd1-1"]
    blocks = hw.network_blocks(candidate.build())
    assert [(name, spec.key) for name, spec in blocks] == [
        ("conv1", "conv_k3_s1_16x16x3-32"),
        ("stage1_block1_dw", "separable_k3_s1_16x16x32-8"),
        ("stage2_block1_dw", "separable_k3_s2_16x16x8-16"),
    ]


def test_estimate_and_measure_network_latency():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    table = hw.LatencyTable()
    estimate = hw.estimate_network_latency(model, table, runs=RUNS, warmup=1)
    assert estimate > 0 and len(table) == 2  # two different blocks, both now stored
    row = hw.measure_model_latency(model, runs=RUNS, warmup=1)
    assert row.kind == "model" and row.median_ms > 0 and row.params == model.count_params()


# -- selection -----------------------------------------------------------------------------------


def test_select_student_from_measured_candidates_respects_the_budget():
    candidates = hw.student_candidates(
        "mobilenet",
        num_classes=3,
        input_shape=(16, 16, 3),
        grid={
            "narrow": {"stage_widths": (8, 16), "stage_depths": (1, 1)},
            "wide": {"stage_widths": (64, 128), "stage_depths": (1, 1), "width_multiplier": 2.0},
        },
    )
    table = hw.profile(candidates, runs=RUNS, warmup=1, verbose=0)
    narrow, wide = table.rows
    assert narrow.family == "mobilenet" and narrow.params < wide.params
    low, high = sorted(row.median_ms for row in table)
    budget = (low + high) / 2
    choice = hw.select_student(table, budget, family="mobilenet")
    assert choice.latency_ms <= budget
    assert choice.name == ("narrow" if narrow.median_ms < wide.median_ms else "wide")
    assert hw.select_student(table, 2 * high).name == "wide"
    built = choice.build()
    assert built.count_params() == choice.params and built.output_shape == (None, 3)
    with pytest.raises(ValueError, match="fastest"):
        hw.select_student(table, low / 2)


def test_select_student_most_params_within_budget_and_step_tie_break():
    table = _table(
        [
            _row("small", 1.0, 1000),
            _row("below_step", 2.0, 4000),
            _row("above_step", 3.5, 4100),  # 2.5% more params, over a latency step
            _row("large", 9.0, 16000),
        ]
    )
    assert hw.select_student(table, 5.0).name == "below_step"
    assert hw.select_student(table, 5.0, capacity_tolerance=0.0).name == "above_step"
    assert hw.select_student(table, 1.5).name == "small"
    assert hw.select_student(table, 100).name == "large"
    choice = hw.select_student(table, 5.0)
    assert choice.config == {"width_multiplier": 4.0} and choice.params == 4000
    assert [row.name for row in choice.rows] == ["small", "below_step", "above_step", "large"]
    assert json.loads(json.dumps(choice.to_dict()))["name"] == "below_step"
    with pytest.raises(ValueError, match=r"'small', takes 1 ms"):
        hw.select_student(table, 0.5)
    assert hw.select_student(table, 5.0, candidates=["small", "large"]).name == "small"
    with pytest.raises(ValueError, match="family='densenet'"):
        hw.select_student(table, 5.0, family="densenet")


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), "5"])
def test_select_student_rejects_bad_budget(budget):
    with pytest.raises(ValueError, match=r"latency_budget_ms.*received"):
        hw.select_student(_table([_row("a", 1.0, 10)]), budget)


def test_select_student_asks_which_setting_when_rows_mix_them():
    table = _table([_row("a", 1.0, 10), _row("a", 0.6, 10, num_threads=2)])
    with pytest.raises(ValueError, match="num_threads"):
        hw.select_student(table, 5.0)
    assert hw.select_student(table, 5.0, num_threads=2).latency_ms == 0.6


def test_student_candidates_default_grids_are_small_and_buildable():
    for family in hw.FAMILIES:
        candidates = hw.student_candidates(family, num_classes=4, input_shape=(16, 16, 3))
        assert 2 <= len(candidates) <= 4
        first = next(iter(candidates.values()))
        assert first.family == family and first.key.startswith(f"{family}:")
    with pytest.raises(ValueError, match="family"):
        hw.student_candidates("vgg")
