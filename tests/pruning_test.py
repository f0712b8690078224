"""Tests for apprentice_tf.pruning: tfmot magnitude pruning and L1 channel pruning."""

import warnings

import numpy as np
import pytest

from apprentice_tf import models, pruning
from apprentice_tf.compat import keras

layers = keras.layers


@pytest.fixture(autouse=True)
def _clear_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


def _small_cnn() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


@pytest.mark.parametrize("end_step", [None, 4])
def test_magnitude_pruning_reaches_target_sparsity_after_a_few_steps(end_step):
    model = _small_cnn()
    original = [w.copy() for w in model.get_weights()]
    pruned, callbacks = pruning.magnitude_prune(
        model, 0.75, end_step=end_step, frequency=1, skip=["logits"]
    )
    pruned.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 32)
    pruned.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=6, callbacks=callbacks, verbose=0)
    stripped = pruning.strip(pruned)
    assert not any(isinstance(layer, keras.layers.Wrapper) for layer in stripped.layers)
    sparsity = pruning.weight_sparsity(stripped)
    assert sparsity["conv1"] == pytest.approx(0.75, abs=0.01)
    assert sparsity["conv2"] == pytest.approx(0.75, abs=0.01)
    assert sparsity["logits"] < 0.1  # skipped: stays dense
    assert pruning.total_sparsity(stripped, skip=["logits"]) == pytest.approx(0.75, abs=0.01)
    # The input model is a template: its weights are untouched.
    for before, after in zip(original, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_sparsity": 1.0}, "target_sparsity"),
        ({"target_sparsity": -0.1}, "target_sparsity"),
        ({"target_sparsity": 0.5, "end_step": 0}, "end_step"),
        ({"target_sparsity": 0.5, "frequency": 0}, "frequency"),
        ({"target_sparsity": 0.5, "skip": ["nope"]}, "nope"),
    ],
)
def test_magnitude_prune_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pruning.magnitude_prune(_small_cnn(), **kwargs)


def _residual_concat_net() -> keras.Model:
    """Residual Add, depthwise/pointwise and Concatenate: every case channel_prune maps."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="r1")(x)
    y = layers.Conv2D(8, 3, padding="same", name="c2")(x)
    y = layers.BatchNormalization(name="bn2")(y)
    x = layers.ReLU(name="r2")(layers.Add(name="add")([x, y]))
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = layers.BatchNormalization(name="dw_bn")(y)
    y = layers.ReLU(name="dw_relu")(y)
    y = layers.Conv2D(8, 1, name="pw")(y)
    y = layers.BatchNormalization(name="pw_bn")(y)
    y = layers.ReLU(name="pw_relu")(y)
    x = layers.Concatenate(name="concat")([x, y])
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="residual_concat")


def test_channel_prune_removes_dead_channels_without_changing_outputs():
    """Zero the odd filters (and their BN shifts): pruning half keeps exactly the even ones."""
    model = _residual_concat_net()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    model(x)
    odd = np.arange(1, 8, 2)
    for name in ("c1", "c2", "pw"):
        kernel, bias = model.get_layer(name).get_weights()
        kernel[..., odd] = 0.0
        bias[odd] = 0.0
        model.get_layer(name).set_weights([kernel, bias])
    for name in ("bn1", "bn2", "dw_bn", "pw_bn"):
        gamma, beta, mean, var = model.get_layer(name).get_weights()
        beta = rng.normal(size=8).astype("float32")
        beta[odd] = 0.0
        mean = rng.normal(size=8).astype("float32")
        mean[odd] = 0.0
        model.get_layer(name).set_weights([gamma, beta, mean, var])
    dw_kernel, dw_bias = model.get_layer("dw").get_weights()
    dw_bias[odd] = 0.0
    model.get_layer("dw").set_weights([dw_kernel, dw_bias])
    expected = model(x, training=False).numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer's weights must be copied
        pruned = pruning.channel_prune(model, 0.5)
    assert pruned.get_layer("c1").filters == 4
    assert pruned.get_layer("c2").filters == 4
    assert pruned.get_layer("pw").filters == 4
    assert pruned.get_layer("logits").units == 3
    assert pruned.count_params() < model.count_params()
    np.testing.assert_allclose(pruned(x, training=False).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: models.cifar_resnet(8, num_classes=5, width_multiplier=0.5),
        lambda: models.densenet_bc(10, growth_rate=6, num_classes=5),
        lambda: models.mobilenet_v1(
            5, stage_widths=(16, 32), stage_depths=(1, 1), input_shape=(16, 16, 3)
        ),
    ],
    ids=["resnet", "densenet", "mobilenet"],
)
def test_channel_prune_narrows_student_families(build):
    model = build()
    pruned = pruning.channel_prune(model, 0.5)
    assert pruned.count_params() < 0.5 * model.count_params()
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in model.layers]
    x = np.random.default_rng(0).normal(size=(2, *model.input_shape[1:])).astype("float32")
    out = pruned(x, training=False).numpy()
    assert out.shape == (2, 5) and np.all(np.isfinite(out))
    same = pruning.channel_prune(model, 1.0)
    np.testing.assert_allclose(
        same(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-5
    )


def test_channel_prune_grouped_mobilenet_reinitialises_grouped_convs_with_a_warning():
    model = models.mobilenet_v1(
        5,
        stage_widths=(16, 32),
        stage_depths=(1, 1),
        block_type="grouped",
        groups=4,
        input_shape=(16, 16, 3),
    )
    with pytest.warns(UserWarning, match="gconv"):
        pruned = pruning.channel_prune(model, 0.5)
    for layer in pruned.layers:
        if isinstance(layer, layers.Conv2D) and layer.groups > 1:
            assert layer.filters % 4 == 0 and layer.input_shape[-1] % 4 == 0
    assert pruned.count_params() < model.count_params()


@pytest.mark.parametrize("keep", [0.0, 1.5, True, "half"])
def test_channel_prune_rejects_bad_keep_fraction(keep):
    with pytest.raises(ValueError, match="keep_fraction"):
        pruning.channel_prune(_small_cnn(), keep)
