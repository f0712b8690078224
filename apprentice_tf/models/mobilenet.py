"""MobileNet v1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", 2017) with per-stage width, depth and block-type knobs.

The knobs let hardware-aware distillation (HAKD) enumerate student candidates whose latency is
then measured on the target; the default configuration is the paper's Table 1 network, grouped into
five stages by output width:

=====  ======  ======  ======
stage  width   blocks  stride
=====  ======  ======  ======
1      64      1       1
2      128     2       2
3      256     2       2
4      512     6       2
5      1024    2       2
=====  ======  ======  ======

preceded by a 3x3 Conv2D stem with 32 channels and followed by global average pooling and a Dense
layer returning logits (Mishra & Marr, "Apprentice", ICLR 2018, distil into such networks).

Small inputs (CIFAR): when the input is smaller than 128 pixels on a side, the stem uses stride 1
instead of 2, so the network has one fewer stride-2 layer than on ImageNet and a 32x32 image ends
at 2x2 (instead of 1x1) before pooling; this is the usual CIFAR port of MobileNet v1.
`stage_strides` overrides the stage strides.

Block types (per stage):

* ``"separable"`` (the paper's): 3x3 DepthwiseConv2D -> BN -> ReLU -> 1x1 Conv2D -> BN -> ReLU.
* ``"grouped"``: the depthwise convolution replaced by a 3x3 Conv2D with ``groups`` groups
  (ShuffleNet/ResNeXt-style), then the same 1x1 pointwise convolution.
* ``"standard"``: a full 3x3 Conv2D -> BN -> ReLU (the paper's baseline in Table 4).

Layer names: ``conv1``, ``stage2_block1_dw``, ``stage2_block1_pw_bn``, ..., ``logits``.
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
    "mobilenet_v1",
    "BLOCK_TYPES",
    "DEFAULT_STAGE_WIDTHS",
    "DEFAULT_STAGE_DEPTHS",
    "DEFAULT_STAGE_STRIDES",
]

BLOCK_TYPES: tuple[str, ...] = ("separable", "grouped", "standard")
DEFAULT_STAGE_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 1024)
DEFAULT_STAGE_DEPTHS: tuple[int, ...] = (1, 2, 2, 6, 2)
DEFAULT_STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2, 2)
_STEM_WIDTH = 32
_SMALL_INPUT = 128


def _separable_block(x, filters: int, strides: int, depth_multiplier: int, prefix: str):
    """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU (Howard et al. 2017, Fig. 3)."""
    y = keras.layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding="same",
        depth_multiplier=depth_multiplier,
        use_bias=False,
        depthwise_initializer="he_normal",
        name=f"{prefix}_dw",
    )(x)
    y = relu(batch_norm(y, name=f"{prefix}_dw_bn"), name=f"{prefix}_dw_relu")
    y = conv(y, filters, 1, name=f"{prefix}_pw")
    return relu(batch_norm(y, name=f"{prefix}_pw_bn"), name=f"{prefix}_pw_relu")


def _grouped_block(x, filters: int, strides: int, depth_multiplier: int, groups: int, prefix: str):
    """Grouped 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""
    channels = x.shape[-1]
    mid = channels * depth_multiplier
    if channels % groups or mid % groups:
        raise ValueError(
            f"`groups` must divide the input channels of every grouped block; block {prefix} has "
            f"{channels} input and {mid} output channels, received groups={groups}."
        )
    y = conv(x, mid, 3, strides=strides, groups=groups, name=f"{prefix}_gconv")
    y = relu(batch_norm(y, name=f"{prefix}_gconv_bn"), name=f"{prefix}_gconv_relu")
    y = conv(y, filters, 1, name=f"{prefix}_pw")
    return relu(batch_norm(y, name=f"{prefix}_pw_bn"), name=f"{prefix}_pw_relu")


def _standard_block(x, filters: int, strides: int, prefix: str):
    """Full 3x3 Conv2D -> BN -> ReLU."""
    y = conv(x, filters, 3, strides=strides, name=f"{prefix}_conv")
    return relu(batch_norm(y, name=f"{prefix}_bn"), name=f"{prefix}_relu")


def _per_stage(value, argument: str, n: int, default: Sequence) -> tuple:
    """Expand a per-stage argument (None, a scalar, or a sequence of length n) to a tuple."""
    if value is None:
        return tuple(default)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return (value,) * n
    if not isinstance(value, Sequence) or len(value) != n:
        raise ValueError(
            f"`{argument}` must have one entry per stage ({n} stages), received {value!r}."
        )
    return tuple(value)


