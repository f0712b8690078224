"""ResNets for CIFAR and ImageNet (He et al., "Deep Residual Learning for Image Recognition",
CVPR 2016), the teacher and student networks of Mishra & Marr, "Apprentice" (ICLR 2018).

Both families use option (B) shortcuts of He et al.: identity where the shape is unchanged and a
1x1 strided Conv2D + BatchNorm projection where the stride or the channel count changes. (The CIFAR
networks of the original paper used option (A), zero-padded identity shortcuts; the projections
add about 1% parameters to ResNet-20 and keep every layer a standard Keras layer that the quantizer
and TFLite handle.) Each block is conv -> BN -> ReLU (post-activation, "v1"); the residual sum is
a ``keras.layers.Add`` followed by ReLU. Networks end in global average pooling and a Dense layer
that returns logits (no softmax). Layer names are deterministic: ``conv1``, ``bn1``,
``stage2_block1_conv2``, ``stage2_block1_proj_conv``, ..., ``logits``.
"""

from __future__ import annotations

from collections.abc import Sequence

from apprentice_tf import _checks
from apprentice_tf.compat import keras
from apprentice_tf.models.layers import (
    batch_norm,
    check_input_shape,
    conv,
    logits_head,
    relu,
    scaled,
)

__all__ = [
    "cifar_resnet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "imagenet_resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "IMAGENET_DEPTHS",
]

# depth -> (block type, blocks per stage), Table 1 of He et al. (2016).
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
_BOTTLENECK_EXPANSION = 4


def _shortcut(x, filters: int, strides: int, prefix: str):
    """Identity, or an option-(B) 1x1 projection when the stride or channel count changes."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    s = conv(x, filters, 1, strides=strides, name=f"{prefix}_proj_conv")
    return batch_norm(s, name=f"{prefix}_proj_bn")


def _basic_block(x, filters: int, strides: int, prefix: str):
    """Two 3x3 convolutions with a residual connection (He et al. 2016, Fig. 5 left)."""
    shortcut = _shortcut(x, filters, strides, prefix)
    y = conv(x, filters, 3, strides=strides, name=f"{prefix}_conv1")
    y = relu(batch_norm(y, name=f"{prefix}_bn1"), name=f"{prefix}_relu1")
    y = conv(y, filters, 3, name=f"{prefix}_conv2")
    y = batch_norm(y, name=f"{prefix}_bn2")
    y = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
    return relu(y, name=f"{prefix}_out")


def _bottleneck_block(x, filters: int, strides: int, prefix: str):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual (He et al. 2016, Fig. 5 right).

    The stride sits on the 3x3 convolution ("ResNet v1.5", as in torchvision and the Keras
    applications); the parameter count is the same as with the stride on the first 1x1.
    """
    out = filters * _BOTTLENECK_EXPANSION
    shortcut = _shortcut(x, out, strides, prefix)
    y = conv(x, filters, 1, name=f"{prefix}_conv1")
    y = relu(batch_norm(y, name=f"{prefix}_bn1"), name=f"{prefix}_relu1")
    y = conv(y, filters, 3, strides=strides, name=f"{prefix}_conv2")
    y = relu(batch_norm(y, name=f"{prefix}_bn2"), name=f"{prefix}_relu2")
    y = conv(y, out, 1, name=f"{prefix}_conv3")
    y = batch_norm(y, name=f"{prefix}_bn3")
    y = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
    return relu(y, name=f"{prefix}_out")


