"""Tests for apprentice_tf.models: parameter counts vs the papers, shapes, structure, errors."""

import numpy as np
import pytest

from apprentice_tf import models
from apprentice_tf.compat import keras


@pytest.fixture(autouse=True)
def _clear_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


def _trainable_params(model: keras.Model) -> int:
    """Parameters as the papers count them: BatchNorm moving statistics excluded."""
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# Published counts: He et al. 2016 (CIFAR Table 6; ImageNet as in torchvision), Howard et al. 2017
# Table 8, Huang et al. 2017 Table 2 (0.8M rounded; its reference implementations give 0.77M).
@pytest.mark.parametrize(
    "build, published",
    [
        (models.resnet20, 0.27e6),
        (models.resnet32, 0.46e6),
        (models.resnet44, 0.66e6),
        (models.resnet56, 0.85e6),
        (models.resnet110, 1.7e6),
        (models.resnet18, 11.69e6),
        (models.resnet34, 21.80e6),
        (models.resnet50, 25.56e6),
        (models.resnet101, 44.55e6),
        (lambda: models.densenet_bc(100, growth_rate=12), 0.77e6),
        (lambda: models.mobilenet_v1(1000, input_shape=(224, 224, 3)), 4.2e6),
    ],
)
def test_parameter_counts_match_published(build, published):
    assert _trainable_params(build()) == pytest.approx(published, rel=0.03)


@pytest.mark.parametrize(
    "build, input_shape, num_classes",
    [
        (lambda: models.resnet20(num_classes=7), (32, 32, 3), 7),
        (lambda: models.cifar_resnet(8, 5, width_multiplier=0.5), (32, 32, 3), 5),
        (lambda: models.resnet18(num_classes=6, input_shape=(64, 64, 3)), (64, 64, 3), 6),
        (lambda: models.resnet50(num_classes=6, input_shape=(64, 64, 3)), (64, 64, 3), 6),
        (lambda: models.mobilenet_v1(num_classes=4), (32, 32, 3), 4),
        (lambda: models.densenet_bc(40, growth_rate=6, num_classes=3), (32, 32, 3), 3),
    ],
)
def test_output_is_logits_of_right_shape(build, input_shape, num_classes):
    model = build()
    x = np.random.default_rng(0).normal(size=(2, *input_shape)).astype(np.float32)
    out = model(x, training=False).numpy()
    assert out.shape == (2, num_classes)
    assert np.all(np.isfinite(out))
    assert not np.allclose(out.sum(axis=1), 1.0)  # logits, not probabilities
    # The quantizer keeps the first Conv2D and the last Dense in float.
    assert type(model.layers[1]) is keras.layers.Conv2D
    assert type(model.layers[-1]) is keras.layers.Dense
    assert model.layers[-1].get_config()["activation"] == "linear"


def test_layer_names_are_deterministic_and_unique():
    first = [layer.name for layer in models.resnet20().layers]
    keras.backend.clear_session()
    models.resnet20()  # a second model in the same session must not shift the names
    second = [layer.name for layer in models.resnet20().layers]
    assert first == second
    assert len(set(first)) == len(first)
    assert {"conv1", "stage2_block1_proj_conv", "stage3_block3_add", "logits"} <= set(first)


def test_cifar_resnet_uses_projection_only_where_shape_changes():
    names = [layer.name for layer in models.resnet20().layers]
    assert [n for n in names if n.endswith("_proj_conv")] == [
        "stage2_block1_proj_conv",
        "stage3_block1_proj_conv",
    ]
    assert sum(isinstance(layer, keras.layers.Add) for layer in models.resnet20().layers) == 9


def test_width_multiplier_scales_channels():
    base = models.resnet20()
    wide = models.resnet20(width_multiplier=2.0)
    assert wide.get_layer("stage3_block1_conv1").filters == 128
    assert _trainable_params(wide) == pytest.approx(4 * _trainable_params(base), rel=0.02)


def test_mobilenet_stage_knobs():
    model = models.mobilenet_v1(
        stage_widths=(16, 32, 48),
        stage_depths=(1, 2, 1),
        stage_strides=(1, 2, 2),
        block_type=("standard", "separable", "grouped"),
        groups=4,
        width_multiplier=0.5,
    )
    layers = {layer.name: layer for layer in model.layers}
    assert layers["conv1"].strides == (1, 1)  # CIFAR-size input: stride-1 stem
    assert type(layers["stage1_block1_conv"]) is keras.layers.Conv2D
    assert isinstance(layers["stage2_block2_dw"], keras.layers.DepthwiseConv2D)
    assert layers["stage3_block1_gconv"].groups == 4
    assert layers["stage3_block1_pw"].filters == 24
    assert "stage2_block3_dw" not in layers
    assert model.get_layer("avg_pool").input_shape == (None, 8, 8, 24)
    assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 10)


def test_mobilenet_imagenet_stem_and_depth_multiplier():
    model = models.mobilenet_v1(1000, input_shape=(224, 224, 3), depth_multiplier=2)
    assert model.get_layer("conv1").strides == (2, 2)
    assert model.get_layer("stage1_block1_dw").output_shape == (None, 112, 112, 64)
    assert model.get_layer("avg_pool").input_shape == (None, 7, 7, 1024)


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: models.cifar_resnet(21), "depth"),
        (lambda: models.cifar_resnet(2), "depth"),
        (lambda: models.cifar_resnet("20"), "depth"),
        (lambda: models.cifar_resnet(20, num_classes=0), "num_classes"),
        (lambda: models.cifar_resnet(20, width_multiplier=0), "width_multiplier"),
        (lambda: models.cifar_resnet(20, input_shape=(32, 32)), "input_shape"),
        (lambda: models.imagenet_resnet(19), "depth"),
        (lambda: models.densenet_bc(99), "depth"),
        (lambda: models.densenet_bc(40, compression=0.0), "compression"),
        (lambda: models.densenet_bc(40, compression=1.5), "compression"),
        (lambda: models.densenet_bc(40, growth_rate=0), "growth_rate"),
        (lambda: models.mobilenet_v1(block_type="dense"), "block_type"),
        (lambda: models.mobilenet_v1(block_type=("separable",) * 2), "block_type"),
        (lambda: models.mobilenet_v1(stage_depths=(1, 2)), "stage_depths"),
        (lambda: models.mobilenet_v1(stage_widths=()), "stage_widths"),
        (lambda: models.mobilenet_v1(stage_widths=(16, 32)), "stage_depths"),
        (lambda: models.mobilenet_v1(stage_strides=(1, 3, 2, 2, 2)), "stage_strides"),
        (lambda: models.mobilenet_v1(block_type="grouped", groups=3), "groups"),
        (lambda: models.mobilenet_v1(depth_multiplier=0), "depth_multiplier"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()
