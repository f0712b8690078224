"""quantize_model: which layers become low precision, exact levels in Keras, weights, bad input."""

import keras as keras3
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
from conftest import tiny_cnn

import apprentice_tf as atf
from apprentice_tf.compat import keras, tf
from apprentice_tf.quantize import low_precision_layer_names

layers = keras.layers


def wrapped(model):
    return {layer.layer.name: layer for layer in model.layers if hasattr(layer, "quantize_config")}


def inference_kernel(wrapper):
    """The kernel the wrapper uses at inference (quantizer applied, training=False)."""
    weight, quantizer, variables = wrapper._weight_vars[0]
    return quantizer(weight, False, weights=variables).numpy()


def max_levels_per_channel(kernel, depthwise=False):
    flat = kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1]) if depthwise else kernel
    flat = flat.reshape(-1, flat.shape[-1])
    return max(len(np.unique(flat[:, c])) for c in range(flat.shape[1]))


@pytest.mark.parametrize("weight_bits,limit", [("ternary", 3), (2, 3), (4, 15), (8, 255)])
def test_low_precision_layers_and_exact_levels(weight_bits, limit):
    model = tiny_cnn()
    qmodel = atf.quantize_model(model, weight_bits=weight_bits, activation_bits=8)
    configs = {
        name: layer.quantize_config
        for name, layer in wrapped(qmodel).items()
        if isinstance(layer.quantize_config, atf.TernaryQuantizeConfig | atf.NBitQuantizeConfig)
    }
    assert sorted(configs) == ["conv1", "conv2", "dw", "fc", "pw"]
    assert "stem" not in wrapped(qmodel) and "logits" not in wrapped(qmodel)
    for name, wrapper in wrapped(qmodel).items():
        if name in configs:
            levels = max_levels_per_channel(inference_kernel(wrapper), depthwise=name == "dw")
            assert levels <= limit, name
            if weight_bits == "ternary":
                assert levels == 3, name


def test_float_weights_are_copied_and_model_untouched(blob_data):
    model = tiny_cnn()
    before = [w.copy() for w in model.get_weights()]
    x = blob_data[0][:8]
    reference = model.predict(x, verbose=0)
    qmodel = atf.quantize_model(model, "ternary", activation_bits=None, keep_first_last=True)
    for name in ("conv1", "fc", "stem", "logits", "bn1"):
        source = model.get_layer(name)
        target = wrapped(qmodel).get(name) or qmodel.get_layer(name)
        by_name = {w.name: w.numpy() for w in target.weights}
        for weight in source.weights:
            np.testing.assert_array_equal(weight.numpy(), by_name[weight.name])
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(reference, model.predict(x, verbose=0))
    assert [layer.name for layer in model.layers][-1] == "logits"


def test_keep_first_last_false_and_skip():
    model = tiny_cnn()
    assert "stem" in low_precision_layer_names(model, keep_first_last=False)
    assert "logits" in low_precision_layer_names(model, keep_first_last=False)
    qmodel = atf.quantize_model(model, 4, keep_first_last=False, skip=["dw"])
    names = wrapped(qmodel)
    assert isinstance(names["stem"].quantize_config, atf.NBitQuantizeConfig)
    assert isinstance(names["logits"].quantize_config, atf.NBitQuantizeConfig)
    assert not isinstance(getattr(names.get("dw"), "quantize_config", None), atf.NBitQuantizeConfig)


def test_sequential_model_and_standalone_relu_folding(blob_data):
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            layers.Conv2D(8, 3, name="c0"),
            layers.ReLU(),
            layers.Conv2D(8, 3, name="c1"),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(4, name="out"),
        ]
    )
    x = blob_data[0][:4]
    qmodel = atf.quantize_model(model, "ternary", activation_bits=None)
    # c1 -> ReLU is folded into c1's own activation; the float outputs are unchanged.
    assert wrapped(qmodel)["c1"].layer.activation.__name__ == "relu"
    assert qmodel.output_shape == (None, 4)
    float_path = atf.quantize_model(model, 8, activation_bits=None)
    assert float_path.predict(x, verbose=0).shape == (4, 4)


def test_training_moves_latent_weights_and_keeps_levels(blob_data):
    x, y = blob_data
    qmodel = atf.quantize_model(tiny_cnn(), "ternary")
    qmodel.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = wrapped(qmodel)["conv1"]._weight_vars[0][0].numpy().copy()
    history = qmodel.fit(x, y, batch_size=32, epochs=4, verbose=0)
    assert not np.array_equal(before, wrapped(qmodel)["conv1"]._weight_vars[0][0].numpy())
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.4  # 4 classes: chance is 0.25
    assert max_levels_per_channel(inference_kernel(wrapped(qmodel)["conv1"])) == 3


