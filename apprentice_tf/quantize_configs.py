"""tfmot `QuantizeConfig` classes: which tensors of a layer are quantized, and how.

`TernaryQuantizeConfig` and `NBitQuantizeConfig` quantize the kernel of a Conv2D, DepthwiseConv2D
or Dense layer (ternary, or symmetric k-bit, per output channel) and, when the layer has a
non-linear activation of its own (``Conv2D(..., activation="relu")``), that activation's output.
`ActivationQuantizeConfig` quantizes the output of an activation layer (ReLU, Activation) to
unsigned k bits: Mishra & Marr quantize activations after the ReLU (METHODS.md §1).

Each config gives its export form (`export_form`): the config a TFLite file is converted with
(activations of k < 8 bits stored as int8, kernels stored as INT4 or int8), so that
`apprentice_tf.tflite.convert` asks the config instead of editing its serialised fields.
"""

from __future__ import annotations

from typing import Any

import tensorflow_model_optimization as tfmot

from apprentice_tf import _checks
from apprentice_tf.compat import keras, tf
from apprentice_tf.quantizers import (
    ActivationQuantizer,
    SettingsEquality,
    TernaryWeightQuantizer,
    UniformWeightQuantizer,
)

__all__ = [
    "NoOpQuantizeConfig",
    "TernaryQuantizeConfig",
    "NBitQuantizeConfig",
    "ActivationQuantizeConfig",
    "KERNEL_ATTRIBUTES",
]

_QuantizeConfig = tfmot.quantization.keras.QuantizeConfig

#: The kernel attribute quantized for each supported layer class (checked in this order).
KERNEL_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    (keras.layers.DepthwiseConv2D, "depthwise_kernel"),
    (keras.layers.Conv2D, "kernel"),
    (keras.layers.Dense, "kernel"),
)


def kernel_attribute(layer: keras.layers.Layer) -> str | None:
    """The name of `layer`'s quantizable kernel, or None if the layer has none we support."""
    for layer_class, attribute in KERNEL_ATTRIBUTES:
        if isinstance(layer, layer_class):
            return attribute
    return None


class _DepthwiseKernel(tfmot.quantization.keras.quantizers.Quantizer):
    """Applies a per-output-channel quantizer to a depthwise kernel.

    A depthwise kernel is (h, w, in, multiplier); its output channels are in·multiplier, which
    is also how TFLite stores it ((1, h, w, in·multiplier)). The kernel is reshaped so the output
    channel is the last axis, quantized, and reshaped back.
    """

    def __init__(self, quantizer: tfmot.quantization.keras.quantizers.Quantizer) -> None:
        self.quantizer = quantizer

    @staticmethod
    def _flat_shape(shape: tf.TensorShape) -> tuple[int, int, int, int]:
        h, w, channels, multiplier = shape
        return (h, w, 1, channels * multiplier)

    def build(self, tensor_shape: tf.TensorShape, name: str, layer: keras.layers.Layer) -> dict:
        return self.quantizer.build(self._flat_shape(tensor_shape), name, layer)

    def __call__(self, inputs: tf.Tensor, training: bool, weights: dict, **kwargs) -> tf.Tensor:
        flat = tf.reshape(inputs, self._flat_shape(inputs.shape))
        return tf.reshape(self.quantizer(flat, training, weights, **kwargs), inputs.shape)

    def get_config(self) -> dict[str, Any]:
        return {"quantizer": self.quantizer.get_config()}


