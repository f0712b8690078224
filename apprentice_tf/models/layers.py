"""Blocks every builder shares, so the quantizer, which keeps the first Conv2D and the last Dense
in float, sees the same structure in every network (resnet.py, mobilenet.py, densenet.py) and in
the single blocks `apprentice_tf.hardware` times.

Convolutions have no bias (a BatchNorm follows) and He-normal initialisation (He et al., ICCV
2015); BatchNorm uses momentum 0.9 and epsilon 1e-5 as in the papers' reference code; the last
layer is a Dense returning logits (no softmax).
"""

from __future__ import annotations

from collections.abc import Sequence

from apprentice_tf import _checks
from apprentice_tf.compat import keras

__all__ = [
    "BN_MOMENTUM",
    "BN_EPSILON",
    "conv",
    "batch_norm",
    "relu",
    "logits_head",
    "scaled",
    "check_input_shape",
]

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv(x, filters: int, kernel_size: int, strides: int = 1, name: str = "", groups: int = 1):
    """A bias-free, He-normal, 'same'-padded Conv2D applied to `x`."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        groups=groups,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def batch_norm(x, name: str):
    """BatchNormalization with the papers' momentum/epsilon."""
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def relu(x, name: str):
    """ReLU as its own named layer."""
    return keras.layers.ReLU(name=name)(x)


def logits_head(x, num_classes: int, name: str = "logits"):
    """Global average pooling followed by a Dense layer producing logits.

    The logits layer computes in float32 whatever the global dtype policy (a ``mixed_bfloat16``
    network still returns float32 logits, so the softmax cross-entropy stays exact enough).
    """
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Dense(
        num_classes, kernel_initializer="he_normal", dtype="float32", name=name
    )(x)


def scaled(channels: int, width_multiplier: float) -> int:
    """round(channels * width_multiplier), at least 1."""
    return max(1, int(round(channels * width_multiplier)))


def check_input_shape(owner: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """`input_shape` as a tuple, or ValueError unless it is (height, width, channels) of
    positive ints; `owner` is the builder the user called."""
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if len(shape) != 3 or not all(_checks.is_integer(d) and d >= 1 for d in shape):
        raise _checks.refuse(
            owner, "input_shape", input_shape, "(height, width, channels) with positive integers"
        )
    return shape  # type: ignore[return-value]
