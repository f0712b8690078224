"""The shared internals: argument checks (_checks), files (_io), graph surgery (_graph), plots."""

import json
import os
import stat

import numpy as np
import pytest
from conftest import tiny_cnn

from apprentice_tf import _checks, _graph, _io, reporting
from apprentice_tf.compat import keras

# ------------------------------------------------------------------------------------------------
# _checks: one message style, "<owner>: `<argument>` must be ..., received ...[; fix]"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: _checks.integer("f", "n", 0, 1), "f: `n` must be an integer >= 1, received 0."),
        (
            lambda: _checks.integer("f", "n", True, 1),
            "f: `n` must be an integer >= 1, received True.",
        ),
        (
            lambda: _checks.integer("f", "bits", 9, 2, 8),
            "f: `bits` must be an integer in [2, 8], received 9.",
        ),
        (
            lambda: _checks.real("f", "x", -1.0, 0),
            "f: `x` must be a finite number >= 0, received -1.0.",
        ),
        (
            lambda: _checks.real("f", "t", 0, 0, low_open=True),
            "f: `t` must be a finite number > 0, received 0.",
        ),
        (lambda: _checks.real("f", "x", float("nan"), 0), "f: `x` must be a finite number >= 0"),
        (lambda: _checks.real("f", "x", "1", 0), "received '1'."),
        (
            lambda: _checks.real("f", "p", 1.0, 0, 1, high_open=True),
            "f: `p` must be in [0, 1), received 1.0.",
        ),
        (
            lambda: _checks.choice("f", "bits", True, (1, 2), fix="Use 2."),
            "f: `bits` must be one of (1, 2), received True. Use 2.",
        ),
        (lambda: _checks.flag("f", "on", "yes"), "f: `on` must be True or False, received 'yes'."),
        (lambda: _checks.keras_object("f", "model", "resnet", keras.Model), "tf_keras `Model`"),
    ],
)
def test_checks_refuse_with_one_message_style(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


def test_checks_return_the_value_they_accept():
    assert _checks.integer("f", "n", np.int64(3), 1) == 3
    assert _checks.real("f", "x", np.float32(0.5), 0, 1) == 0.5
    assert _checks.choice("f", "bits", "ternary", ("ternary", 4)) == "ternary"
    assert _checks.flag("f", "on", np.True_) is True
    _checks.keras_object("f", "model", tiny_cnn(), keras.Model)


def test_keras3_objects_are_named_as_such():
    class Keras3:
        __module__ = "keras.src.models.functional"

    with pytest.raises(ValueError, match="f: `model` is a Keras 3 object.*tf_keras"):
        _checks.keras_object("f", "model", Keras3(), keras.Model)


# ------------------------------------------------------------------------------------------------
# _io


def test_atomic_writes_use_plain_permissions_and_json_takes_numpy(tmp_path):
    path = _io.write_json(tmp_path / "a" / "r.json", {"x": np.float32(0.5), "v": np.arange(3)})
    assert json.loads(path.read_text()) == {"x": 0.5, "v": [0, 1, 2]}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left
    assert _io.write_text(tmp_path / "t.md", "é").read_bytes() == "é".encode()


def test_machine_info_and_reporting_reexports():
    info = _io.machine_info(num_threads=2)
    assert info["threads"] == 2 and info["cores"] == os.cpu_count()
    assert {"cpu", "cpu_flags", "tensorflow", "ai_edge_litert", "python", "date"} <= set(info)
    for name in ("write_bytes", "write_text", "write_json", "machine_info"):
        assert getattr(reporting, name) is getattr(_io, name)


def test_scatter_styles_stay_distinct_past_twenty_labels():
    # The study's size plot has more than 20 rows; the 21st once repeated the first's style.
    styles = [reporting._scatter_style(index) for index in range(200)]
    assert len(set(styles)) == 200


def test_plots_write_pngs_without_pyplot(tmp_path):
    curves = reporting.plot_curves({"a": [0.1, 0.5]}, tmp_path / "c.png")
    rows = [{"packed_bytes": 100, "tflite_top1": t, "scheme": "B"} for t in (0.5, 0.6)]  # 2 seeds
    scatter = reporting.plot_accuracy_vs_size(rows, tmp_path / "s.png")
    seeds = reporting.plot_curves(
        {"a": [[0.1, 0.5], [0.2, 0.4]], "b": [0.3, 0.6]}, tmp_path / "m.png"
    )
    for path in (curves, scatter, seeds):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="'a' have lengths \\[1, 2\\]"):
        reporting.plot_curves({"a": [[0.1, 0.5], [0.2]]}, tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------------
# _graph


def test_graph_neighbours_and_rebuild_with_renamed_references():
    model = tiny_cnn()
    assert [layer.name for layer in _graph.inbound(model.get_layer("add"))] == ["stem_relu", "bn2"]
    assert [layer.name for layer in _graph.consumers(model.get_layer("pw"))] == ["pw_relu"]
    config = model.get_config()
    for layer in config["layers"]:
        if layer["name"] == "pw_relu":
            assert _graph.inbound_names(layer, "f") == ["pw"]
    # Drop the dw_relu layer: dw_bn now feeds pw directly.
    config["layers"] = [layer for layer in config["layers"] if layer["name"] != "dw_relu"]
    for layer in config["layers"]:
        _graph.rename_references(layer.get("inbound_nodes") or [], {"dw_relu": "dw_bn"})
    rebuilt = _graph.rebuild(config, model)
    assert "dw_relu" not in [layer.name for layer in rebuilt.layers]
    for layer in rebuilt.layers:
        for a, b in zip(
            layer.get_weights(), model.get_layer(layer.name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)


def test_inbound_names_refuses_a_shared_layer():
    with pytest.raises(ValueError, match="channel_prune: layer 'fc' is shared"):
        _graph.inbound_names(
            {"name": "fc", "inbound_nodes": [[["a", 0, 0, {}]]] * 2}, "channel_prune"
        )