class _WeightQuantizeConfig(SettingsEquality, _QuantizeConfig):
    """Quantizes a layer's kernel with `_weight_quantizer()` and its own activation to k bits.

    With `quantize_output`, the layer's output is also quantized to `activation_bits` (signed
    range): `quantize_model` asks for it where nothing downstream that TFLite fuses into the
    layer (BatchNormalization, ReLU) carries an activation quantizer, because the converter only
    keeps a FakeQuant kernel as integers inside an op whose input and output are quantized.
    """

    def __init__(
        self, activation_bits: int | None, quantize_output: bool = False, int4_storage: bool = False
    ) -> None:
        if activation_bits is not None:
            _checks.integer(
                type(self).__name__,
                "activation_bits",
                activation_bits,
                2,
                8,
                fix="None keeps the activation float.",
            )
        self.activation_bits = activation_bits
        self.quantize_output = bool(quantize_output) and activation_bits is not None
        self.int4_storage = bool(int4_storage)

    def _weight_quantizer(
        self, per_tensor_storage: bool = False
    ) -> tfmot.quantization.keras.quantizers.Quantizer:
        raise NotImplementedError

    def export_form(self, int4_weights: bool = False) -> _WeightQuantizeConfig:
        """The config the TFLite file is converted with: same kernel quantizer, activations of
        k < 8 bits widened to 8 (LiteRT has no 4-bit activation kernels), kernels stored as
        INT4 if `int4_weights` else int8."""
        settings = self.get_config()
        settings["int4_storage"] = bool(int4_weights)
        if self.activation_bits is not None:
            settings["activation_bits"] = max(self.activation_bits, 8)
        return type(self).from_config(settings)

    def get_weights_and_quantizers(self, layer: keras.layers.Layer) -> list:
        attribute = kernel_attribute(layer)
        if attribute is None:
            raise ValueError(
                f"{type(self).__name__} supports Conv2D, DepthwiseConv2D and Dense; layer "
                f"'{layer.name}' is a {type(layer).__name__}. Leave it out of `quantize_model` "
                "with `skip=`."
            )
        quantizer = self._weight_quantizer(isinstance(layer, keras.layers.Dense))
        if attribute == "depthwise_kernel":
            quantizer = _DepthwiseKernel(quantizer)
        return [(getattr(layer, attribute), quantizer)]

    def get_activations_and_quantizers(self, layer: keras.layers.Layer) -> list:
        if self.activation_bits is None or _is_linear(layer.activation):
            return []
        return [(layer.activation, ActivationQuantizer(self.activation_bits))]

    def set_quantize_weights(self, layer: keras.layers.Layer, quantize_weights: list) -> None:
        setattr(layer, kernel_attribute(layer), quantize_weights[0])

    def set_quantize_activations(
        self, layer: keras.layers.Layer, quantize_activations: list
    ) -> None:
        if quantize_activations:
            layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer: keras.layers.Layer) -> list:
        if self.quantize_output and _is_linear(layer.activation):
            return [ActivationQuantizer(self.activation_bits)]
        return []


def _is_linear(activation: Any) -> bool:
    return activation is None or getattr(activation, "__name__", "") == "linear"


@keras.utils.register_keras_serializable(package="apprentice_tf")
class TernaryQuantizeConfig(_WeightQuantizeConfig):
    """Ternary kernel {−α_c, 0, +α_c} per output channel, k-bit activation (Mishra & Marr 2018).

    Args:
      threshold: TWN's t in Δ_c = t·mean|W_c| (default 0.7), or t·max|W_c| with
        ``threshold_rule="max"``.
      threshold_rule: "mean" (TWN) or "max" (TTQ-style).
      activation_bits: bits of the layer's own non-linear activation, or None for float.
      quantize_output: also quantize the layer's (linear) output; see `_WeightQuantizeConfig`.
      int4_storage: let TFLite store the kernel as INT4 (`apprentice_tf.tflite.convert` sets it
        for export with ``int4_weights=True``).
    """

    def __init__(
        self,
        threshold: float = 0.7,
        threshold_rule: str = "mean",
        activation_bits: int | None = 8,
        quantize_output: bool = False,
        int4_storage: bool = False,
    ) -> None:
        super().__init__(activation_bits, quantize_output, int4_storage)
        self.threshold = threshold
        self.threshold_rule = threshold_rule
        self._weight_quantizer()  # validates threshold and rule now, not at build time

    def _weight_quantizer(self, per_tensor_storage: bool = False) -> TernaryWeightQuantizer:
        return TernaryWeightQuantizer(
            self.threshold,
            True,
            self.threshold_rule,
            per_tensor_storage=per_tensor_storage,
            int4_storage=self.int4_storage,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "activation_bits": self.activation_bits,
            "quantize_output": self.quantize_output,
            "int4_storage": self.int4_storage,
        }


