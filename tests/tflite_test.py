"""The .tflite file stores the low-bit levels, agrees with Keras, and reports honest sizes."""

import json
import warnings

import numpy as np
import pytest
from conftest import blobs, tiny_cnn

import apprentice_tf as atf
from apprentice_tf import cli, litert, tflite
from apprentice_tf.compat import keras


def trained(weight_bits, activation_bits=8, epochs=8):
    keras.utils.set_random_seed(0)
    x, y = blobs(256)
    model = atf.quantize_model(tiny_cnn(), weight_bits, activation_bits)
    model.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="module")
def ternary_file(tmp_path_factory):
    model = trained("ternary")
    path = tflite.convert(model, tmp_path_factory.mktemp("t") / "ternary.tflite")
    return model, path


@pytest.fixture(scope="module")
def four_bit_file(tmp_path_factory):
    model = trained(4, activation_bits=8)
    path = tflite.convert(model, tmp_path_factory.mktemp("t") / "w4a8.tflite")
    return model, path


def by_layer(weights):
    return {litert.short_name(w.name).split("/")[0]: w for w in weights}


LOW_PRECISION = ["quant_conv1", "quant_conv2", "quant_dw", "quant_pw", "quant_fc"]


@pytest.mark.parametrize("fixture,limit", [("ternary_file", 3), ("four_bit_file", 15)])
def test_file_stores_integer_levels_and_float_first_last(request, fixture, limit):
    _, path = request.getfixturevalue(fixture)
    weights = by_layer(tflite.inspect(path))
    for name in LOW_PRECISION:
        assert weights[name].dtype in ("INT8", "INT4"), name
        assert weights[name].levels <= limit, name
        assert weights[name].bits_needed <= (2 if limit == 3 else 4), name
    if limit == 3:
        assert all(weights[name].levels == 3 for name in ["quant_conv1", "quant_conv2", "quant_pw"])
    assert weights["stem"].dtype == "FLOAT32"
    assert weights["logits"].dtype == "FLOAT32"


@pytest.mark.parametrize("fixture", ["ternary_file", "four_bit_file"])
def test_tflite_agrees_with_keras(request, fixture):
    model, path = request.getfixturevalue(fixture)
    x, _ = blobs(200, seed=7)
    result = tflite.agreement(model, path, x)
    assert result["top1_agreement"] >= 0.99
    # Activation rounding may differ by one step between TF's fake-quant and LiteRT's integer
    # kernels; measured max |diff| is 3-5% of the largest logit (0.23 of 6.9 for ternary).
    assert result["max_abs_diff"] <= 0.08 * result["max_abs_output"]


def test_four_bit_activations_are_refused_unless_widened(tmp_path):
    model = trained(4, activation_bits=4)
    with pytest.raises(
        ValueError, match="fewer than 8 bits.*quant_conv1.*4-bit.*activation_bits=8"
    ) as refusal:
        tflite.convert(model, tmp_path / "w4a4.tflite")
    # The message names three layers and counts the rest (a ResNet has about 50).
    narrow = tflite.narrow_activation_layers(model)
    assert len(narrow) > 3
    assert str(refusal.value).count("(4-bit)") == 3
    assert f"and {len(narrow) - 3} more layer" in str(refusal.value)
    assert not (tmp_path / "w4a4.tflite").exists()
    path = tflite.convert(model, tmp_path / "w4a4.tflite", widen_activations=True)
    weights = by_layer(tflite.inspect(path))
    assert all(weights[name].levels <= 15 for name in LOW_PRECISION)
    x, y = blobs(200, seed=7)
    # The widened file computes int8 activations over the learned ranges: a finer network than
    # the Keras one, not an identical one; it still classifies.
    result = tflite.evaluate(path, [(x, y)], verbose=0)
    assert result["accuracy"] > 0.5


def test_size_report_is_labelled_and_consistent(ternary_file):
    _, path = ternary_file
    weights = tflite.inspect(path)
    report = tflite.size_report(path, weights)
    assert report.file_bytes == path.stat().st_size
    assert report.packed_bytes < report.float32_bytes
    assert 0 < report.gzip_bytes < report.file_bytes
    text = tflite.format_inspection(weights, report)
    for label in (
        "file bytes (on disk)",
        "gzip bytes",
        "packed bytes (ideal",
        "float32-equivalent",
    ):
        assert label in text
    conv1 = by_layer(weights)["quant_conv1"]
    assert conv1.packed_bytes == conv1.float32_bytes / 16 + 4 * conv1.channels