def keras3_model():
    return keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(3), keras3.layers.Dense(2)])


def only_first_and_last():
    inputs = keras.Input((8, 8, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, layers.Dense(2)(x))


@pytest.mark.parametrize(
    "make_model,kwargs,match",
    [
        (
            tiny_cnn,
            {"weight_bits": 3.5},
            r"`weight_bits` must be one of \('ternary', 2, 4, 8\), received 3\.5",
        ),
        (tiny_cnn, {"weight_bits": "quaternary"}, r"`weight_bits`.*'quaternary'"),
        (tiny_cnn, {"weight_bits": True}, r"`weight_bits`"),
        (
            tiny_cnn,
            {"activation_bits": 1},
            r"`activation_bits` must be one of \(8, 4, None\), received 1",
        ),
        (tiny_cnn, {"skip": ["nope"]}, r"`skip` names \['nope'\]"),
        (only_first_and_last, {}, r"no Conv2D, DepthwiseConv2D or Dense layer left"),
        (keras3_model, {}, r"Keras 3 object.*tf_keras"),
    ],
)
def test_bad_input_raises_before_building(make_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        atf.quantize_model(make_model(), **kwargs)


# ------------------------------------------------------------------------------------------------
# Operator layers (TFOpLambda) and Lambda layers


def hard_swish_cnn():
    """MobileNetV3's hard-swish written with TensorFlow calls, which Keras records as operator
    layers (TFOpLambda): ``x * relu6(x + 3) / 6``, and a gate ``x * y`` of two tensors."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = layers.BatchNormalization(name="bn0")(x)
    x = x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)
    x = layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(6.0, name="relu1")(x + 3.0)
    x = layers.Conv2D(8, 1, name="conv2", activation="relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x))


def test_operator_layers_stay_float_and_the_convs_keep_their_levels_in_the_file(tmp_path):
    model = hard_swish_cnn()
    assert {type(layer).__name__ for layer in model.layers} >= {"TFOpLambda"}
    qmodel = atf.quantize_model(model, "ternary", activation_bits=8)
    assert sorted(name for name in wrapped(qmodel) if name.startswith("conv")) == [
        "conv1",
        "conv2",
    ]
    assert not any(name.startswith("tf.") for name in wrapped(qmodel))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, rng.integers(0, 3, 8), epochs=1, verbose=0)
    path = atf.tflite.convert(qmodel, tmp_path / "hard_swish.tflite")  # verifies the levels
    stored = {
        name: [w for w in atf.tflite.inspect(path) if f"/quant_{name}/" in w.name]
        for name in ("conv1", "conv2")
    }
    for name, tensors in stored.items():
        assert tensors and all(w.dtype == "INT8" and w.levels <= 3 for w in tensors), name


def test_a_lambda_layer_with_python_code_is_refused_naming_the_layer():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="stem")(inputs)
    x = layers.Lambda(lambda t: t * 0.5, name="halve")(x)
    x = layers.Conv2D(4, 3, name="conv1")(x)
    outputs = layers.Dense(3)(layers.GlobalAveragePooling2D()(x))
    with pytest.raises(ValueError, match=r"'halve' is a Lambda layer.*tf\.nn\.relu6\(x\)"):
        atf.quantize_model(keras.Model(inputs, outputs))


# ------------------------------------------------------------------------------------------------
# quantize_apply: tfmot's annotate/apply route with our configs


def annotated_cnn():
    """Only the two convs annotated, as tfmot's guide teaches; BatchNorm and ReLU left alone."""
    annotate = tfmot.quantization.keras.quantize_annotate_layer
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = layers.ReLU(name="relu0")(x)
    x = annotate(layers.Conv2D(8, 3, padding="same", name="conv1"), atf.TernaryQuantizeConfig())(x)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = annotate(layers.Conv2D(8, 1, name="conv2"), atf.NBitQuantizeConfig(num_bits=4))(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x))


def test_quantize_apply_keeps_levels_in_the_file_and_round_trips_every_format(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    with atf.quantize_scope():
        qmodel = atf.quantize_apply(annotated_cnn())
    assert isinstance(wrapped(qmodel)["bn2"].quantize_config, atf.ActivationQuantizeConfig)
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, rng.integers(0, 3, 8), epochs=1, verbose=0)
    path = atf.tflite.convert(qmodel, tmp_path / "annotated.tflite")  # verifies the levels
    weights = atf.tflite.inspect(path)
    for name, limit in (("conv1", 3), ("conv2", 15)):
        stored = [w for w in weights if f"/quant_{name}/" in w.name]
        assert stored and all(w.dtype == "INT8" and w.levels <= limit for w in stored), name
    expected = qmodel.predict(x, verbose=0)
    for saved in ("m.keras", "m.h5", "saved_model"):
        qmodel.save(tmp_path / saved)
        with atf.quantize_scope():
            loaded = keras.models.load_model(tmp_path / saved)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5, err_msg=saved)