@keras.utils.register_keras_serializable(package="apprentice_tf")
class NBitQuantizeConfig(_WeightQuantizeConfig):
    """Symmetric k-bit kernel per output channel (15 levels at k = 4), k-bit activation.

    Args:
      num_bits: weight bits, 2 to 8.
      activation_bits: bits of the layer's own non-linear activation, or None for float.
      quantize_output: also quantize the layer's (linear) output; see `_WeightQuantizeConfig`.
      int4_storage: let TFLite store the kernel as INT4 (`apprentice_tf.tflite.convert` sets it
        for export with ``int4_weights=True``).
    """

    def __init__(
        self,
        num_bits: int = 4,
        activation_bits: int | None = 8,
        quantize_output: bool = False,
        int4_storage: bool = False,
    ) -> None:
        super().__init__(activation_bits, quantize_output, int4_storage)
        self.num_bits = num_bits
        self._weight_quantizer()

    def _weight_quantizer(self, per_tensor_storage: bool = False) -> UniformWeightQuantizer:
        return UniformWeightQuantizer(
            self.num_bits,
            True,
            per_tensor_storage=per_tensor_storage,
            int4_storage=self.int4_storage,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "num_bits": self.num_bits,
            "activation_bits": self.activation_bits,
            "quantize_output": self.quantize_output,
            "int4_storage": self.int4_storage,
        }


@keras.utils.register_keras_serializable(package="apprentice_tf")
class NoOpQuantizeConfig(SettingsEquality, _QuantizeConfig):
    """Quantizes nothing; marks a layer (an Add before a ReLU) as part of an integer op.

    Without it, tfmot gives a layer that feeds a quantized layer its own 8-bit output quantizer;
    before a quantized ReLU that splits Add + ReLU into two integer ops with different ranges,
    which the TFLite converter rejects for 4-bit activations.
    """

    def get_weights_and_quantizers(self, layer: keras.layers.Layer) -> list:
        return []

    def get_activations_and_quantizers(self, layer: keras.layers.Layer) -> list:
        return []

    def set_quantize_weights(self, layer: keras.layers.Layer, quantize_weights: list) -> None:
        pass

    def set_quantize_activations(
        self, layer: keras.layers.Layer, quantize_activations: list
    ) -> None:
        pass

    def get_output_quantizers(self, layer: keras.layers.Layer) -> list:
        return []

    def export_form(self, int4_weights: bool = False) -> NoOpQuantizeConfig:
        """The config the TFLite file is converted with: this one (nothing to change)."""
        return self

    def get_config(self) -> dict[str, Any]:
        return {}


@keras.utils.register_keras_serializable(package="apprentice_tf")
class ActivationQuantizeConfig(NoOpQuantizeConfig):
    """Quantizes the output of a weightless layer (ReLU, BatchNormalization) to k bits.

    The range is tracked by a moving average (`ActivationQuantizer`); after a ReLU its minimum is
    0, which makes it the unsigned k-bit activation of Mishra & Marr.

    Args:
      num_bits: 2 to 8.
    """

    def __init__(self, num_bits: int = 8) -> None:
        ActivationQuantizer(num_bits)  # validates
        self.num_bits = num_bits

    def get_output_quantizers(self, layer: keras.layers.Layer) -> list:
        return [ActivationQuantizer(self.num_bits)]

    def export_form(self, int4_weights: bool = False) -> ActivationQuantizeConfig:
        """The config the TFLite file is converted with: k < 8 bits become 8, same range."""
        return ActivationQuantizeConfig(max(self.num_bits, 8))

    def get_config(self) -> dict[str, Any]:
        return {"num_bits": self.num_bits}
