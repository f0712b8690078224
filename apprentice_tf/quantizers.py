"""Low-precision maths as plain functions, and the tfmot `Quantizer` classes that apply them.

The functions hold the maths and their straight-through gradients (Bengio et al. 2013); the classes
only hold settings, follow tfmot's `Quantizer` contract (`build` creates variables on the wrapper
layer, `__call__` has no side effects on `self`) and end in TensorFlow's `FakeQuant*` ops, which is
what the TFLite converter recognises and turns into integer tensors.

Weights (Mishra & Marr 2018, METHODS.md §1), per output channel c:

* ternary (Li & Liu 2016, TWN): Δ_c = t·mean|W_c| (``threshold_rule="mean"``, t = 0.7) or
  Δ_c = t·max|W_c| (``threshold_rule="max"``, TTQ uses t = 0.05);
  α_c = mean{|w| : |w| > Δ_c}; w_t = α_c·sign(w)·[|w| > Δ_c].
* k-bit uniform: s_c = max|W_c|, L = 2^(k−1) − 1, w_q = s_c·round(clip(w/s_c, −1, 1)·L)/L
  (2L + 1 levels: 3 for k = 2, 15 for k = 4, 255 for k = 8).

Activations: x_q = round(clip(x, 0, m)·(2^k − 1)/m)·m/(2^k − 1), m a moving average of the batch
maximum (tfmot's moving-average range tracking).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow_model_optimization as tfmot

# tfmot's moving-average range op, which tfmot's MovingAverageQuantizer calls with a fixed decay
# of 0.999; called here with that default or the decay `range_decay` sets (calibration).
from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

from apprentice_tf import _checks
from apprentice_tf.compat import keras, tf

__all__ = [
    "ternarize",
    "quantize_uniform",
    "quantize_activation",
    "channel_reduce_axes",
    "TernaryWeightQuantizer",
    "UniformWeightQuantizer",
    "ActivationQuantizer",
]

THRESHOLD_RULES = ("mean", "max")
_EPSILON = 1e-12

#: tfmot's decay of the moving-average activation ranges.
RANGE_EMA_DECAY = 0.999
_range_decay_override: list[float] = []


@contextlib.contextmanager
def range_decay(decay: float) -> Iterator[None]:
    """Within the block, every `ActivationQuantizer` called eagerly in training mode moves its
    range with this decay d instead of 0.999: m ← d·m + (1 − d)·(batch maximum).

    d = (k − 1)/k at the k-th batch makes m the mean of the first k batch maxima
    (`apprentice_tf.quantize.calibrate`). A graph traced inside the block keeps d as a constant.
    """
    _checks.real("range_decay", "decay", decay, 0.0, 1.0)
    _range_decay_override.append(float(decay))
    try:
        yield
    finally:
        _range_decay_override.pop()


def channel_reduce_axes(rank: int, per_channel: bool) -> list[int]:
    """Axes to reduce over so that one statistic remains per output channel (the last axis).

    Conv2D kernels are (h, w, in, out), Dense kernels (in, out) and DepthwiseConv2D kernels
    (h, w, in, multiplier) once flattened to (h, w, 1, in·multiplier) by the caller.
    """
    return list(range(rank - 1)) if per_channel else list(range(rank))


def _straight_through(x: tf.Tensor, quantize: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Return `quantize(x)` exactly in the forward pass, with the gradient dq/dx = 1 (STE)."""

    @tf.custom_gradient
    def forward(value: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        return quantize(value), lambda upstream: upstream

    return forward(x)


def ternarize(
    w: tf.Tensor,
    threshold: float = 0.7,
    threshold_rule: str = "mean",
    per_channel: bool = True,
) -> tf.Tensor:
    """Ternarize weights to {−α_c, 0, +α_c} per output channel (last axis).

    Δ_c = threshold·mean|W_c| for ``threshold_rule="mean"`` (TWN, Li & Liu 2016) or
    threshold·max|W_c| for ``"max"`` (TTQ, Zhu et al. 2017); α_c = mean{|w| : |w| > Δ_c}.
    Gradient: straight-through, d w_t / d w = 1 (as TWN trains the latent float weights).

    Args:
      w: a kernel whose last axis is the output channel.
      threshold: t in the rules above, > 0.
      threshold_rule: "mean" or "max".
      per_channel: one (Δ, α) per output channel, or one for the whole tensor.

    Returns:
      A tensor of w's shape holding at most three distinct values per output channel.
    """
    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(
            f"`threshold_rule` must be one of {THRESHOLD_RULES}, received {threshold_rule!r}."
        )
    axes = channel_reduce_axes(w.shape.rank, per_channel)

    def quantize(value: tf.Tensor) -> tf.Tensor:
        magnitude = tf.abs(value)
        reduce = tf.reduce_mean if threshold_rule == "mean" else tf.reduce_max
        delta = threshold * reduce(magnitude, axis=axes, keepdims=True)
        kept = tf.cast(magnitude > delta, value.dtype)
        alpha = tf.reduce_sum(magnitude * kept, axis=axes, keepdims=True) / tf.maximum(
            tf.reduce_sum(kept, axis=axes, keepdims=True), 1.0
        )
        return alpha * tf.sign(value) * kept

    return _straight_through(w, quantize)


def quantize_uniform(w: tf.Tensor, num_bits: int = 4, per_channel: bool = True) -> tf.Tensor:
    """Symmetric uniform quantization with 2^(k−1) − 1 positive levels per output channel.

    s_c = max|W_c|, L = 2^(k−1) − 1, w_q = s_c·round(clip(w/s_c, −1, 1)·L)/L.
    Gradient: straight-through, d w_q / d w = 1 inside [−s_c, s_c] (everything, as s_c = max|W_c|).

    Args:
      w: a kernel whose last axis is the output channel.
      num_bits: k, 2 to 8.
      per_channel: one scale per output channel, or one for the whole tensor.
    """
    levels = float(2 ** (num_bits - 1) - 1)
    axes = channel_reduce_axes(w.shape.rank, per_channel)

    def quantize(value: tf.Tensor) -> tf.Tensor:
        scale = tf.maximum(tf.reduce_max(tf.abs(value), axis=axes, keepdims=True), _EPSILON)
        return scale * tf.round(tf.clip_by_value(value / scale, -1.0, 1.0) * levels) / levels

    return _straight_through(w, quantize)


def quantize_activation(x: tf.Tensor, num_bits: int, clip_max: tf.Tensor | float) -> tf.Tensor:
    """Unsigned uniform activation quantization: round(clip(x, 0, m)·(2^k − 1)/m)·m/(2^k − 1).

    TensorFlow's `fake_quant_with_min_max_vars` computes exactly this for min = 0 and carries the
    straight-through gradient: 1 for 0 ≤ x ≤ m, 0 outside (and gradients for m itself).
    """
    return tf.quantization.fake_quant_with_min_max_vars(
        x, 0.0, clip_max, num_bits=num_bits, narrow_range=False
    )


class SettingsEquality:
    """Config round trip, equality, hashing and repr for objects defined by `get_config()`."""

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({settings})"


class _SettingsQuantizer(SettingsEquality, tfmot.quantization.keras.quantizers.Quantizer):
    """A tfmot Quantizer defined entirely by its settings."""


class _SymmetricWeightQuantizer(_SettingsQuantizer):
    """Puts weights on a symmetric grid and marks the grid for the TFLite converter.

    Subclasses give `quantize(w)`, returning values a_c·j/L, j ∈ [−L, L], L = 2^(k−1) − 1
    (k = `level_bits`; a_c = max|q_c| per output channel). The result goes through a narrow-range
    FakeQuant op whose grid contains those values, so they pass unchanged and the converter
    stores the kernel as integers:

    * int8 storage (default): 8-bit grid b_c·i/127 with b_c = 127·a_c/(L·m), m = ⌊127/L⌋, so the
      levels sit at i = m·j (ternary: ±127 and 0). LiteRT runs these with its int8 kernels.
    * ``int4_storage`` (k ≤ 4): k-bit grid with b_c = a_c, which the TF 2.21 converter stores as
      INT4 (half the bytes; LiteRT's INT4 conv kernels were about 7× slower than int8 here).

    The converter needs b_c as a constant, so a_c is kept in a non-trainable variable on the
    wrapper layer: refreshed from the weights at every training step (tfmot's "last value" rule)
    and read at inference.

    With `per_tensor_storage` (for Dense kernels: the TF 2.21 converter rejects per-channel
    FakeQuant on fully-connected kernels, "tfl.transpose op has mismatched quantized axes"), the
    marker is one int8 grid max|q|·i/127 for the whole tensor: each channel keeps its 2L + 1
    values, with a_c·j/L rounded to that grid (a relative error below 1/254 of the largest a_c).
    """

    level_bits: int
    per_channel: bool
    per_tensor_storage: bool
    int4_storage: bool

    @property
    def _marker_per_channel(self) -> bool:
        return self.per_channel and not self.per_tensor_storage

    def quantize(self, w: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def build(self, tensor_shape: tf.TensorShape, name: str, layer: keras.layers.Layer) -> dict:
        shape = (tensor_shape[-1],) if self._marker_per_channel else ()
        bound = layer.add_weight(
            f"{name}_bound",
            shape=shape,
            initializer=keras.initializers.Ones(),
            trainable=False,
        )
        return {"bound": bound}

    def _marker(self) -> tuple[int, float]:
        """(FakeQuant bits, bound/a_c) of the storage grid."""
        if self.per_tensor_storage or not self.per_channel:
            return (self.level_bits if not self.per_channel else 8), 1.0
        if self.int4_storage and self.level_bits <= 4:
            return self.level_bits, 1.0
        levels = 2 ** (self.level_bits - 1) - 1
        return 8, 127.0 / (levels * (127 // levels))

    def __call__(self, inputs: tf.Tensor, training: bool, weights: dict, **kwargs) -> tf.Tensor:
        q = self.quantize(inputs)
        if training:
            axes = channel_reduce_axes(q.shape.rank, self._marker_per_channel)
            bound = tf.maximum(tf.reduce_max(tf.abs(q), axis=axes), _EPSILON)
            weights["bound"].assign(tf.stop_gradient(bound))
        else:
            bound = weights["bound"]
        bits, widen = self._marker()
        bound = tf.stop_gradient(bound) * widen
        if self._marker_per_channel:
            return tf.quantization.fake_quant_with_min_max_vars_per_channel(
                q, -bound, bound, num_bits=bits, narrow_range=True
            )
        return tf.quantization.fake_quant_with_min_max_vars(
            q, -bound, bound, num_bits=bits, narrow_range=True
        )


@keras.utils.register_keras_serializable(package="apprentice_tf")
class TernaryWeightQuantizer(_SymmetricWeightQuantizer):
    """Ternary weights {−α_c, 0, +α_c} per output channel (TWN rule by default).

    See `ternarize` for the maths. Δ and α are recomputed from the latent float weights at every
    call; the wrapper layer keeps α for the TFLite converter (see `_SymmetricWeightQuantizer`).

    Args:
      threshold: t in Δ_c = t·mean|W_c| (or t·max|W_c|); 0.7 is TWN's value.
      per_channel: one (Δ, α) per output channel (default) or per tensor.
      threshold_rule: "mean" (TWN) or "max" (TTQ-style, use threshold≈0.05).
      per_tensor_storage: mark the levels on one int8 grid per tensor for TFLite (Dense kernels).
      int4_storage: let TFLite store the kernel as INT4 instead of int8.
    """

    def __init__(
        self,
        threshold: float = 0.7,
        per_channel: bool = True,
        threshold_rule: str = "mean",
        *,
        per_tensor_storage: bool = False,
        int4_storage: bool = False,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError(
                f"TernaryWeightQuantizer: `threshold` must be a number, received {threshold!r}."
            )
        if not 0.0 < threshold < (1.0 if threshold_rule == "max" else 2.0):
            raise ValueError(
                "TernaryWeightQuantizer: `threshold` must be in (0, 2) for the 'mean' rule and "
                f"(0, 1) for the 'max' rule, received {threshold!r} with {threshold_rule!r}."
            )
        if threshold_rule not in THRESHOLD_RULES:
            raise ValueError(
                f"TernaryWeightQuantizer: `threshold_rule` must be one of {THRESHOLD_RULES}, "
                f"received {threshold_rule!r}."
            )
        self.threshold = float(threshold)
        self.per_channel = bool(per_channel)
        self.threshold_rule = threshold_rule
        self.per_tensor_storage = bool(per_tensor_storage)
        self.int4_storage = bool(int4_storage)

    level_bits = 2

    def quantize(self, w: tf.Tensor) -> tf.Tensor:
        return ternarize(w, self.threshold, self.threshold_rule, self.per_channel)

    def get_config(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "per_channel": self.per_channel,
            "threshold_rule": self.threshold_rule,
            "per_tensor_storage": self.per_tensor_storage,
            "int4_storage": self.int4_storage,
        }


@keras.utils.register_keras_serializable(package="apprentice_tf")
class UniformWeightQuantizer(_SymmetricWeightQuantizer):
    """Symmetric k-bit weights with 2^(k−1) − 1 positive levels per output channel.

    See `quantize_uniform` for the maths; 4 bits give 15 levels, 2 bits give 3 (max-scaled, unlike
    TWN's mean-scaled ternary), 8 bits give 255.

    Args:
      num_bits: k, 2 to 8.
      per_channel: one scale per output channel (default) or per tensor.
      per_tensor_storage: mark the levels on one int8 grid per tensor for TFLite (Dense kernels).
      int4_storage: let TFLite store the kernel as INT4 instead of int8 (num_bits ≤ 4).
    """

    def __init__(
        self,
        num_bits: int = 4,
        per_channel: bool = True,
        *,
        per_tensor_storage: bool = False,
        int4_storage: bool = False,
    ) -> None:
        _checks.integer("UniformWeightQuantizer", "num_bits", num_bits, 2, 8)
        self.num_bits = num_bits
        self.per_channel = bool(per_channel)
        self.per_tensor_storage = bool(per_tensor_storage)
        self.int4_storage = bool(int4_storage)

    @property
    def level_bits(self) -> int:
        return self.num_bits

    def quantize(self, w: tf.Tensor) -> tf.Tensor:
        return quantize_uniform(w, self.num_bits, self.per_channel)

    def get_config(self) -> dict[str, Any]:
        return {
            "num_bits": self.num_bits,
            "per_channel": self.per_channel,
            "per_tensor_storage": self.per_tensor_storage,
            "int4_storage": self.int4_storage,
        }


@keras.utils.register_keras_serializable(package="apprentice_tf")
class ActivationQuantizer(_SettingsQuantizer):
    """k-bit activations on [min, m], the range tracked by a moving average (tfmot's rule).

    After a ReLU the tracked minimum is 0, so this is `quantize_activation` with m the moving
    average (decay 0.999) of the batch maximum; the range variables live on the wrapper layer and
    are saved with the model. Gradient: straight-through inside the range, zero outside.

    Args:
      num_bits: k, 2 to 8 (the paper uses 8 or 4).
    """

    def __init__(self, num_bits: int = 8) -> None:
        _checks.integer("ActivationQuantizer", "num_bits", num_bits, 2, 8)
        self.num_bits = num_bits
        self._tracker = tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
            num_bits=num_bits, per_axis=False, symmetric=False, narrow_range=False
        )

    def build(self, tensor_shape: tf.TensorShape, name: str, layer: keras.layers.Layer) -> dict:
        return self._tracker.build(tensor_shape, name, layer)

    def __call__(self, inputs: tf.Tensor, training: bool, weights: dict, **kwargs) -> tf.Tensor:
        # tfmot's MovingAverageQuantizer.__call__, with the decay `range_decay` may set.
        decay = _range_decay_override[-1] if _range_decay_override else RANGE_EMA_DECAY
        return quant_ops.MovingAvgQuantize(
            inputs,
            weights["min_var"],
            weights["max_var"],
            ema_decay=decay,
            is_training=training,
            num_bits=self.num_bits,
            per_channel=False,
            symmetric=False,
            narrow_range=False,
        )

    def export_form(self, int4_weights: bool = False) -> ActivationQuantizer:
        """The quantizer a TFLite file stores: k < 8 bits become 8 over the same range.

        LiteRT has no kernels for 4-bit activations (see `apprentice_tf.tflite.convert`).
        `int4_weights` does not concern activations.
        """
        return ActivationQuantizer(max(self.num_bits, 8))

    def get_config(self) -> dict[str, Any]:
        return {"num_bits": self.num_bits}