def test_quantize_apply_without_annotations_says_what_to_do():
    with pytest.raises(ValueError, match="no layer annotated.*quantize_model"):
        atf.quantize_apply(hard_swish_cnn())


def test_a_final_conv_that_produces_the_logits_stays_float():
    """MobileNet v1/v3 end in a 1x1 Conv2D (`conv_preds`, `Logits`) and a Flatten."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, name="stem")(inputs)
    x = layers.Conv2D(8, 3, name="conv1", activation="relu")(x)
    x = layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = layers.Conv2D(3, 1, name="conv_preds")(x)
    outputs = layers.Activation("linear")(layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    assert low_precision_layer_names(model) == ["conv1"]
    assert low_precision_layer_names(model, keep_first_last=False) == [
        "stem",
        "conv1",
        "conv_preds",
    ]


def test_a_squeeze_excite_conv_after_pooling_a_float_activation_keeps_its_levels(tmp_path):
    """MobileNetV3's squeeze-excite: GlobalAveragePooling of a hard-swish (operator layers) feeds
    a 1x1 conv; pooling passes its float input on, so the conv needs an input quantizer."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    gate = layers.Conv2D(4, 1, activation="relu", name="se_reduce")(gate)
    gate = layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(gate)
    x = layers.Multiply(name="excite")([x, gate])
    x = layers.Conv2D(8, 1, activation="relu", name="project")(x)
    outputs = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x))
    qmodel = atf.quantize_model(keras.Model(inputs, outputs), "ternary", activation_bits=8)
    rng = np.random.default_rng(0)
    qmodel(rng.normal(size=(4, 8, 8, 3)).astype(np.float32), training=True)
    path = atf.tflite.convert(qmodel, tmp_path / "se.tflite")  # verifies the levels
    weights = atf.tflite.inspect(path)
    for name in ("se_reduce", "project"):
        stored = [w for w in weights if f"/quant_{name}/" in w.name]
        assert stored and all(w.dtype == "INT8" and w.levels <= 3 for w in stored), name


def test_swish_blocks_keep_their_levels_in_the_file(tmp_path):
    """EfficientNet's MBConv: a depthwise conv reads a swish `Activation` layer, and the
    squeeze-excite reduction has swish as its own activation. The swish layer's output gets a
    quantizer (not a pass-through), and the layer's own swish is split off into an `Activation`
    layer after it (the float outputs are unchanged); every ternary layer keeps 3 levels."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("swish", name="stem_swish")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dwconv")(x)
    x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.Activation("swish", name="dw_swish")(x)
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    gate = layers.Conv2D(4, 1, activation="swish", name="se_reduce")(gate)
    gate = layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(gate)
    x = layers.Multiply(name="excite")([x, gate])
    x = layers.Conv2D(8, 1, name="project")(x)
    x = layers.BatchNormalization(name="project_bn")(x)
    outputs = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    split = atf.quantize.split_unfused_activations(model, {"se_reduce", "project"})
    assert split.get_layer("se_reduce").get_config()["activation"] == "linear"
    assert split.get_layer("se_reduce_activation").get_config()["activation"] == "swish"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(split(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)

    qmodel = atf.quantize_model(model, "ternary", activation_bits=8)
    assert type(wrapped(qmodel)["dw_swish"].quantize_config).__name__ == "ActivationQuantizeConfig"
    qmodel(x, training=True)
    path = atf.tflite.convert(qmodel, tmp_path / "mbconv.tflite")  # verifies the levels
    weights = atf.tflite.inspect(path)
    for name in ("dwconv", "se_reduce", "se_expand", "project"):
        stored = [w for w in weights if f"/quant_{name}/" in w.name]
        assert stored and all(w.dtype == "INT8" and w.levels <= 3 for w in stored), name
