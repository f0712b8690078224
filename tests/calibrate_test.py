"""atf.calibrate: BatchNorm statistics and activation ranges re-estimated from data."""

from __future__ import annotations

import numpy as np
import pytest

import apprentice_tf as atf
from apprentice_tf.compat import keras, tf
from apprentice_tf.quantizers import range_decay


def _tiny_quantized() -> keras.Model:
    """float Dense → [input quantizer] → ternary Dense → BN → ReLU [output quantizer] → Dense."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, name="first")(inputs)
    x = keras.layers.Dense(8, name="mid")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    outputs = keras.layers.Dense(3, name="last")(x)
    return atf.quantize_model(keras.Model(inputs, outputs), weight_bits="ternary")


def _batches(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [
        (rng.normal(size=(16, 6)).astype("float32"), np.zeros(16, "int64")) for _ in range(count)
    ]


def _range(model: keras.Model, layer: str) -> tuple[float, float]:
    """The layer's activation range [min, max] (tfmot's ``..._min`` / ``..._max`` variables)."""
    weights = model.get_layer(layer).weights
    (low,) = (float(w.numpy()) for w in weights if w.name.endswith("min:0"))
    (high,) = (float(w.numpy()) for w in weights if w.name.endswith("max:0"))
    return low, high


def test_ranges_become_the_mean_batch_range():
    model = _tiny_quantized()
    batches = _batches(3)
    trainable = [w.numpy() for w in model.trainable_weights]
    assert _range(model, "mid_input_quant") == (-6.0, 6.0)  # tfmot's start

    assert atf.calibrate(model, batches, steps=3) == 3

    first = model.get_layer("first")
    lows = [min(0.0, float(tf.reduce_min(first(x)))) for x, _ in batches]
    highs = [max(0.0, float(tf.reduce_max(first(x)))) for x, _ in batches]
    low, high = _range(model, "mid_input_quant")
    assert low == pytest.approx(np.mean(lows), rel=1e-5)
    assert high == pytest.approx(np.mean(highs), rel=1e-5)
    relu_low, relu_high = _range(model, "quant_relu")
    assert relu_low == 0.0 and relu_high > 0.0  # a ReLU's range starts at 0 at once
    for before, after in zip(trainable, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(after.numpy(), before)


def test_batch_norm_statistics_become_those_of_the_data():
    model = _tiny_quantized()
    (x, _), *_ = batches = _batches(1)
    atf.calibrate(model, batches, steps=5)  # the dataset ends first: K = 1
    # With K = 1 the input quantizer's range is x's own, so the BN input in inference mode is
    # exactly the one calibration saw.
    bn = model.get_layer("bn")
    bn_input = x
    for name in ("first", "mid_input_quant", "quant_mid"):
        bn_input = model.get_layer(name)(bn_input, training=False)
    bn_input = bn_input.numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), bn_input.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), bn_input.var(axis=0), rtol=1e-3, atol=1e-6
    )
    assert bn.momentum == 0.99  # restored


def test_steps_limits_the_batches_used():
    model = _tiny_quantized()
    assert (
        atf.calibrate(
            model,
            tf.data.Dataset.from_tensor_slices((np.ones((40, 6), "float32"), np.zeros(40))).batch(
                4
            ),
            steps=2,
        )
        == 2
    )


def test_outside_calibration_ranges_move_by_tfmots_decay():
    model = _tiny_quantized()
    ((x, _),) = _batches(1)
    model(x, training=True)
    batch_low = min(0.0, float(tf.reduce_min(model.get_layer("first")(x))))
    low, _ = _range(model, "mid_input_quant")
    assert low == pytest.approx(0.999 * -6.0 + 0.001 * batch_low, rel=1e-6)


def test_range_decay_is_checked():
    decay = range_decay(1.5)
    with pytest.raises(ValueError, match=r"range_decay: `decay` must be in \[0.0, 1.0\]"):
        decay.__enter__()


@pytest.mark.parametrize(
    "model, dataset, steps, message",
    [
        ("float", _batches(1), 1, r"calibrate: `model` must be a quantization-aware model"),
        ("quantized", _batches(1), 0, r"calibrate: `steps` must be an integer >= 1"),
        ("quantized", [], 1, r"calibrate: `dataset` must be at least one batch"),
    ],
)
def test_bad_arguments_are_refused_naming_them(model, dataset, steps, message):
    network = _tiny_quantized()
    if model == "float":
        network = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=message):
        atf.calibrate(network, dataset, steps=steps)


def test_scheme_c_calibrates_the_new_student_when_given_data():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, name="first")(inputs)
    x = keras.layers.Dense(8, name="mid")(x)
    float_student = keras.Model(inputs, keras.layers.Dense(3, name="last")(x))
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    plain = atf.Distiller.from_pretrained_student(float_student, teacher)
    assert _range(plain.student, "mid_input_quant") == (-6.0, 6.0)
    batches = _batches(2)
    calibrated = atf.Distiller.from_pretrained_student(
        float_student, teacher, calibration_data=batches, calibration_steps=2
    )
    first = float_student.get_layer("first")
    highs = [float(tf.reduce_max(first(x))) for x, _ in batches]
    assert _range(calibrated.student, "mid_input_quant")[1] == pytest.approx(np.mean(highs), 1e-5)
