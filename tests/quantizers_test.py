"""Exact levels and straight-through gradients of the quantizer maths, and the classes' configs."""

import json

import numpy as np
import pytest

import apprentice_tf as atf
from apprentice_tf.compat import keras, tf


def twn_reference(w: np.ndarray, t: float = 0.7, rule: str = "mean") -> np.ndarray:
    """NumPy TWN: per output channel (last axis) Δ = t·mean|w| (or t·max|w|), α = mean|w|>Δ."""
    flat = w.reshape(-1, w.shape[-1])
    out = np.zeros_like(flat)
    for c in range(flat.shape[1]):
        column = flat[:, c]
        stat = np.mean(np.abs(column)) if rule == "mean" else np.max(np.abs(column))
        kept = np.abs(column) > t * stat
        alpha = np.abs(column[kept]).mean() if kept.any() else 0.0
        out[:, c] = alpha * np.sign(column) * kept
    return out.reshape(w.shape)


def uniform_reference(w: np.ndarray, bits: int) -> np.ndarray:
    levels = 2 ** (bits - 1) - 1
    s = np.abs(w.reshape(-1, w.shape[-1])).max(0)
    return s * np.round(np.clip(w / s, -1, 1) * levels) / levels


@pytest.mark.parametrize("rule,t", [("mean", 0.7), ("max", 0.05), ("mean", 1.2)])
def test_ternarize_matches_numpy_reference(rule, t):
    w = np.random.default_rng(1).normal(size=(3, 3, 4, 6)).astype("float32")
    got = atf.ternarize(tf.constant(w), threshold=t, threshold_rule=rule).numpy()
    np.testing.assert_allclose(got, twn_reference(w, t, rule), rtol=1e-6, atol=1e-7)
    for c in range(6):
        assert len(np.unique(got[..., c])) <= 3


def test_ternarize_exact_table():
    # One channel: mean|w| = 0.5, Δ = 0.35; kept {1.0, -0.6}, α = 0.8.
    w = tf.constant([[1.0], [-0.6], [0.3], [-0.1]])
    np.testing.assert_allclose(atf.ternarize(w).numpy().ravel(), [0.8, -0.8, 0.0, 0.0], atol=1e-7)


@pytest.mark.parametrize("bits,levels", [(2, 3), (4, 15), (8, 255)])
def test_quantize_uniform_levels(bits, levels):
    w = np.random.default_rng(2).normal(size=(64, 8, 4)).astype("float32")
    got = atf.quantize_uniform(tf.constant(w), num_bits=bits).numpy()
    np.testing.assert_allclose(got, uniform_reference(w, bits), rtol=1e-5, atol=1e-6)
    per_channel = [len(np.unique(got[..., c])) for c in range(4)]
    assert max(per_channel) <= levels
    assert bits == 8 or max(per_channel) == levels


@pytest.mark.parametrize(
    "fn",
    [
        lambda w: atf.ternarize(w),
        lambda w: atf.quantize_uniform(w, 4),
    ],
    ids=["ternarize", "uniform4"],
)
def test_weight_gradient_is_straight_through(fn):
    w = tf.Variable(np.random.default_rng(3).normal(size=(5, 7)).astype("float32"))
    upstream = np.random.default_rng(4).normal(size=(5, 7)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(fn(w) * upstream)
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), upstream, rtol=1e-6)


def test_activation_quantization_values_and_gradient():
    x = tf.Variable([-0.5, 0.0, 0.26, 1.0, 2.2, 4.1])
    m, bits = 4.0, 4
    with tf.GradientTape() as tape:
        q = atf.quantize_activation(x, bits, m)
        loss = tf.reduce_sum(q * tf.constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    step = m / (2**bits - 1)
    expected = np.round(np.clip(x.numpy(), 0, m) / step) * step
    np.testing.assert_allclose(q.numpy(), expected, atol=1e-6)
    # STE: identity inside [0, m], zero outside.
    inside = (x.numpy() >= 0) & (x.numpy() <= m)
    np.testing.assert_allclose(
        tape.gradient(loss, x).numpy(), np.where(inside, [1, 2, 3, 4, 5, 6], 0)
    )


QUANTIZERS = [
    atf.TernaryWeightQuantizer(),
    atf.TernaryWeightQuantizer(threshold=0.05, threshold_rule="max", per_channel=False),
    atf.UniformWeightQuantizer(num_bits=4),
    atf.UniformWeightQuantizer(num_bits=8, per_tensor_storage=True),
    atf.ActivationQuantizer(num_bits=4),
    atf.TernaryQuantizeConfig(),
    atf.NBitQuantizeConfig(num_bits=4, activation_bits=4, quantize_output=True),
    atf.ActivationQuantizeConfig(num_bits=8),
]


@pytest.mark.parametrize("obj", QUANTIZERS, ids=repr)
def test_config_json_round_trip_and_equality(obj):
    config = json.loads(json.dumps(obj.get_config()))
    clone = type(obj).from_config(config)
    assert clone == obj and obj == clone
    assert clone.get_config() == obj.get_config()
    assert hash(clone) == hash(obj)
    with atf.quantize_scope():
        serialized = json.loads(json.dumps(keras.utils.serialize_keras_object(obj)))
        restored = keras.utils.deserialize_keras_object(serialized)
    assert restored == obj


def test_equality_distinguishes_settings_and_types():
    assert atf.TernaryWeightQuantizer(0.7) != atf.TernaryWeightQuantizer(0.6)
    assert atf.TernaryWeightQuantizer(0.6) != atf.TernaryWeightQuantizer(0.7)
    assert atf.UniformWeightQuantizer(4) != atf.UniformWeightQuantizer(2)
    assert atf.ActivationQuantizer(8) != atf.UniformWeightQuantizer(8)
    assert atf.NBitQuantizeConfig(4) != atf.NBitQuantizeConfig(4, activation_bits=4)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: atf.TernaryWeightQuantizer(threshold=0), "threshold"),
        (lambda: atf.TernaryWeightQuantizer(threshold="big"), "threshold"),
        (lambda: atf.TernaryWeightQuantizer(threshold_rule="median"), "threshold_rule"),
        (lambda: atf.UniformWeightQuantizer(num_bits=9), "num_bits"),
        (lambda: atf.UniformWeightQuantizer(num_bits=3.5), "num_bits"),
        (lambda: atf.ActivationQuantizer(num_bits=1), "num_bits"),
        (lambda: atf.NBitQuantizeConfig(num_bits=4, activation_bits=1), "activation_bits"),
        (lambda: atf.TernaryQuantizeConfig(threshold=-1.0), "threshold"),
    ],
)
def test_bad_settings_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()
