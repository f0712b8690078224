"""apprentice_tf.litert: file checks, delegation bookkeeping and the side-by-side timing loop.

Nothing here depends on how fast this CPU is: the timing tests replace the timed loop and check
the order and the arithmetic, not durations.
"""

import numpy as np
import pytest
from conftest import tiny_cnn

from apprentice_tf import litert, tflite


@pytest.fixture(scope="module")
def float_file(tmp_path_factory):
    return tflite.convert(tiny_cnn(), tmp_path_factory.mktemp("l") / "float.tflite")


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "no such file"),
        (b"", "only 0 bytes"),
        (b"hello!\n\n", "not a TFLite model"),
        (b"%PDF-1.7 not a model at all", "not a TFLite model"),
    ],
)
def test_unreadable_files_are_named_with_the_problem(tmp_path, content, message):
    path = tmp_path / "model.tflite"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(litert.TFLiteFileError, match=message) as error:
        litert.inspect(path)
    assert str(error.value).startswith(f"{path}: ")
    assert "\n" not in str(error.value)


def test_directory_and_truncated_file_are_refused(tmp_path, float_file):
    with pytest.raises(litert.TFLiteFileError, match="is a directory"):
        litert.read_model(tmp_path)
    data = float_file.read_bytes()
    for keep in (12, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut{keep}.tflite"
        cut.write_bytes(data[:keep])
        with pytest.raises(litert.TFLiteFileError, match="truncated") as error:
            litert.inspect(cut)
        assert str(cut) in str(error.value)
    with pytest.raises(litert.TFLiteFileError):
        litert.make_interpreter(tmp_path / "cut12.tflite")


def test_tflite_reexports_the_litert_functions():
    assert tflite.inspect is litert.inspect
    assert tflite.delegation is litert.delegation
    assert tflite.latency is litert.latency
    assert tflite.size_report is litert.size_report


def test_unpack_values_reads_int2_and_int4_low_bits_first():
    # bytes: 0b11_10_01_00 -> int2 values 0, 1, -2, -1; 0x8F -> int4 values -1, -8
    assert unpack(bytes([0b11100100]), "INT2", 4) == [0, 1, -2, -1]
    assert unpack(bytes([0x8F]), "INT4", 2) == [-1, -8]


def unpack(raw, type_name, count):
    code = {name: code for code, name in litert.TYPE_NAMES.items()}[type_name]
    return litert.unpack_values(raw, code, count).tolist()


def node(index, name, inputs, outputs):
    return {"index": index, "op_name": name, "inputs": inputs, "outputs": outputs}


def test_delegated_operators_are_the_partitions_interior():
    # 0: t0 -> op0 -> t1 -> op1 -> t2 -> op2 -> t3 -> op3 -> t4 ; a partition replaced op0 and
    # op1 (inputs t0 and the weight t9, output t2) and another op3; op2 stayed built-in.
    nodes = [
        node(0, "CONV_2D", [0, 9], [1]),
        node(1, "ADD", [1, 0], [2]),
        node(2, "CONV_2D", [2, 8], [3]),
        node(3, "MEAN", [3, 7], [4]),
        node(4, "DELEGATE", [0, 9], [2]),
        node(5, "DELEGATE", [3, 7], [4]),
    ]
    assert litert._delegated_operators(nodes, 4) == {0, 1, 3}
    assert litert._delegated_operators(nodes[:4], 4) == set()


def test_float_file_runs_entirely_on_xnnpack(float_file):
    placements = litert.delegation(float_file)
    assert placements and all(p.delegated and p.kernel == "XNNPACK" for p in placements)
    assert {p.op for p in placements} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    summary = litert.delegation_summary(placements)
    assert summary == f"{len(placements)} of {len(placements)} ops on XNNPACK"


def test_latency_alternates_files_and_reports_round_medians(float_file, monkeypatch):
    calls = []

    def fake_times(interpreter, runs, warmup):
        calls.append(id(interpreter))
        return np.full(runs, 0.001 * len(calls))  # every round of every file gets its own value

    monkeypatch.setattr(litert, "invoke_times", fake_times)
    a, b = float_file, float_file.with_name("copy.tflite")
    b.write_bytes(a.read_bytes())
    results = litert.latency([a, b], (1, 2), repeats=3, runs=4, warmup=0)
    assert [(r.path, r.num_threads) for r in results] == [
        (str(a), 1),
        (str(a), 2),
        (str(b), 1),
        (str(b), 2),
    ]
    # forward, backward, forward: pair k is visited at positions k, 7 - k, 8 + k
    for k, result in enumerate(results):
        assert result.repeat_medians_ms == pytest.approx((k + 1.0, 8.0 - k, 9.0 + k))
        assert result.median_ms == pytest.approx(8.0 - k)  # the middle of the three
        assert result.runs == 4 and result.warmup == 0
    assert len(set(calls)) == 4  # one interpreter per (file, threads), reused across rounds
    ratio = litert.latency_ratio(results[2], results[0])
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert litert.latency_ratio(results[0], results[0]) == {"median": 1.0, "min": 1.0, "max": 1.0}


def test_latency_rejects_bad_arguments(float_file):
    with pytest.raises(ValueError, match="`repeats` must be an integer >= 1"):
        litert.latency(float_file, repeats=0)
    with pytest.raises(ValueError, match="`paths` is empty"):
        litert.latency([])
    with pytest.raises(ValueError, match="`num_threads` must be an integer >= 1"):
        litert.latency(float_file, num_threads=0)


def test_latency_times_a_real_interpreter(float_file):
    (result,) = litert.latency(float_file, 1, repeats=2, runs=3, warmup=1)
    assert len(result.repeat_medians_ms) == 2
    assert result.spread_ms[0] <= result.median_ms <= result.spread_ms[1]
    assert result.p10_ms <= result.p90_ms