def test_evaluate_reports_accuracy_and_latency(ternary_file):
    model, path = ternary_file
    x, y = blobs(128, seed=3)
    result = tflite.evaluate(path, [(x[:64], y[:64]), (x[64:], y[64:])], verbose=0)
    keras_accuracy = np.mean(model.predict(x, verbose=0).argmax(-1) == y)
    assert result["examples"] == 128
    assert abs(result["accuracy"] - keras_accuracy) <= 0.02
    assert result["accuracy"] > 0.5  # 4 classes
    assert result["ms_per_batch"] > 0


def test_cli_inspect_prints_table_and_json(ternary_file, capsys):
    _, path = ternary_file
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "quant_conv1" in out and "packed bytes" in out
    assert cli.main(["inspect", str(path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {w["levels"] for w in payload["weights"] if "quant_conv1" in w["name"]} == {3}
    assert cli.main(["inspect", str(path.parent / "missing.tflite")]) == 2


def test_full_integer_export_quantizes_first_and_last(ternary_file, tmp_path):
    model, _ = ternary_file
    x, _ = blobs(64, seed=5)
    path = tflite.convert(model, tmp_path / "int8.tflite", representative_data=lambda: [x[:32]])
    weights = by_layer(tflite.inspect(path))
    assert weights["stem"].dtype == "INT8" and weights["logits"].dtype == "INT8"
    assert weights["quant_conv1"].levels <= 3
    assert tflite.agreement(model, path, x)["top1_agreement"] >= 0.95


def test_int4_flag_is_verified_in_the_file(four_bit_file, tmp_path):
    model, _ = four_bit_file
    path = tmp_path / "int4.tflite"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tflite.convert(model, path, int4_weights=True)
    weights = tflite.inspect(path)
    has_int4 = any(w.dtype == "INT4" for w in weights)
    warned = any("int4_weights=True" in str(w.message) for w in record)
    assert has_int4 != warned
    # What the runtime makes of it: XNNPACK's CONV_2D takes no INT4 filter, so those convs
    # run on LiteRT's built-in kernel, and the report says why.
    placements = tflite.delegation(path)
    int4_convs = [p for p in placements if p.op == "CONV_2D" and p.weight_dtype == "INT4"]
    assert int4_convs or not has_int4
    for placement in int4_convs:
        assert not placement.delegated and placement.kernel == "built-in"
        assert "INT4" in placement.reason and "XNNPACK" in placement.reason
    assert any(p.delegated for p in placements)


def test_weight_only_model_is_refused_unless_verify_false(tmp_path):
    model = atf.quantize_model(tiny_cnn(), "ternary", activation_bits=None)
    with pytest.raises(RuntimeError, match="did not keep the low-precision levels"):
        tflite.convert(model, tmp_path / "weights_only.tflite")
    path = tflite.convert(model, tmp_path / "weights_only.tflite", verify=False)
    assert path.exists()


def test_float_model_converts_and_directory_path_is_refused(tmp_path):
    path = tflite.convert(tiny_cnn(), tmp_path / "float.tflite")
    assert {w.dtype for w in tflite.inspect(path)} == {"FLOAT32"}
    with pytest.raises(ValueError, match="is a directory"):
        tflite.convert(tiny_cnn(), tmp_path)


def mlp(width=32, odd=30):
    """Dense-only network: float first/last layers; ternary middle layers with 32 and 30 inputs."""
    inputs = keras.Input((16,))
    x = keras.layers.Dense(width, activation="relu", name="first")(inputs)
    x = keras.layers.Dense(odd, activation="relu", name="hidden32")(x)  # 32 input channels
    x = keras.layers.Dense(width, activation="relu", name="hidden30")(x)  # 30 input channels
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x), name="mlp")


def test_int2_dense_packs_ternary_fully_connected_and_keeps_the_rest(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = (x[:, :4].argmax(-1)).astype("int64")
    model = atf.quantize_model(mlp(), "ternary", 8)
    model.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, batch_size=32, epochs=4, verbose=0)
    int8_path = tflite.convert(model, tmp_path / "int8.tflite")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        int2_path = tflite.convert(model, tmp_path / "int2.tflite", int2_dense=True)
    weights = by_layer(tflite.inspect(int2_path))
    assert weights["quant_hidden32"].dtype == "INT2" and weights["quant_hidden32"].levels <= 3
    assert weights["quant_hidden32"].stored_bytes == 32 * 30 // 4
    assert weights["quant_hidden30"].dtype == "INT8"  # 30 inputs: not a multiple of 4
    kept_float = [w.dtype for n, w in weights.items() if n.endswith(("first", "logits"))]
    assert kept_float == ["FLOAT32", "FLOAT32"], sorted(weights)
    messages = [str(w.message) for w in record]
    assert any("quant_hidden30" in m and "multiple of 4" in m for m in messages), messages
    assert not any("quant_hidden32" in m for m in messages)
    int8_weights = by_layer(tflite.inspect(int8_path))
    assert int8_weights["quant_hidden32"].stored_bytes == 32 * 30
    # same dequantized weights: the two files and Keras make the same decisions
    assert tflite.agreement(model, int2_path, x)["top1_agreement"] >= 0.97
    assert (
        np.mean(tflite.predict(int2_path, x).argmax(-1) == tflite.predict(int8_path, x).argmax(-1))
        >= 0.97
    )
    placements = {p.index: p for p in tflite.delegation(int2_path)}
    assert any(p.weight_dtype == "INT2" and p.delegated for p in placements.values())


def test_int2_dense_without_ternary_dense_warns(four_bit_file, tmp_path):
    model, _ = four_bit_file
    with pytest.warns(UserWarning, match="no ternary Dense layer"):
        tflite.convert(model, tmp_path / "w4.tflite", int2_dense=True)


def test_export_asks_each_config_for_its_export_form(monkeypatch):
    """Export goes through `export_form`, not through field names: a config class that stores
    its settings under other names, or a renamed field, still exports correctly."""
    keras.utils.set_random_seed(0)
    model = atf.quantize_model(tiny_cnn(), 4, activation_bits=4)
    asked = []
    for cls in (atf.NBitQuantizeConfig, atf.ActivationQuantizeConfig):
        original = cls.export_form

        def spy(self, int4_weights=False, _original=original):
            asked.append((type(self).__name__, int4_weights))
            return _original(self, int4_weights)

        monkeypatch.setattr(cls, "export_form", spy)
    copy = tflite._export_copy(model, int4_weights=True)
    assert ("NBitQuantizeConfig", True) in asked
    assert ("ActivationQuantizeConfig", True) in asked
    configs = [getattr(layer, "quantize_config", None) for layer in copy.layers]
    weight_configs = [c for c in configs if isinstance(c, atf.NBitQuantizeConfig)]
    assert weight_configs and all(c.int4_storage and c.activation_bits == 8 for c in weight_configs)
    activations = [c for c in configs if isinstance(c, atf.ActivationQuantizeConfig)]
    assert activations and all(c.num_bits == 8 for c in activations)
    for source, exported in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(source, exported)


def test_export_form_of_each_config():
    assert atf.TernaryQuantizeConfig(activation_bits=4).export_form(True) == (
        atf.TernaryQuantizeConfig(activation_bits=8, int4_storage=True)
    )
    assert atf.NBitQuantizeConfig(3, activation_bits=None).export_form() == (
        atf.NBitQuantizeConfig(3, activation_bits=None)
    )
    assert atf.ActivationQuantizeConfig(4).export_form() == atf.ActivationQuantizeConfig(8)
    assert atf.ActivationQuantizer(2).export_form() == atf.ActivationQuantizer(8)


def test_two_input_model_converts_with_named_inputs_and_matches_keras(tmp_path):
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3), name="image")
    extra = keras.Input((4,), name="extra")
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, name="conv")(image))
    x = keras.layers.Concatenate()([x, keras.layers.Dense(4, name="side")(extra)])
    model = keras.Model([image, extra], keras.layers.Dense(3, name="logits")(x))
    path = tflite.convert(model, tmp_path / "two.tflite")
    runner = litert.make_interpreter(path).get_signature_runner("serving_default")
    rng = np.random.default_rng(0)
    inputs = {
        "image": rng.normal(size=(1, 8, 8, 3)).astype(np.float32),
        "extra": rng.normal(size=(1, 4)).astype(np.float32),
    }
    outputs = runner(**inputs)
    assert list(outputs) == ["logits"]
    expected = model.predict_on_batch([inputs["image"], inputs["extra"]])
    np.testing.assert_allclose(outputs["logits"], expected, atol=1e-5)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


def test_subclassed_model_without_symbolic_inputs_still_converts(tmp_path):
    model = _Subclassed()
    x = np.ones((1, 3), np.float32)
    expected = model(x)
    path = tflite.convert(model, tmp_path / "sub.tflite")
    np.testing.assert_allclose(litert.predict(path, x), expected, atol=1e-5)
