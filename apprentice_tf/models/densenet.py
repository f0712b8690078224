"""DenseNet-BC for CIFAR (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

A teacher/student family for the distillation experiments of Mishra & Marr, "Apprentice" (ICLR
2018). DenseNet uses pre-activation ordering (BN -> ReLU -> Conv); layers are named
``conv1``, ``block2_layer5_conv1``, ``transition1_conv``, ``final_bn``, ``logits``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from apprentice_tf import _checks
from apprentice_tf.compat import keras
from apprentice_tf.models.layers import (
    batch_norm,
    check_input_shape,
    conv,
    logits_head,
    relu,
)

__all__ = ["densenet_bc", "densenet_bc_100", "densenet_bc_250", "densenet_bc_190"]

_BOTTLENECK_WIDTH = 4  # the 1x1 bottleneck has 4k channels


def _dense_layer(x, growth_rate: int, prefix: str):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), concatenated to the input (DenseNet-B)."""
    y = relu(batch_norm(x, name=f"{prefix}_bn1"), name=f"{prefix}_relu1")
    y = conv(y, _BOTTLENECK_WIDTH * growth_rate, 1, name=f"{prefix}_conv1")
    y = relu(batch_norm(y, name=f"{prefix}_bn2"), name=f"{prefix}_relu2")
    y = conv(y, growth_rate, 3, name=f"{prefix}_conv2")
    return keras.layers.Concatenate(name=f"{prefix}_concat")([x, y])


def _transition(x, compression: float, prefix: str):
    """BN-ReLU-Conv1x1(floor(theta * m))-AvgPool2x2 (DenseNet-C)."""
    channels = max(1, int(math.floor(compression * x.shape[-1])))
    y = relu(batch_norm(x, name=f"{prefix}_bn"), name=f"{prefix}_relu")
    y = conv(y, channels, 1, name=f"{prefix}_conv")
    return keras.layers.AveragePooling2D(2, strides=2, name=f"{prefix}_pool")(y)


def densenet_bc(
    depth: int = 100,
    growth_rate: int = 12,
    compression: float = 0.5,
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    name: str | None = None,
) -> keras.Model:
    """CIFAR DenseNet-BC of Huang et al. (CVPR 2017, Section 3 and Table 2).

    A 3x3 Conv2D with 2k channels (k = `growth_rate`), then three dense blocks of
    n = (depth - 4) / 6 bottleneck layers each (BN-ReLU-Conv1x1 with 4k channels, BN-ReLU-Conv3x3
    with k channels, output concatenated to the input), separated by transition layers
    (BN-ReLU-Conv1x1 to floor(theta * m) channels, 2x2 average pool, theta = `compression`); a
    final BN-ReLU, global average pooling and a Dense layer that returns logits. DenseNet-BC-100
    with k = 12 has about 0.8M parameters.

    Args:
      depth: 6n + 4 with n >= 1 (e.g. 100, 190, 250); each bottleneck layer counts as two.
      growth_rate: k, channels each dense layer adds.
      compression: theta in (0, 1], the fraction of channels a transition keeps.
      num_classes: size of the logits layer.
      input_shape: (height, width, channels) of one image.
      name: model name; default ``f"densenet_bc_{depth}_k{growth_rate}"``.

    Returns:
      A functional ``keras.Model`` mapping images to logits ``[batch, num_classes]``.

    Raises:
      ValueError: `depth` is not 6n + 4, `compression` not in (0, 1], or another argument is out
        of range.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(
            "`depth` of a DenseNet-BC must be 6n + 4 with n >= 1 (e.g. 40, 100, 190, 250), "
            f"received {depth!r}."
        )
    _checks.integer("densenet_bc", "growth_rate", growth_rate, 1)
    if (
        isinstance(compression, bool)
        or not isinstance(compression, (int, float))
        or not 0 < compression <= 1
    ):
        raise ValueError(f"`compression` must be in (0, 1], received {compression!r}.")
    _checks.integer("densenet_bc", "num_classes", num_classes, 1)
    shape = check_input_shape("densenet_bc", input_shape)
    layers_per_block = (depth - 4) // 6

    inputs = keras.Input(shape=shape, name="image")
    x = conv(inputs, 2 * growth_rate, 3, name="conv1")
    for block in range(1, 4):
        for layer in range(1, layers_per_block + 1):
            x = _dense_layer(x, growth_rate, prefix=f"block{block}_layer{layer}")
        if block < 3:
            x = _transition(x, compression, prefix=f"transition{block}")
    x = relu(batch_norm(x, name="final_bn"), name="final_relu")
    outputs = logits_head(x, num_classes)
    return keras.Model(inputs, outputs, name=name or f"densenet_bc_{depth}_k{growth_rate}")


def densenet_bc_100(num_classes: int = 10, **kwargs) -> keras.Model:
    """DenseNet-BC-100, k = 12 (Huang et al. 2017), ~0.8M parameters; see :func:`densenet_bc`."""
    return densenet_bc(100, growth_rate=12, num_classes=num_classes, **kwargs)


def densenet_bc_250(num_classes: int = 10, **kwargs) -> keras.Model:
    """DenseNet-BC-250, k = 24 (Huang et al. 2017), ~15.3M parameters; see :func:`densenet_bc`."""
    return densenet_bc(250, growth_rate=24, num_classes=num_classes, **kwargs)


def densenet_bc_190(num_classes: int = 10, **kwargs) -> keras.Model:
    """DenseNet-BC-190, k = 40 (Huang et al. 2017), ~25.6M parameters; see :func:`densenet_bc`."""
    return densenet_bc(190, growth_rate=40, num_classes=num_classes, **kwargs)