def cifar_resnet(
    depth: int = 20,
    num_classes: int = 10,
    width_multiplier: float = 1.0,
    input_shape: Sequence[int] = (32, 32, 3),
    name: str | None = None,
) -> keras.Model:
    """CIFAR ResNet of He et al. (CVPR 2016, Section 4.2), depth = 6n + 2.

    A 3x3 Conv2D with 16 channels, then three stages of n basic blocks with 16, 32 and 64 channels
    (times `width_multiplier`); the first block of stages 2 and 3 has stride 2. Shortcuts are
    option (B): 1x1 projections where the shape changes (see the module docstring). Global average
    pooling and a Dense layer give logits. ResNet-20 has about 0.27M parameters and ResNet-56 about
    0.86M. Mishra & Marr (ICLR 2018) use ResNet-20/32/44/56/110 as students and ResNet-110 as a
    teacher on CIFAR-10; widening (``width_multiplier``) is their WRPN-style knob.

    Args:
      depth: total number of weight layers, 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...).
      num_classes: size of the logits layer.
      width_multiplier: scales every stage's channel count (rounded, at least 1).
      input_shape: (height, width, channels) of one image.
      name: model name; default ``f"resnet{depth}"``.

    Returns:
      A functional ``keras.Model`` mapping images to logits ``[batch, num_classes]``.

    Raises:
      ValueError: `depth` is not 6n + 2 with n >= 1, or another argument is out of range.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"`depth` of a CIFAR ResNet must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, "
            f"...), received {depth!r}."
        )
    _checks.integer("cifar_resnet", "num_classes", num_classes, 1)
    _checks.real("cifar_resnet", "width_multiplier", width_multiplier, 0, low_open=True)
    shape = check_input_shape("cifar_resnet", input_shape)
    blocks = (depth - 2) // 6

    inputs = keras.Input(shape=shape, name="image")
    x = conv(inputs, scaled(16, width_multiplier), 3, name="conv1")
    x = relu(batch_norm(x, name="bn1"), name="relu1")
    for stage, base in enumerate((16, 32, 64), start=1):
        filters = scaled(base, width_multiplier)
        for block in range(1, blocks + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, strides, prefix=f"stage{stage}_block{block}")
    outputs = logits_head(x, num_classes)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def resnet20(num_classes: int = 10, **kwargs) -> keras.Model:
    """CIFAR ResNet-20 (He et al. 2016), ~0.27M parameters; see :func:`cifar_resnet`."""
    return cifar_resnet(20, num_classes=num_classes, **kwargs)


def resnet32(num_classes: int = 10, **kwargs) -> keras.Model:
    """CIFAR ResNet-32 (He et al. 2016), ~0.46M parameters; see :func:`cifar_resnet`."""
    return cifar_resnet(32, num_classes=num_classes, **kwargs)


def resnet44(num_classes: int = 10, **kwargs) -> keras.Model:
    """CIFAR ResNet-44 (He et al. 2016), ~0.66M parameters; see :func:`cifar_resnet`."""
    return cifar_resnet(44, num_classes=num_classes, **kwargs)


def resnet56(num_classes: int = 10, **kwargs) -> keras.Model:
    """CIFAR ResNet-56 (He et al. 2016), ~0.85M parameters; see :func:`cifar_resnet`."""
    return cifar_resnet(56, num_classes=num_classes, **kwargs)


def resnet110(num_classes: int = 10, **kwargs) -> keras.Model:
    """CIFAR ResNet-110 (He et al. 2016), ~1.7M parameters; see :func:`cifar_resnet`."""
    return cifar_resnet(110, num_classes=num_classes, **kwargs)


def imagenet_resnet(
    depth: int = 18,
    num_classes: int = 1000,
    width_multiplier: float = 1.0,
    input_shape: Sequence[int] = (224, 224, 3),
    name: str | None = None,
) -> keras.Model:
    """ImageNet ResNet of He et al. (CVPR 2016, Table 1).

    A 7x7/2 Conv2D with 64 channels, BN, ReLU and a 3x3/2 max pool, then four stages with 64, 128,
    256 and 512 base channels (times `width_multiplier`): basic blocks for depths 18/34, bottleneck
    blocks (output 4x base) for 50/101/152; stages 2-4 start with stride 2. Option-(B) projection
    shortcuts where the shape changes, global average pooling, Dense logits. Parameters: ResNet-18
    ~11.7M, ResNet-34 ~21.8M, ResNet-50 ~25.6M, ResNet-101 ~44.5M. Mishra & Marr (ICLR 2018)
    distil ResNet-18/34/50 students from ResNet-34/50/101/152 teachers on ImageNet.

    Args:
      depth: one of 18, 34, 50, 101, 152.
      num_classes: size of the logits layer.
      width_multiplier: scales every stage's channel count (rounded, at least 1).
      input_shape: (height, width, channels) of one image.
      name: model name; default ``f"resnet{depth}"``.

    Returns:
      A functional ``keras.Model`` mapping images to logits ``[batch, num_classes]``.

    Raises:
      ValueError: `depth` is not one of the supported depths, or another argument is out of range.
    """
    if isinstance(depth, bool) or depth not in IMAGENET_DEPTHS:
        raise ValueError(
            f"`depth` of an ImageNet ResNet must be one of {sorted(IMAGENET_DEPTHS)}, "
            f"received {depth!r}."
        )
    _checks.integer("imagenet_resnet", "num_classes", num_classes, 1)
    _checks.real("imagenet_resnet", "width_multiplier", width_multiplier, 0, low_open=True)
    shape = check_input_shape("imagenet_resnet", input_shape)
    kind, blocks = IMAGENET_DEPTHS[depth]
    block_fn = _basic_block if kind == "basic" else _bottleneck_block

    inputs = keras.Input(shape=shape, name="image")
    x = conv(inputs, scaled(64, width_multiplier), 7, strides=2, name="conv1")
    x = relu(batch_norm(x, name="bn1"), name="relu1")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    for stage, (base, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True), start=1):
        filters = scaled(base, width_multiplier)
        for block in range(1, n + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = block_fn(x, filters, strides, prefix=f"stage{stage}_block{block}")
    outputs = logits_head(x, num_classes)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def resnet18(num_classes: int = 1000, **kwargs) -> keras.Model:
    """ImageNet ResNet-18 (He et al. 2016), ~11.7M parameters; see :func:`imagenet_resnet`."""
    return imagenet_resnet(18, num_classes=num_classes, **kwargs)


def resnet34(num_classes: int = 1000, **kwargs) -> keras.Model:
    """ImageNet ResNet-34 (He et al. 2016), ~21.8M parameters; see :func:`imagenet_resnet`."""
    return imagenet_resnet(34, num_classes=num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> keras.Model:
    """ImageNet ResNet-50 (He et al. 2016), ~25.6M parameters; see :func:`imagenet_resnet`."""
    return imagenet_resnet(50, num_classes=num_classes, **kwargs)


def resnet101(num_classes: int = 1000, **kwargs) -> keras.Model:
    """ImageNet ResNet-101 (He et al. 2016), ~44.5M parameters; see :func:`imagenet_resnet`."""
    return imagenet_resnet(101, num_classes=num_classes, **kwargs)


def resnet152(num_classes: int = 1000, **kwargs) -> keras.Model:
    """ImageNet ResNet-152 (He et al. 2016), ~60.2M parameters; see :func:`imagenet_resnet`."""
    return imagenet_resnet(152, num_classes=num_classes, **kwargs)