def mobilenet_v1(
    num_classes: int = 10,
    width_multiplier: float = 1.0,
    depth_multiplier: int = 1,
    input_shape: Sequence[int] = (32, 32, 3),
    stage_widths: Sequence[int] | None = None,
    stage_depths: Sequence[int] | None = None,
    stage_strides: Sequence[int] | None = None,
    block_type: str | Sequence[str] = "separable",
    groups: int = 2,
    name: str | None = None,
) -> keras.Model:
    """MobileNet v1 of Howard et al. (2017) with per-stage knobs; see the module docstring.

    With the defaults and ``input_shape=(224, 224, 3)``, ``num_classes=1000`` this is the paper's
    1.0 MobileNet-224 (4.2M parameters). A depthwise-separable block costs
    ``H W (9 M + M N)`` multiply-adds instead of ``9 H W M N`` for a standard 3x3 convolution
    (M input, N output channels).

    Args:
      num_classes: size of the logits layer.
      width_multiplier: the paper's alpha: scales the stem and every stage width (rounded, at
        least 1).
      depth_multiplier: channel multiplier of each depthwise (or grouped) 3x3 convolution
        (Keras's ``DepthwiseConv2D(depth_multiplier=...)``); ignored by ``"standard"`` blocks.
      input_shape: (height, width, channels). Below 128 pixels on a side the stem has stride 1.
      stage_widths: base output channels of each stage (before `width_multiplier`); default
        (64, 128, 256, 512, 1024). Its length sets the number of stages.
      stage_depths: blocks per stage; default (1, 2, 2, 6, 2) for the default widths.
      stage_strides: stride of each stage's first block; default (1, 2, 2, 2, 2).
      block_type: one of ``"separable"``, ``"grouped"``, ``"standard"``, or one per stage.
      groups: number of groups of ``"grouped"`` blocks; must divide their channel counts.
      name: model name; default ``"mobilenet_v1"``.

    Returns:
      A functional ``keras.Model`` mapping images to logits ``[batch, num_classes]``.

    Raises:
      ValueError: per-stage arguments of different lengths, an unknown block type, `groups` not
        dividing a grouped block's channels, or another argument out of range.
    """
    _checks.integer("mobilenet_v1", "num_classes", num_classes, 1)
    _checks.real("mobilenet_v1", "width_multiplier", width_multiplier, 0, low_open=True)
    _checks.integer("mobilenet_v1", "depth_multiplier", depth_multiplier, 1)
    _checks.integer("mobilenet_v1", "groups", groups, 1)
    shape = check_input_shape("mobilenet_v1", input_shape)
    if stage_widths is None:
        widths = DEFAULT_STAGE_WIDTHS
    elif isinstance(stage_widths, Sequence) and not isinstance(stage_widths, str) and stage_widths:
        widths = tuple(stage_widths)
    else:
        raise ValueError(
            f"`stage_widths` must be a non-empty sequence of channel counts, one per stage, "
            f"received {stage_widths!r}."
        )
    n = len(widths)
    if stage_depths is None and n != len(DEFAULT_STAGE_DEPTHS):
        raise ValueError(
            f"`stage_depths` must be given when `stage_widths` has {n} stages instead of "
            f"{len(DEFAULT_STAGE_DEPTHS)}; received stage_widths={stage_widths!r}."
        )
    depths = _per_stage(stage_depths, "stage_depths", n, DEFAULT_STAGE_DEPTHS)
    strides = _per_stage(stage_strides, "stage_strides", n, (DEFAULT_STAGE_STRIDES + (1,) * n)[:n])
    types = _per_stage(block_type, "block_type", n, ())
    for argument, values in (("stage_widths", widths), ("stage_depths", depths)):
        for v in values:
            _checks.integer("mobilenet_v1", argument, v, 1)
    for s in strides:
        if s not in (1, 2):
            raise ValueError(f"`stage_strides` entries must be 1 or 2, received {strides!r}.")
    for t in types:
        if t not in BLOCK_TYPES:
            raise ValueError(f"`block_type` must be one of {BLOCK_TYPES}, received {block_type!r}.")

    stem_stride = 1 if min(shape[:2]) < _SMALL_INPUT else 2
    inputs = keras.Input(shape=shape, name="image")
    x = conv(inputs, scaled(_STEM_WIDTH, width_multiplier), 3, strides=stem_stride, name="conv1")
    x = relu(batch_norm(x, name="bn1"), name="relu1")
    for stage, (width, depth, stride, kind) in enumerate(
        zip(widths, depths, strides, types, strict=True), start=1
    ):
        filters = scaled(width, width_multiplier)
        for block in range(1, depth + 1):
            prefix = f"stage{stage}_block{block}"
            s = stride if block == 1 else 1
            if kind == "separable":
                x = _separable_block(x, filters, s, depth_multiplier, prefix)
            elif kind == "grouped":
                x = _grouped_block(x, filters, s, depth_multiplier, groups, prefix)
            else:
                x = _standard_block(x, filters, s, prefix)
    outputs = logits_head(x, num_classes)
    return keras.Model(inputs, outputs, name=name or "mobilenet_v1")
