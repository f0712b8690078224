"""`quantize_model`: a float Keras model in, a quantization-aware low-precision model out.

Built on tfmot's annotate/apply API: the chosen Conv2D, DepthwiseConv2D and Dense layers are
annotated with `TernaryQuantizeConfig` or `NBitQuantizeConfig`, every ReLU-type activation layer
with `ActivationQuantizeConfig`, and `tfmot.quantization.keras.quantize_apply` builds the model.
Layers not annotated (the first conv and last dense by default, BatchNormalization, pooling, Add)
stay float in Keras; the TFLite converter folds BatchNormalization into the preceding kernel.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import tensorflow_model_optimization as tfmot

# tfmot's input-quantization layer (the one `quantize_apply` puts after a model's inputs); tfmot
# registers it in `quantize_scope` but does not export it.
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (
    QuantizeLayer,
)

from apprentice_tf import _checks, _graph
from apprentice_tf.compat import keras
from apprentice_tf.quantize_configs import (
    ActivationQuantizeConfig,
    NBitQuantizeConfig,
    NoOpQuantizeConfig,
    TernaryQuantizeConfig,
    _DepthwiseKernel,
    _WeightQuantizeConfig,
    kernel_attribute,
)
from apprentice_tf.quantizers import ActivationQuantizer, range_decay

__all__ = [
    "quantize_model",
    "quantize_apply",
    "calibrate",
    "is_quantization_aware",
    "split_unfused_activations",
    "WEIGHT_BITS",
    "ACTIVATION_BITS",
]

WEIGHT_BITS = ("ternary", 2, 4, 8)
ACTIVATION_BITS = (8, 4, None)


def _is_relu(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        return True
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") in ("relu", "relu6")
    return False


#: Activations whose output is not quantized by `quantize_model`: the identity, and softmax
#: (a network's probabilities stay float).
_UNQUANTIZED_ACTIVATIONS = ("linear", "softmax")


def _is_quantized_activation(layer: keras.layers.Layer) -> bool:
    """A ReLU, or an `Activation` layer (swish, sigmoid, tanh, gelu, ...) whose output gets its
    own `activation_bits` quantizer.

    TFLite fuses only ReLU-type activations into a Conv/Dense; any other activation is an op of
    its own, whose float output would leave the next low-precision layer's input float and make
    the converter keep that layer's kernel in float (EfficientNet's swish before each depthwise
    conv, measured on TF 2.21). Quantizing the activation's output, as tfmot's 8-bit scheme does
    for swish and gelu, keeps the next layer integer.
    """
    if _is_relu(layer):
        return True
    return (
        isinstance(layer, keras.layers.Activation)
        and getattr(layer.activation, "__name__", "linear") not in _UNQUANTIZED_ACTIVATIONS
    )


def _weight_config(
    weight_bits: str | int, activation_bits: int | None, quantize_output: bool
) -> TernaryQuantizeConfig | NBitQuantizeConfig:
    if weight_bits == "ternary":
        return TernaryQuantizeConfig(
            activation_bits=activation_bits, quantize_output=quantize_output
        )
    return NBitQuantizeConfig(
        num_bits=weight_bits, activation_bits=activation_bits, quantize_output=quantize_output
    )


def _is_plain_relu_config(layer_config: dict) -> bool:
    config = layer_config["config"]
    if layer_config["class_name"] == "ReLU":
        return (
            config.get("max_value") is None
            and not config.get("negative_slope")
            and not config.get("threshold")
        )
    return layer_config["class_name"] == "Activation" and config.get("activation") == "relu"


def fold_standalone_relus(model: keras.Model, layer_names: set[str]) -> keras.Model:
    """Return `model` with each ReLU that alone follows a layer in `layer_names` folded into it.

    ``Conv2D(...) → ReLU()`` becomes ``Conv2D(..., activation="relu")`` (same weights, same
    outputs). The TFLite converter (TF 2.21, measured) re-quantizes the kernel of a Conv/Dense
    followed by a separate ReLU from the float weights, losing the low-precision levels, while it
    keeps them when the ReLU is the layer's own activation; tfmot's default scheme makes a
    similar layout change. Returns `model` itself when there is nothing to fold.
    """
    config = model.get_config()
    by_name = {layer["name"]: layer for layer in config["layers"]}
    folded: dict[str, str] = {}
    for layer in config["layers"]:
        inbound = layer.get("inbound_nodes") or []
        if not _is_plain_relu_config(layer) or len(inbound) != 1 or len(inbound[0]) != 1:
            continue
        source = inbound[0][0][0]
        if (
            source in layer_names
            and len(_graph.consumers(model.get_layer(source))) == 1
            and by_name[source]["config"].get("activation") == "linear"
        ):
            folded[layer["name"]] = source
    if not folded:
        return model
    for relu, source in folded.items():
        by_name[source]["config"]["activation"] = "relu"
        config["layers"].remove(by_name[relu])
    for layer in config["layers"]:
        _graph.rename_references(layer.get("inbound_nodes") or [], folded)
    _graph.rename_references(config["output_layers"], folded)
    return _graph.rebuild(config, model)


#: Activations TFLite fuses into a Conv/Dense op (the integer kernels apply them to the
#: accumulator); any other activation is an op of its own after the layer.
_FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")


def split_unfused_activations(model: keras.Model, layer_names: set[str]) -> keras.Model:
    """Return `model` with the activation of each layer in `layer_names` that TFLite cannot fuse
    moved into an `Activation` layer of its own, named ``<layer>_activation``.

    ``Conv2D(..., activation="swish")`` becomes ``Conv2D(...) → Activation("swish")`` (same
    weights, same outputs). TFLite computes a swish or sigmoid as separate ops after the
    convolution, so the convolution's own output must be quantized for its kernel to stay
    integer; with the activation inside the layer there is no point to put that quantizer
    (EfficientNet's squeeze-excite reductions lost their levels, measured on TF 2.21). Returns
    `model` itself when there is nothing to split.
    """
    config = model.get_config()
    split = {
        layer["name"]: f"{layer['name']}_activation"
        for layer in config["layers"]
        if layer["name"] in layer_names
        and layer["config"].get("activation", "linear") not in _FUSABLE_ACTIVATIONS
    }
    if not split:
        return model
    taken = {layer["name"] for layer in config["layers"]} & set(split.values())
    if taken:
        raise ValueError(
            f"quantize_model: model '{model.name}' already has layers named {sorted(taken)}, the "
            "names given to the activations split off their layers; rename them."
        )
    for layer in config["layers"]:
        _graph.rename_references(layer.get("inbound_nodes") or [], split)
    _graph.rename_references(config["output_layers"], split)
    layers = []
    for layer in config["layers"]:
        layers.append(layer)
        if layer["name"] in split:
            name = split[layer["name"]]
            activation = layer["config"]["activation"]
            layer["config"]["activation"] = "linear"
            layers.append(
                {
                    "class_name": "Activation",
                    "name": name,
                    "config": {
                        "name": name,
                        "activation": activation,
                        "trainable": layer["config"].get("trainable", True),
                        "dtype": layer["config"].get("dtype", "float32"),
                    },
                    "inbound_nodes": [[_graph.reference(layer["name"])]],
                }
            )
    config["layers"] = layers
    return _graph.rebuild(config, model)


def _adds_before_relus(model: keras.Model) -> set[str]:
    """Add layers whose only consumer is a ReLU: TFLite fuses them into one ADD with RELU.

    They get `NoOpQuantizeConfig`, so tfmot does not give them an 8-bit output quantizer of
    their own, which would split the fused op (and, with 4-bit activations, fail to convert:
    "tfl.relu op failed to verify that x and y must have same element type").
    """
    return {
        layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.Add)
        and len(_graph.consumers(layer)) == 1
        and _is_relu(_graph.consumers(layer)[0])
    }


def _passthrough_layers(model: keras.Model, annotated: set[str]) -> set[str]:
    """Weightless one-input layers (pooling, Flatten, Dropout, ...) that feed an annotated layer.

    tfmot would give each an 8-bit output quantizer of its own; between activations quantized to
    other widths that makes the converter reject the op ("input and output must have same
    element type"). Marked with `NoOpQuantizeConfig`, they pass their input's quantization on.
    """
    marked: set[str] = set()
    for name in annotated:
        inbound = _graph.inbound(model.get_layer(name))
        while (
            len(inbound) == 1
            and inbound[0].name not in annotated | marked
            and not isinstance(inbound[0], keras.layers.InputLayer)
            and not _is_function_layer(inbound[0])
            and not inbound[0].weights
            and len(_graph.inbound(inbound[0])) == 1
        ):
            marked.add(inbound[0].name)
            inbound = _graph.inbound(inbound[0])
    return marked


#: Layers that wrap a function rather than a Keras op: `Lambda`, and the operator layers Keras
#: records for TensorFlow calls on symbolic tensors (``x + 3.0``, ``tf.nn.relu6(x)``, ``x[:, 0]``).
FUNCTION_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda")


def _is_function_layer(layer: keras.layers.Layer) -> bool:
    """True for a `FUNCTION_LAYERS` layer: tfmot cannot wrap one (its call takes any arguments)."""
    return type(layer).__name__ in FUNCTION_LAYERS


def _output_quantization_points(
    model: keras.Model, low_precision: set[str]
) -> tuple[set[str], set[str]]:
    """Where the output of each low-precision layer's fused chain gets its quantizer.

    TFLite fuses Conv/Dense → BatchNormalization → ReLU into one integer op, and keeps a FakeQuant
    kernel as integers only if that op's output is quantized. ReLUs are always quantized; this
    returns (layers to quantize at their own output, BatchNormalization layers to quantize):
    a BatchNormalization that is not followed by a ReLU (a residual branch before Add), and a
    layer whose output goes anywhere but a BatchNormalization (measured on TF 2.21: a
    Conv/Dense followed by a separate ReLU loses its levels otherwise).
    """
    own_output: set[str] = set()
    batch_norm: set[str] = set()
    for name in low_precision:
        layer = model.get_layer(name)
        if getattr(layer.activation, "__name__", "linear") != "linear":
            continue
        consumers = _graph.consumers(layer)
        if len(consumers) == 1 and isinstance(consumers[0], keras.layers.BatchNormalization):
            after = _graph.consumers(consumers[0])
            if not (len(after) == 1 and _is_relu(after[0])):
                batch_norm.add(consumers[0].name)
        else:
            own_output.add(name)
    return own_output, batch_norm


#: Layers whose output tfmot's 8-bit registry quantizes when they feed an annotated layer
#: (pooling is in the registry too, but `_passthrough_layers` makes it pass its input on).
_TFMOT_OUTPUT_QUANTIZED = (
    keras.layers.Add,
    keras.layers.Concatenate,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
)
_TFMOT_QUANTIZED_ACTIVATIONS = ("relu", "relu6", "swish", "gelu")


def _is_linear_activation(layer: keras.layers.Layer) -> bool:
    return getattr(getattr(layer, "activation", None), "__name__", "linear") == "linear"


def _producer(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The layer whose output reaches `layer`'s single input through weightless one-input layers
    (padding, pooling, dropout, reshape: `_passthrough_layers` makes them pass their input's
    quantization on), or None."""
    inbound = _graph.inbound(layer)
    while (
        len(inbound) == 1
        and not isinstance(inbound[0], keras.layers.InputLayer)
        and not _is_function_layer(inbound[0])
        and not inbound[0].weights
        and len(_graph.inbound(inbound[0])) == 1
        and not isinstance(inbound[0], (*_TFMOT_OUTPUT_QUANTIZED, keras.layers.Activation))
    ):
        inbound = _graph.inbound(inbound[0])
    return inbound[0] if len(inbound) == 1 else None


def _unquantized_inputs(
    model: keras.Model, low_precision: set[str], quantized: set[str]
) -> set[str]:
    """Low-precision layers whose input would reach TFLite as float.

    The converter keeps a FakeQuant kernel as integers only in an op whose input and output are
    quantized. An input is quantized when its producer is an input layer (tfmot quantizes it),
    one of `quantized` (our ReLU, BatchNormalization and output quantizers), or a layer tfmot's
    registry gives an output quantizer (Add, Concatenate, average pooling, ReLU-type and swish
    activations). Anything else (operator layers such as ``x * relu6(x + 3) / 6``, Multiply of
    a squeeze-excite gate, a sigmoid) leaves it float: these layers get an input quantizer.
    """
    needing: set[str] = set()
    for name in low_precision:
        producer = _producer(model.get_layer(name))
        if producer is None or isinstance(producer, keras.layers.InputLayer):
            continue
        if producer.name in quantized or isinstance(producer, _TFMOT_OUTPUT_QUANTIZED):
            continue
        activation = getattr(producer, "activation", None)
        if getattr(activation, "__name__", "") in _TFMOT_QUANTIZED_ACTIVATIONS:
            continue
        needing.add(name)
    return needing


def add_input_quantizers(model: keras.Model, layer_names: set[str], num_bits: int) -> keras.Model:
    """Return `model` with a tfmot ``QuantizeLayer(ActivationQuantizer(num_bits))`` before each
    layer in `layer_names` (its only input), named ``<layer>_input_quant``.

    The quantizer tracks the input's range [min, max] by a moving average and rounds it to
    2^num_bits levels, so TFLite sees an integer input and keeps the layer's kernel as integers.
    Returns `model` itself when `layer_names` is empty.
    """
    if not layer_names:
        return model
    config = model.get_config()
    layers_config = config["layers"]
    for name in sorted(layer_names):
        index = next(i for i, layer in enumerate(layers_config) if layer["name"] == name)
        target = layers_config[index]
        (reference,) = target["inbound_nodes"][0]
        quantizer_name = f"{name}_input_quant"
        layer = QuantizeLayer(ActivationQuantizer(num_bits), name=quantizer_name)
        layers_config.insert(
            index,
            {
                "class_name": "QuantizeLayer",
                "config": layer.get_config(),
                "name": quantizer_name,
                "inbound_nodes": [[list(reference)]],
            },
        )
        target["inbound_nodes"][0] = [[quantizer_name, 0, 0, {}]]
    return _graph.rebuild(config, model)


def _check_rebuildable(model: keras.Model, function: str) -> None:
    """Refuse, naming the layer, a `Lambda` layer holding Python bytecode.

    Quantization rebuilds the model from its config, and Keras's safe mode refuses to
    deserialize a Lambda whose function is stored as bytecode (a Python ``lambda`` or a local
    function), so tfmot would fail later with advice that does not apply to tf_keras.
    """
    for layer in model.layers:
        if type(layer).__name__ == "Lambda" and layer.get_config().get("function_type") == "lambda":
            raise ValueError(
                f"{function}: layer '{layer.name}' is a Lambda layer holding Python code, which "
                "Keras refuses to rebuild from a config (safe mode), and quantization rebuilds "
                "the model. Fix: write the computation as TensorFlow calls on the tensor "
                "(`tf.nn.relu6(x) * 0.5`: Keras records them as operator layers, which stay "
                "float while the layers around them are quantized), or as a custom layer "
                "registered with `@keras.utils.register_keras_serializable()`."
            )


def low_precision_layer_names(
    model: keras.Model, keep_first_last: bool = True, skip: Iterable[str] = ()
) -> list[str]:
    """Names of the layers `quantize_model` gives low-precision weights, in model order.

    All Conv2D, DepthwiseConv2D and Dense layers, less the first conv/dense layer, the last Dense
    layer and the conv/dense layer that produces the logits (MobileNet's final 1x1 conv) when
    `keep_first_last` (Mishra & Marr keep first and last in full precision), less `skip`.
    """
    candidates = [layer for layer in model.layers if kernel_attribute(layer) is not None]
    skipped = set(skip)
    if keep_first_last and candidates:
        skipped.add(candidates[0].name)
        dense = [layer for layer in candidates if isinstance(layer, keras.layers.Dense)]
        if dense:
            skipped.add(dense[-1].name)
        logits = _logits_layer(model)
        if logits is not None:
            skipped.add(logits.name)
    return [layer.name for layer in candidates if layer.name not in skipped]


def _logits_layer(model: keras.Model) -> keras.layers.Layer | None:
    """The conv/dense layer whose output reaches the model's (single) output through weightless
    one-input layers (Flatten, Reshape, Activation, Dropout), e.g. MobileNet's 1x1 `conv_preds`
    conv followed by Flatten: the last layer, kept float with `keep_first_last`."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        return None
    layer = outputs[0]._keras_history.layer  # noqa: SLF001
    while kernel_attribute(layer) is None:
        inbound = _graph.inbound(layer)
        if len(inbound) != 1 or layer.weights or _is_function_layer(layer):
            return None
        layer = inbound[0]
    return layer


def quantize_model(
    model: keras.Model,
    weight_bits: str | int = "ternary",
    activation_bits: int | None = 8,
    keep_first_last: bool = True,
    skip: Iterable[str] = (),
) -> keras.Model:
    """Return a quantization-aware copy of `model` with low-precision weights and activations.

    Weights of every Conv2D, DepthwiseConv2D and Dense layer except the first conv and the last
    dense (`keep_first_last`) and the layers named in `skip` become ternary (TWN: Δ_c =
    0.7·mean|W_c|, α_c = mean{|w| > Δ_c}) or symmetric k-bit per output channel; the outputs of
    ReLU layers become unsigned `activation_bits`-bit values (Mishra & Marr 2018), and those of
    other activation layers (swish, sigmoid, ...; not softmax) `activation_bits`-bit values over
    their tracked range, so that the next low-precision layer stays integer in TFLite (a
    low-precision layer's own swish or sigmoid becomes an `Activation` layer after it, as TFLite
    computes it). The float
    model's weights are copied in, so a trained float network can be fine-tuned (scheme C).
    Training uses straight-through gradients.

    Args:
      model: a Sequential or functional tf_keras model (residual connections and
        BatchNormalization included).
      weight_bits: "ternary", 2, 4 or 8.
      activation_bits: 8, 4, or None for float activations.
      keep_first_last: keep the first conv/dense and the last dense layer in float.
      skip: names of further layers to keep in float.

    Returns:
      A new model (tfmot `QuantizeWrapperV2` layers, `quant_` name prefix); `model` is untouched.

    Raises:
      ValueError: bad bit widths, a `skip` name that is not a layer of `model`, a model with no
        layer left to quantize, or a model that is not a tf_keras model (e.g. Keras 3).
    """
    _checks.choice(
        "quantize_model",
        "weight_bits",
        weight_bits,
        WEIGHT_BITS,
        fix="Use 'ternary' for TWN ternary weights or 4 for 15-level weights.",
    )
    _checks.choice(
        "quantize_model",
        "activation_bits",
        activation_bits,
        ACTIVATION_BITS,
        fix="None keeps activations float.",
    )
    _checks.keras_object("quantize_model", "model", model, keras.Model)
    _check_rebuildable(model, "quantize_model")
    skip = tuple(skip) if not isinstance(skip, str) else (skip,)
    names = {layer.name for layer in model.layers}
    unknown = [name for name in skip if name not in names]
    if unknown:
        raise ValueError(
            f"quantize_model: `skip` names {unknown}, which are not layers of model "
            f"'{model.name}'. Its layers are: {sorted(names)}."
        )
    if not (isinstance(model, keras.Sequential) or model._is_graph_network):
        raise ValueError(
            f"quantize_model: model '{model.name}' is a subclassed model; tfmot needs a "
            "Sequential or functional model. Rebuild it with the functional API."
        )
    low_precision = set(low_precision_layer_names(model, keep_first_last, skip))
    if not low_precision:
        raise ValueError(
            f"quantize_model: model '{model.name}' has no Conv2D, DepthwiseConv2D or Dense layer "
            f"left to quantize (keep_first_last={keep_first_last}, skip={list(skip)}). Pass "
            "keep_first_last=False or a model with more layers."
        )
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                f"quantize_model: Sequential model '{model.name}' has no known input shape. "
                "Start it with `keras.Input(shape=...)` or build it first."
            )
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    configs = {name: _weight_config(weight_bits, activation_bits, False) for name in low_precision}
    return _apply_export_transforms(model, configs, activation_bits)


def _apply_export_transforms(
    model: keras.Model, configs: dict[str, Any], activation_bits: int | None
) -> keras.Model:
    """Annotate `model` for export-preserving quantization and build it with tfmot.

    `configs` maps layer names to their QuantizeConfig; those holding a
    `TernaryQuantizeConfig`/`NBitQuantizeConfig` are the low-precision layers. Around them, as
    `quantize_model` documents: standalone ReLUs folded into the layer, activations TFLite
    cannot fuse split off into layers of their own (`split_unfused_activations`), output
    quantizers where TFLite needs them (`_output_quantization_points`), ReLUs, other activation
    layers (`_is_quantized_activation`) and those BatchNormalizations quantized to
    `activation_bits`, input quantizers where the input would stay float (`_unquantized_inputs`),
    and pass-through layers marked so they keep their input's quantization. A layer named in
    `configs` keeps the config given there.
    """
    low_precision = {
        name for name, config in configs.items() if isinstance(config, _WeightQuantizeConfig)
    }
    model = fold_standalone_relus(model, low_precision)
    if activation_bits is not None:
        model = split_unfused_activations(model, low_precision)
    own_output, batch_norm = _output_quantization_points(model, low_precision)
    no_op: set[str] = set()
    if activation_bits is not None:
        activations = {layer.name for layer in model.layers if _is_quantized_activation(layer)}
        quantized = own_output | batch_norm | activations | set(configs)
        quantized |= {
            name for name in low_precision if not _is_linear_activation(model.get_layer(name))
        }
        model = add_input_quantizers(
            model, _unquantized_inputs(model, low_precision, quantized), activation_bits
        )
        no_op = _adds_before_relus(model) - set(configs)
        no_op |= _passthrough_layers(model, set(configs) | activations | batch_norm | no_op)
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def annotate_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        clone = layer.__class__.from_config(layer.get_config())
        if layer.name in low_precision and layer.name in own_output:
            config = configs[layer.name]
            with_output = type(config).from_config({**config.get_config(), "quantize_output": True})
            return annotate(clone, quantize_config=with_output)
        if layer.name in configs:
            return annotate(clone, quantize_config=configs[layer.name])
        if activation_bits is not None and (
            _is_quantized_activation(layer) or layer.name in batch_norm
        ):
            return annotate(clone, quantize_config=ActivationQuantizeConfig(activation_bits))
        if layer.name in no_op:
            return annotate(clone, quantize_config=NoOpQuantizeConfig())
        return clone

    with tfmot.quantization.keras.quantize_scope():
        annotated = keras.models.clone_model(model, clone_function=annotate_layer)
    for source, target in zip(model.layers, annotated.layers, strict=True):
        getattr(target, "layer", target).set_weights(source.get_weights())
    with tfmot.quantization.keras.quantize_scope():
        quantized = tfmot.quantization.keras.quantize_apply(annotated)
    _deduplicate_tracked_weights(quantized)
    refresh_weight_ranges(quantized)
    return quantized


def is_quantization_aware(model: keras.Model) -> bool:
    """True when `model` has tfmot quantize wrappers (`quantize_model`, `quantize_apply`): its
    FakeQuant kernels and ranges are what TFLite conversion turns into integer tensors."""
    return any(hasattr(layer, "quantize_config") for layer in model.layers)


def calibrate(model: keras.Model, dataset: Iterable[Any], steps: int = 20) -> int:
    """Re-estimate a quantization-aware network's statistics from data; no trained weight moves.

    A trained float network lowered to low precision (`quantize_model`) carries two kinds of
    statistics that no longer describe it: each BatchNormalization layer's moving mean and
    variance (those of the float network's activations; ternary kernels change them) and each
    activation quantizer's range [m_lo, m_hi], which starts at tfmot's [−6, 6] and moves 0.1% of
    the way to the batch range per training step (after 100 steps a ReLU's m_lo is still −5.4,
    wasting about half the 8-bit grid on values that never occur). Evaluated as it is, such a
    network looks far worse than its weights are, and fine-tuning spends its first steps fixing
    statistics. This runs K batches x_1..x_K (the first `steps` of `dataset`) through `model` in
    training mode and sets, in one pass in network order,

        BN moving mean, variance = (1/K)·Σ_k mean, variance of the BN input on x_k
        [m_lo, m_hi]             = (1/K)·Σ_k [min(0, min a_k), max(0, max a_k)]

    for every BatchNormalization layer and every `ActivationQuantizer` (a_k: the quantizer's input
    on x_k), the values the moving averages converge to: momentum and decay are (k − 1)/k at
    batch k (AdaBN, Li et al. 2016, for the BatchNorm part; a calibration pass, as post-training
    quantization does, for the ranges). Frozen BatchNorm layers (``trainable=False``) run in
    inference mode in Keras and keep their statistics. Trainable weights and the kernels' stored
    scales are untouched.

    Args:
      model: a model from `quantize_model` or `quantize_apply` (for a `Distiller`, its
        ``student``).
      dataset: batches of ``x`` or ``(x, y, ...)`` tuples (e.g. `apprentice_tf.data.load(...)`).
      steps: K, the batches to use (fewer if the dataset ends first).

    Returns:
      K, the number of batches used.

    Raises:
      ValueError: `model` is not quantization-aware, `steps` is not a positive integer, or
        `dataset` gave no batch; nothing is changed.
    """
    steps = _checks.integer("calibrate", "steps", steps, 1)
    if not isinstance(model, keras.Model) or not is_quantization_aware(model):
        raise _checks.refuse(
            "calibrate",
            "model",
            type(model).__name__,
            "a quantization-aware model",
            "Pass the model quantize_model or quantize_apply returned (a Distiller's .student).",
        )
    batch_norms = [
        layer for layer in model.submodules if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in batch_norms]
    used = 0
    try:
        for element in dataset:
            if used == steps:
                break
            inputs = element[0] if isinstance(element, tuple | list) else element
            used += 1
            average = (used - 1) / used  # the running mean's weight on what came before
            for layer in batch_norms:
                layer.momentum = average
            with range_decay(average):
                model(inputs, training=True)
    finally:
        for layer, momentum in zip(batch_norms, momenta, strict=True):
            layer.momentum = momentum
    if used == 0:
        raise _checks.refuse("calibrate", "dataset", "no batches", "at least one batch")
    return used


def _is_annotation(layer: keras.layers.Layer) -> bool:
    """True for tfmot's `quantize_annotate_layer` wrapper (its class is not exported)."""
    return type(layer).__name__ == "QuantizeAnnotate" and hasattr(layer, "quantize_config")


def quantize_apply(model: keras.Model) -> keras.Model:
    """tfmot's ``quantize_apply`` for a model annotated with our configs, export-ready.

    Annotate as tfmot's guide teaches for custom configs, then call this instead of
    ``tfmot.quantization.keras.quantize_apply``::

        annotate = tfmot.quantization.keras.quantize_annotate_layer
        conv = annotate(keras.layers.Conv2D(16, 3), atf.TernaryQuantizeConfig())
        ...
        with atf.quantize_scope():
            qat = atf.quantize_apply(keras.Model(inputs, outputs))

    Each layer annotated with `TernaryQuantizeConfig` or `NBitQuantizeConfig` gets ternary
    {−α_c, 0, +α_c} or symmetric k-bit kernels (as in `quantize_model`), and the model gets the
    same export-preserving changes as `quantize_model`: a standalone ReLU after such a layer is
    folded into it; BatchNormalization, ReLUs, pass-through layers and float inputs around it
    are quantized to the configs' ``activation_bits`` (the largest, if they differ) without
    being annotated by hand, so that the TFLite file keeps the low-precision levels. Other
    annotations (e.g. `ActivationQuantizeConfig`, tfmot's own configs) are kept as given. The
    result saves and loads through .keras, .h5 and SavedModel inside `atf.quantize_scope()`.

    Args:
      model: a functional or Sequential tf_keras model with `quantize_annotate_layer` layers.

    Returns:
      A new quantization-aware model; `model` is untouched.

    Raises:
      ValueError: a model that is not tf_keras, has no annotated layer, or holds a Lambda
        layer with Python code.
    """
    _checks.keras_object("quantize_apply", "model", model, keras.Model)
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    configs: dict[str, Any] = {}

    def unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if _is_annotation(layer):
            configs[layer.layer.name] = layer.quantize_config
            return layer.layer.__class__.from_config(layer.layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    with tfmot.quantization.keras.quantize_scope():
        plain = keras.models.clone_model(model, clone_function=unwrap)
    for source, target in zip(model.layers, plain.layers, strict=True):
        target.set_weights(getattr(source, "layer", source).get_weights())
    if not configs:
        raise ValueError(
            f"quantize_apply: model '{model.name}' has no layer annotated with "
            "tfmot.quantization.keras.quantize_annotate_layer; annotate the layers to quantize "
            "(with atf.TernaryQuantizeConfig() or atf.NBitQuantizeConfig()), or call "
            "atf.quantize_model(model) to quantize every conv and dense layer."
        )
    _check_rebuildable(plain, "quantize_apply")
    widths = [
        config.activation_bits
        for config in configs.values()
        if isinstance(config, _WeightQuantizeConfig) and config.activation_bits is not None
    ]
    return _apply_export_transforms(plain, configs, max(widths) if widths else None)


def _deduplicate_tracked_weights(model: keras.Model) -> None:
    """Make each QuantizeWrapper track its weights as a wrapper rebuilt from config does.

    After `quantize_apply`, a wrapper's own weight lists also hold its inner layer's weights
    (and the wrapped kernel twice); one rebuilt by `from_config` holds only its quantizer
    variables and the wrapped kernel. The .keras format writes these lists, so without this a
    saved model refused to load ("expected 3 variables, but received 4").
    """
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if inner is None or not hasattr(layer, "_weight_vars"):
            continue
        wrapped = {id(weight) for weight, _, _ in layer._weight_vars}  # noqa: SLF001
        owned_by_inner = {id(weight) for weight in inner.weights} - wrapped
        for attribute in ("_trainable_weights", "_non_trainable_weights"):
            tracked = getattr(layer, attribute)
            unique = {id(w): w for w in tracked if id(w) not in owned_by_inner}
            tracked[:] = list(unique.values())


def refresh_weight_ranges(model: keras.Model) -> None:
    """Set every low-precision kernel's stored scale α_c (or s_c) from its current weights.

    Training refreshes these at every step; call this after writing kernels by hand
    (`set_weights` on the float kernels only) so inference and TFLite use matching scales.
    """
    for layer in model.layers:
        for weight, quantizer, quantizer_vars in getattr(layer, "_weight_vars", ()):
            if "bound" in quantizer_vars or isinstance(quantizer, _DepthwiseKernel):
                quantizer(weight, True, weights=quantizer_vars)
