"""Convolutional blocks: the unit Turner et al. (2018) time over a channel grid (`BlockSpec`), and
the decomposition of a network into the blocks of its convolutions (`network_blocks`)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

from apprentice_tf import _checks
from apprentice_tf.compat import keras
from apprentice_tf.models.layers import batch_norm, conv, relu

__all__ = ["OPS", "BlockSpec", "network_blocks"]

#: Block types of a `BlockSpec` (Turner et al. sweep standard, depthwise-separable and grouped).
OPS: tuple[str, ...] = ("conv", "separable", "grouped")
#: `quantize` settings of `profile`: float, post-training full-integer int8, or quantization-aware


# ----------------------------------------------------------------------------------------------
# Blocks


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One convolutional block of a student, the unit Turner et al. time over a channel grid.

    ``op`` selects the block (all convolutions bias-free, 'same' padding, BN momentum 0.9):

    * ``"conv"``: k x k Conv2D(N) -> BN -> ReLU, ``k^2 M N H' W'`` multiply-adds;
    * ``"separable"``: k x k DepthwiseConv2D -> BN -> ReLU -> 1x1 Conv2D(N) -> BN -> ReLU
      (Howard et al. 2017), ``(k^2 M + M N) H' W'``;
    * ``"grouped"``: k x k Conv2D(N, groups=g) -> BN -> ReLU, ``k^2 M N H' W' / g``;

    with M = `in_channels`, N = `out_channels`, H' = W' = ceil(`input_size` / `stride`).

    Attributes:
      op: one of `OPS`.
      input_size: height = width of the block's input.
      in_channels: M.
      out_channels: N.
      stride: stride of the first (k x k) convolution.
      kernel_size: k.
      groups: g for ``"grouped"`` (default 2; must divide M and N); 1 for the other ops.
    """

    op: str
    input_size: int
    in_channels: int
    out_channels: int
    stride: int = 1
    kernel_size: int = 3
    groups: int | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise _checks.refuse("BlockSpec", "op", self.op, f"one of {OPS}")
        for argument in ("input_size", "in_channels", "out_channels", "stride", "kernel_size"):
            _checks.integer("BlockSpec", argument, getattr(self, argument), 1)
        groups = self.groups
        if self.op == "grouped":
            groups = 2 if groups is None else groups
            _checks.integer("BlockSpec", "groups", groups, 2)
            if self.in_channels % groups or self.out_channels % groups:
                raise ValueError(
                    f"BlockSpec: `groups` must divide in_channels and out_channels of a grouped "
                    f"block, received groups={groups} with in_channels={self.in_channels}, "
                    f"out_channels={self.out_channels}."
                )
        elif groups not in (None, 1):
            raise _checks.refuse("BlockSpec", "groups", groups, f"1 or None for op={self.op!r}")
        else:
            groups = 1
        object.__setattr__(self, "groups", int(groups))

    @property
    def key(self) -> str:
        """A stable string naming the block's op and shape, e.g. ``conv_k3_s1_32x32x16-32``."""
        op = f"grouped_g{self.groups}" if self.op == "grouped" else self.op
        size = self.input_size
        return (
            f"{op}_k{self.kernel_size}_s{self.stride}_{size}x{size}x{self.in_channels}"
            f"-{self.out_channels}"
        )

    @property
    def output_size(self) -> int:
        """ceil(input_size / stride), the height = width of the block's output."""
        return -(-self.input_size // self.stride)

    @property
    def macs(self) -> int:
        """Multiply-adds of the block's convolutions (see the class docstring)."""
        spatial = self.output_size**2
        k2, m, n = self.kernel_size**2, self.in_channels, self.out_channels
        if self.op == "separable":
            return spatial * (k2 * m + m * n)
        return spatial * k2 * m * n // self.groups

    def build(self) -> keras.Model:
        """The block as a functional tf_keras model mapping [B, H, H, M] to [B, H', H', N]."""
        inputs = keras.Input((self.input_size, self.input_size, self.in_channels), name="x")
        k, s = self.kernel_size, self.stride
        if self.op == "separable":
            x = keras.layers.DepthwiseConv2D(
                k,
                strides=s,
                padding="same",
                use_bias=False,
                depthwise_initializer="he_normal",
                name="dw",
            )(inputs)
            x = relu(batch_norm(x, name="dw_bn"), name="dw_relu")
            x = conv(x, self.out_channels, 1, name="pw")
            x = relu(batch_norm(x, name="pw_bn"), name="pw_relu")
        else:
            name = "gconv" if self.op == "grouped" else "conv"
            x = conv(inputs, self.out_channels, k, strides=s, groups=self.groups, name=name)
            x = relu(batch_norm(x, name=f"{name}_bn"), name=f"{name}_relu")
        return keras.Model(inputs, x, name=re.sub(r"[^A-Za-z0-9_.-]", "_", self.key))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (`BlockSpec(**d)` rebuilds it)."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Networks


_PASS_THROUGH = (
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.Activation,
)


def _unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.layer if isinstance(layer, keras.layers.Wrapper) else layer


def _consumers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    return [node.outbound_layer for node in layer._outbound_nodes]  # noqa: SLF001


def _square(shape: Sequence[int | None]) -> int:
    h, w = shape[1], shape[2]
    return int(h) if h == w else round(math.sqrt(int(h) * int(w)))


def _pointwise_after(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The 1x1 Conv2D reached from `layer` through single-consumer BN/ReLU layers, if any."""
    current = layer
    while True:
        consumers = _consumers(current)
        if len(consumers) != 1:
            return None
        current = consumers[0]
        inner = _unwrap(current)
        if isinstance(inner, _PASS_THROUGH):
            continue
        if (
            type(inner) is keras.layers.Conv2D
            and tuple(inner.kernel_size) == (1, 1)
            and tuple(inner.strides) == (1, 1)
            and inner.groups == 1
        ):
            return current
        return None


def network_blocks(model: keras.Model) -> list[tuple[str, BlockSpec]]:
    """Decompose a network into the `BlockSpec` of each of its convolutions.

    Every Conv2D becomes a ``"conv"`` (or ``"grouped"``, groups > 1) block with the layer's input
    size, channels, stride and kernel; a DepthwiseConv2D (multiplier 1) followed through
    BN/ReLU by a 1x1 Conv2D becomes one ``"separable"`` block; any other DepthwiseConv2D a
    ``"grouped"`` block with groups = input channels. Dense layers, pooling, Add and Concatenate
    are not counted. Non-square inputs use sqrt(H W) as the size.

    Returns:
      [(layer name, BlockSpec)], in model order (a separable block is named by its depthwise
      layer).
    """
    _checks.keras_object("network_blocks", "model", model, keras.Model)
    blocks: list[tuple[str, BlockSpec]] = []
    merged: set[str] = set()
    for layer in model.layers:
        inner = _unwrap(layer)
        if layer.name in merged:
            continue
        if isinstance(inner, keras.layers.DepthwiseConv2D):
            in_shape = layer.input_shape
            channels = int(in_shape[-1])
            pointwise = _pointwise_after(layer) if inner.depth_multiplier == 1 else None
            if pointwise is not None:
                merged.add(pointwise.name)
                spec = BlockSpec(
                    "separable",
                    _square(in_shape),
                    channels,
                    int(_unwrap(pointwise).filters),
                    stride=int(inner.strides[0]),
                    kernel_size=int(inner.kernel_size[0]),
                )
            else:
                # A lone depthwise convolution: a grouped convolution with one group per channel.
                spec = BlockSpec(
                    "grouped" if channels > 1 else "conv",
                    _square(in_shape),
                    channels,
                    channels * int(inner.depth_multiplier),
                    stride=int(inner.strides[0]),
                    kernel_size=int(inner.kernel_size[0]),
                    groups=channels if channels > 1 else None,
                )
            blocks.append((layer.name, spec))
        elif type(inner) is keras.layers.Conv2D:
            in_shape = layer.input_shape
            grouped = inner.groups > 1
            spec = BlockSpec(
                "grouped" if grouped else "conv",
                _square(in_shape),
                int(in_shape[-1]),
                int(inner.filters),
                stride=int(inner.strides[0]),
                kernel_size=int(inner.kernel_size[0]),
                groups=int(inner.groups) if grouped else None,
            )
            blocks.append((layer.name, spec))
    return blocks
