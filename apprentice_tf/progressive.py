"""Progressive learning: ancillary full-precision branches, their decay, and their removal.

Zhou et al., "Progressive learning of low-precision networks", arXiv:1905.11781 (METHODS.md §2).
Each low-precision convolution gets an *ancillary* full-precision convolution on the same input,
and the layer's output becomes

    y = conv_lp(x) + λ·conv_fp(x),

where conv_lp is the ternary / k-bit convolution of `apprentice_tf.quantize.quantize_model` and
conv_fp a float convolution with the same filters, strides and padding (and the same kernel size,
or 1×1 with ``kernel_size=1``). λ starts at 1 and a Keras callback (`AncillaryDecay`) drives it
to exactly 0 at a chosen step; training then continues with λ = 0, when the ancillary branches
contribute nothing, and `strip_ancillary` removes them, leaving exactly the network that
`quantize_model` made, with the trained weights.

Order of operations (one, documented choice): `add_ancillary` takes the *float* model and the
`quantize_model` arguments, quantizes it, and returns the *expanded quantized* model. An already
quantized model (the output of `quantize_model`) is accepted as well. Usage::

    m = add_ancillary(float_model, weight_bits="ternary", activation_bits=8)
    m.compile(...)
    m.fit(data, epochs=30, callbacks=[AncillaryDecay("cosine", end_step=20, by="epoch")])
    deployable = strip_ancillary(m)   # == quantize_model(float_model) topology, trained weights
    apprentice_tf.tflite.convert(deployable, "student.tflite")

Graph: for each low-precision Conv2D/DepthwiseConv2D wrapper ``quant_<name>``, the expanded
model has a float twin ``ancillary_<name>`` (`AncillaryConv2D` / `AncillaryDepthwiseConv2D`) on
the wrapper's input, and an `AncillaryScale` layer computes ``quant_<name>(x) + λ·twin(x)``;
everything that consumed the wrapper's output (typically its BatchNormalization) consumes that
sum. λ is the non-trainable weight ``scale`` of the `AncillaryScale` layer: one layer named
``ancillary_scale`` shared by all branches (called once per branch), or with
``per_layer_scale=True`` one layer ``ancillary_scale_<name>`` per branch. Being a model weight,
λ is saved with the model and restored by `keras.callbacks.BackupAndRestore`.

Only low-precision convolutions with a linear activation of their own are supported: the
ancillary term must be added before the non-linearity, y = act(conv_lp(x) + λ·conv_fp(x)), and a
ReLU inside the tfmot wrapper (``activation="relu"``, or a standalone ReLU directly after the conv,
which `quantize_model` folds into it) would be applied before the sum. `add_ancillary` raises a
ValueError for such layers (put a BatchNormalization between conv and ReLU, as every builder in
`apprentice_tf.models` does, or keep the layer float with ``skip=``).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import tensorflow_model_optimization as tfmot

from apprentice_tf import _checks, _graph
from apprentice_tf.compat import keras, tf
from apprentice_tf.quantize import quantize_model
from apprentice_tf.quantize_configs import NBitQuantizeConfig, TernaryQuantizeConfig

__all__ = [
    "add_ancillary",
    "strip_ancillary",
    "AncillaryDecay",
    "AncillaryScale",
    "AncillaryConv2D",
    "AncillaryDepthwiseConv2D",
    "AncillaryBatchNormalization",
    "ancillary_scales",
    "get_ancillary_scale",
    "set_ancillary_scale",
    "SCHEDULES",
]

#: The decay laws `AncillaryDecay` knows.
SCHEDULES = ("linear", "cosine", "exponential", "step")
_BY = ("step", "epoch")
_QUANTIZE_ARGUMENTS = ("weight_bits", "activation_bits", "keep_first_last", "skip")
_KERNEL_SIZES = (None, 1)
_WEIGHT_CONFIGS = (TernaryQuantizeConfig, NBitQuantizeConfig)
_QuantizeWrapper = tfmot.quantization.keras.QuantizeWrapperV2

Crop = tuple[tuple[int, int], tuple[int, int]]


# ------------------------------------------------------------------------------------------------
# Layers


@keras.utils.register_keras_serializable(package="apprentice_tf")
class AncillaryScale(keras.layers.Layer):
    """Adds a λ-scaled ancillary branch to a low-precision output: y = low + λ·ancillary.

    Zhou et al., "Progressive learning of low-precision networks" (arXiv:1905.11781). λ is this
    layer's non-trainable scalar weight ``scale``; gradients reach both inputs (∂y/∂low = 1,
    ∂y/∂ancillary = λ), none reach λ. One instance may be called on several branches (the
    shared λ of `add_ancillary`); `AncillaryDecay` assigns λ during training, and the value is
    saved with the model like any other weight.

    Args:
      initial_value: λ when the layer is built (default 1, as in the paper).
      **kwargs: passed to `keras.layers.Layer` (``name``, ``dtype``).

    Call args:
      inputs: ``[low, ancillary]``, two tensors of the same shape.
    """

    def __init__(self, initial_value: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.initial_value = _checks.real("AncillaryScale", "initial_value", initial_value, 0)

    def build(self, input_shape: Any) -> None:
        self.scale = self.add_weight(
            "scale",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_value),
            trainable=False,
        )
        super().build(input_shape)

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        if not isinstance(inputs, list | tuple) or len(inputs) != 2:
            raise ValueError(
                f"AncillaryScale '{self.name}' takes [low, ancillary], received {inputs!r}."
            )
        low, ancillary = inputs
        return low + tf.cast(self.scale, low.dtype) * ancillary

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "initial_value": self.initial_value}


class _CroppedConv:
    """Crops the spatial border of the input before the convolution (the 1×1 'valid' twin).

    A k×k 'valid' convolution (dilation d) sees the window [i·s, i·s + d(k−1)]; a 1×1 twin with
    the same stride gives the same output size, and sees the window's centre pixel, when the
    input is first cropped by ⌊d(k−1)/2⌋ rows/columns before and ⌈d(k−1)/2⌉ after.
    """

    crop: Crop
    data_format: str

    def _crop_input(self, inputs: tf.Tensor) -> tf.Tensor:
        (top, bottom), (left, right) = self.crop
        if not (top or bottom or left or right):
            return inputs
        rows = slice(top, -bottom or None)
        cols = slice(left, -right or None)
        if self.data_format == "channels_first":
            return inputs[:, :, rows, cols]
        return inputs[:, rows, cols, :]


def _check_crop(owner: str, crop: Any) -> Crop:
    allowed = "((top, bottom), (left, right)) of integers >= 0"
    try:
        (top, bottom), (left, right) = crop
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: `crop` must be {allowed}, received {crop!r}.") from None
    top, bottom, left, right = (
        _checks.integer(owner, "crop", v, 0, fix=f"`crop` must be {allowed}.")
        for v in (top, bottom, left, right)
    )
    return ((top, bottom), (left, right))


@keras.utils.register_keras_serializable(package="apprentice_tf")
class AncillaryConv2D(_CroppedConv, keras.layers.Conv2D):
    """The float twin of a low-precision Conv2D: conv_fp in y = conv_lp(x) + λ·conv_fp(x).

    Zhou et al., arXiv:1905.11781. A `keras.layers.Conv2D` (same arguments, same weights) that
    may first crop its input (see `_CroppedConv`, used by the 1×1 twin of a 'valid' conv), and a
    distinct class so that `strip_ancillary` finds it.

    Args:
      crop: ((top, bottom), (left, right)) rows/columns removed from the input first.
      *args, **kwargs: `keras.layers.Conv2D`'s.
    """

    def __init__(self, *args: Any, crop: Crop = ((0, 0), (0, 0)), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crop = _check_crop("AncillaryConv2D", crop)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return super().call(self._crop_input(inputs))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "crop": [list(pair) for pair in self.crop]}


@keras.utils.register_keras_serializable(package="apprentice_tf")
class AncillaryDepthwiseConv2D(_CroppedConv, keras.layers.DepthwiseConv2D):
    """The float DepthwiseConv2D twin of a low-precision DepthwiseConv2D (conv_fp in y = ...).

    Zhou et al., arXiv:1905.11781: y = dwconv_lp(x) + λ·dwconv_fp(x). A
    `keras.layers.DepthwiseConv2D` that may first crop its input (see `_CroppedConv`).

    Args:
      crop: ((top, bottom), (left, right)) rows/columns removed from the input first.
      *args, **kwargs: `keras.layers.DepthwiseConv2D`'s.
    """

    def __init__(self, *args: Any, crop: Crop = ((0, 0), (0, 0)), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crop = _check_crop("AncillaryDepthwiseConv2D", crop)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return super().call(self._crop_input(inputs))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "crop": [list(pair) for pair in self.crop]}


@keras.utils.register_keras_serializable(package="apprentice_tf")
class AncillaryBatchNormalization(keras.layers.BatchNormalization):
    """The ancillary branch's own BatchNormalization (``add_ancillary(branch_norm=True)``).

    The authors' EXP-Net form of Zhou et al. (arXiv:1905.11781): y = BN(conv_lp(x)) +
    λ·BN_fp(conv_fp(x)). A `keras.layers.BatchNormalization` with the settings of the
    low-precision conv's own BatchNormalization, and a distinct class so that `strip_ancillary`
    finds it.
    """


_TWINS = (AncillaryConv2D, AncillaryDepthwiseConv2D)
#: Every layer an ancillary branch adds besides its `AncillaryScale`.
_BRANCH_LAYERS = (*_TWINS, AncillaryBatchNormalization)


# ------------------------------------------------------------------------------------------------
# Finding and setting λ


def ancillary_scales(model: keras.Model) -> list[AncillaryScale]:
    """Every `AncillaryScale` layer in `model`, nested models included (a Distiller's student).

    Returns:
      The layers in model order, each once.
    """
    found: list[AncillaryScale] = []
    seen: set[int] = set()

    def visit(layer: Any) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, AncillaryScale):
            found.append(layer)
        for child in getattr(layer, "layers", None) or ():
            visit(child)

    visit(model)
    return found


def get_ancillary_scale(model: keras.Model) -> list[float]:
    """The current λ of every `AncillaryScale` layer in `model` (one value when λ is shared)."""
    return [float(layer.scale.numpy()) for layer in ancillary_scales(model)]


def set_ancillary_scale(model: keras.Model, value: float) -> None:
    """Assign λ = `value` in every `AncillaryScale` layer of `model`.

    Raises:
      ValueError: `value` is not a finite number >= 0, or `model` has no ancillary branch.
    """
    value = _checks.real("set_ancillary_scale", "value", value, 0)
    scales = ancillary_scales(model)
    if not scales:
        raise ValueError(_no_branches("set_ancillary_scale", model))
    for layer in scales:
        layer.scale.assign(value)


def _no_branches(owner: str, model: Any) -> str:
    return (
        f"{owner}: model '{getattr(model, 'name', model)}' has no ancillary branches "
        "(no AncillaryScale layer); pass the model returned by `add_ancillary` (or a model, "
        "e.g. a Distiller, that contains it)."
    )


# ------------------------------------------------------------------------------------------------
# add_ancillary


def _is_low_precision_conv(layer: keras.layers.Layer) -> bool:
    return (
        isinstance(layer, _QuantizeWrapper)
        and isinstance(layer.quantize_config, _WEIGHT_CONFIGS)
        and isinstance(layer.layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)
    )


def _activation_name(layer_config: dict) -> Any:
    """The activation stored in a (wrapped) layer's config, unwrapping tfmot's QuantizeAware."""
    activation = layer_config.get("activation", "linear")
    if isinstance(activation, dict) and activation.get("class_name") == "QuantizeAwareActivation":
        activation = activation["config"].get("activation", "linear")
    return activation


def _twin(inner: dict, inner_class: type, kernel_size: int | None, initializer: Any) -> Any:
    """The float twin of a wrapped conv from its config.

    Everything is copied (filters or depth multiplier, strides, padding, groups, use_bias,
    initializers, kernel/bias regularizers and constraints) except the name, the activation
    (linear), the activity regularizer (none), and, for the 1×1 variant, kernel size and dilation.
    """
    config = copy.deepcopy(inner)
    config["name"] = f"ancillary_{inner['name']}"
    config["activation"] = "linear"
    config.pop("activity_regularizer", None)
    crop: Crop = ((0, 0), (0, 0))
    if kernel_size == 1:
        if config["padding"] == "valid":
            pairs = zip(config["dilation_rate"], config["kernel_size"], strict=True)
            totals = [d * (k - 1) for d, k in pairs]
            crop = (
                (totals[0] // 2, totals[0] - totals[0] // 2),
                (totals[1] // 2, totals[1] - totals[1] // 2),
            )
        config["kernel_size"] = (1, 1)
        config["dilation_rate"] = (1, 1)
    depthwise = issubclass(inner_class, keras.layers.DepthwiseConv2D)
    if initializer is not None:
        config["depthwise_initializer" if depthwise else "kernel_initializer"] = (
            keras.initializers.serialize(keras.initializers.get(initializer))
        )
    twin_class = AncillaryDepthwiseConv2D if depthwise else AncillaryConv2D
    return twin_class.from_config({**config, "crop": crop})


def add_ancillary(
    model: keras.Model,
    kernel_size: int | None = None,
    per_layer_scale: bool = False,
    kernel_initializer: Any = None,
    branch_norm: bool = False,
    **quantize_kwargs: Any,
) -> keras.Model:
    """Quantize `model` and give each low-precision conv an ancillary full-precision twin.

    Zhou et al., "Progressive learning of low-precision networks" (arXiv:1905.11781): each
    low-precision Conv2D / DepthwiseConv2D output becomes

        y = conv_lp(x) + λ·conv_fp(x),

    conv_fp a float conv on the same input x with the same filters (depth multiplier), strides,
    padding, dilation, groups, bias setting, regularizers and constraints, and the same kernel
    size or 1×1
    (``kernel_size=1``; a 'valid' conv's 1×1 twin sees the centre pixel of each window). The sum
    feeds whatever consumed conv_lp(x) (its BatchNormalization). λ = 1 initially; drive it to 0
    with `AncillaryDecay`, then remove the twins with `strip_ancillary`.

    With ``branch_norm=True`` the branch has its own BatchNormalization and joins after the
    conv's, the form of the authors' published code (EXP-Net):

        y = BN(conv_lp(x)) + λ·BN_fp(conv_fp(x)),

    BN_fp an `AncillaryBatchNormalization` ``ancillary_bn_<conv name>`` with the settings of BN,
    the conv's only consumer; its consumers read the sum.

    Args:
      model: the float tf_keras model (as for `quantize_model`), or a model returned by
        `quantize_model` (then no `quantize_kwargs`). Not modified.
      kernel_size: None (twin has the conv's kernel size) or 1 (the 1×1 variant).
      per_layer_scale: False: one λ shared by all branches (one `AncillaryScale` layer
        ``ancillary_scale``); True: one λ per branch (``ancillary_scale_<conv name>``).
        `AncillaryDecay` drives them all alike.
      kernel_initializer: the twins' kernel initializer; None uses each conv's own (a fresh
        random draw, not a copy of its weights).
      branch_norm: False: the sum before the conv's BatchNormalization (one BN for both paths);
        True: each branch has its own BatchNormalization and the sum follows the conv's.
      **quantize_kwargs: `quantize_model`'s ``weight_bits``, ``activation_bits``,
        ``keep_first_last`` and ``skip``; pass the same to `quantize_model` to compare with the
        stripped model.

    Returns:
      A new functional model: `quantize_model`'s layers (same names, weights copied) plus the
      twins ``ancillary_<conv name>`` and the `AncillaryScale` layer(s). λ lives in those layers'
      non-trainable ``scale`` weight, so it is saved, loaded and restored by
      `keras.callbacks.BackupAndRestore` with the model.

    Raises:
      ValueError: a bad `kernel_size` or quantize argument, quantize arguments with an already
        quantized model, a model that already has ancillary branches, no low-precision
        Conv2D/DepthwiseConv2D (e.g. only Dense layers are low precision), a low-precision conv
        with its own non-linear activation (see the module docstring), a low-precision conv
        called more than once, or with ``branch_norm=True`` a low-precision conv whose output
        feeds anything but one BatchNormalization. Everything `quantize_model` raises.
    """
    _checks.keras_object("add_ancillary", "model", model, keras.Model)
    if isinstance(kernel_size, bool) or kernel_size not in _KERNEL_SIZES:
        raise ValueError(
            f"add_ancillary: `kernel_size` must be one of {_KERNEL_SIZES} (None: the conv's own "
            f"kernel size; 1: the 1x1 variant), received {kernel_size!r}."
        )
    for name, value in (("per_layer_scale", per_layer_scale), ("branch_norm", branch_norm)):
        if not isinstance(value, bool):
            raise ValueError(f"add_ancillary: `{name}` must be True or False, received {value!r}.")
    unknown = sorted(set(quantize_kwargs) - set(_QUANTIZE_ARGUMENTS))
    if unknown:
        raise ValueError(
            f"add_ancillary: unknown argument(s) {unknown}; the quantize_model arguments allowed "
            f"are {list(_QUANTIZE_ARGUMENTS)}."
        )
    if kernel_initializer is not None:
        try:
            keras.initializers.get(kernel_initializer)
        except ValueError as error:
            raise ValueError(
                "add_ancillary: `kernel_initializer` must be None or a Keras initializer, "
                f"received {kernel_initializer!r}."
            ) from error
    if ancillary_scales(model) or any(isinstance(layer, _BRANCH_LAYERS) for layer in model.layers):
        raise ValueError(
            f"add_ancillary: model '{model.name}' already has ancillary branches. Pass the float "
            "model (or `strip_ancillary(model)`)."
        )
    already_quantized = any(isinstance(layer, _QuantizeWrapper) for layer in model.layers)
    if already_quantized:
        if quantize_kwargs:
            raise ValueError(
                f"add_ancillary: model '{model.name}' is already quantized (it has tfmot "
                "QuantizeWrapper layers), so the quantize_model arguments "
                f"{sorted(quantize_kwargs)} cannot apply. Pass the float model with them, or "
                "the quantized model without."
            )
        if isinstance(model, keras.Sequential) or not model._is_graph_network:  # noqa: SLF001
            raise ValueError(
                f"add_ancillary: the quantized model '{model.name}' must be functional, received "
                f"a {type(model).__name__}. Pass the float model instead."
            )
        quantized = model
    else:
        quantized = quantize_model(model, **quantize_kwargs)

    targets = [layer for layer in quantized.layers if _is_low_precision_conv(layer)]
    if not targets:
        settings = quantize_kwargs or "already quantized"
        raise ValueError(
            f"add_ancillary: model '{model.name}' has no low-precision Conv2D or DepthwiseConv2D "
            f"({settings}); ancillary branches are added to low-precision convolutions only. "
            "Allowed: a model with at least one Conv2D/DepthwiseConv2D that quantize_model makes "
            "low precision (the first conv stays float with keep_first_last=True)."
        )
    config = quantized.get_config()
    by_name = {layer["name"]: layer for layer in config["layers"]}
    nonlinear = [
        layer.layer.name
        for layer in targets
        if _activation_name(by_name[layer.name]["config"]["layer"]["config"])
        not in ("linear", None)
    ]
    if nonlinear:
        raise ValueError(
            f"add_ancillary: low-precision conv layer(s) {nonlinear} apply a non-linear "
            "activation inside the layer (their own activation=, or a ReLU directly after them "
            "that quantize_model folds in). The ancillary term must be added before the "
            "activation, which is not supported. Allowed: convs with activation='linear' "
            "followed by e.g. BatchNormalization; put a BatchNormalization between conv and "
            "ReLU, or keep those layers float with skip=."
        )
    shared = [layer.name for layer in targets if len(by_name[layer.name]["inbound_nodes"]) != 1]
    if shared:
        raise ValueError(
            f"add_ancillary: low-precision conv layer(s) {shared} are called more than once "
            "(shared layers); each must be called exactly once."
        )
    # The point where each branch joins: the conv's output, or (branch_norm) its BatchNorm's.
    norms: dict[str, dict] = {}
    if branch_norm:
        for layer in targets:
            readers = [
                entry
                for entry in config["layers"]
                if layer.name in _graph.inbound_names(entry, "add_ancillary")
            ]
            inner = readers[0] if len(readers) == 1 else None
            if inner is not None and inner["class_name"] == "QuantizeWrapperV2":
                inner = inner["config"]["layer"]
            if inner is None or inner["class_name"] != "BatchNormalization":
                raise ValueError(
                    f"add_ancillary: branch_norm=True joins each ancillary branch after its "
                    f"conv's BatchNormalization, but the output of low-precision conv "
                    f"'{layer.layer.name}' feeds {[r['name'] for r in readers]}. Allowed: convs "
                    "followed by exactly one BatchNormalization; use branch_norm=False, or keep "
                    "the layer float with skip=."
                )
            norms[layer.name] = readers[0]
    joins = {
        layer.name: norms[layer.name]["name"] if branch_norm else layer.name for layer in targets
    }
    existing = set(by_name)
    new_names = [f"ancillary_{layer.layer.name}" for layer in targets]
    if branch_norm:
        new_names += [f"ancillary_bn_{layer.layer.name}" for layer in targets]
    new_names += (
        [f"ancillary_scale_{layer.layer.name}" for layer in targets]
        if per_layer_scale
        else ["ancillary_scale"]
    )
    clashes = sorted(existing & set(new_names))
    if clashes:
        raise ValueError(
            f"add_ancillary: model '{model.name}' already has layer(s) named {clashes}, which "
            "add_ancillary needs for the ancillary branches. Rename them."
        )

    # Consumers of each join point (wrapper or its BatchNorm) read the scaled sum instead.
    scale_names = [
        f"ancillary_scale_{layer.layer.name}" if per_layer_scale else "ancillary_scale"
        for layer in targets
    ]
    nodes_per_scale: dict[str, int] = {}
    mapping: dict[tuple[str, int], list] = {}
    for layer, scale_name in zip(targets, scale_names, strict=True):
        node = nodes_per_scale.get(scale_name, 0)
        nodes_per_scale[scale_name] = node + 1
        mapping[(joins[layer.name], 0)] = [scale_name, node, 0]
    _graph.rewire(config, mapping)

    scale_configs: dict[str, dict] = {}
    for layer, scale_name in zip(targets, scale_names, strict=True):
        wrapper_config = by_name[layer.name]
        inner = wrapper_config["config"]["layer"]
        twin = _twin(
            inner["config"],
            type(layer.layer),
            kernel_size,
            kernel_initializer,
        )
        twin_config = keras.layers.serialize(twin)
        twin_config["name"] = twin.name
        twin_config["inbound_nodes"] = copy.deepcopy(wrapper_config["inbound_nodes"])
        position = config["layers"].index(wrapper_config) + 1
        config["layers"].insert(position, twin_config)
        branch_end = twin.name
        if branch_norm:
            norm = norms[layer.name]
            inner_norm = norm["config"].get("layer", norm)  # inside a QuantizeWrapper or not
            branch_end = f"ancillary_bn_{layer.layer.name}"
            norm_config = {
                **keras.layers.serialize(
                    AncillaryBatchNormalization.from_config(
                        {**inner_norm["config"], "name": branch_end}
                    )
                ),
                "name": branch_end,
                "inbound_nodes": [[_graph.reference(twin.name)]],
            }
            config["layers"].insert(position + 1, norm_config)
            position = config["layers"].index(norm) + 1  # the sum follows the conv's BatchNorm
        if scale_name not in scale_configs:
            scale_config = keras.layers.serialize(AncillaryScale(name=scale_name))
            scale_config["name"] = scale_name
            scale_config["inbound_nodes"] = []
            scale_configs[scale_name] = scale_config
            config["layers"].insert(position + 1, scale_config)
        scale_configs[scale_name]["inbound_nodes"].append(
            [_graph.reference(joins[layer.name]), _graph.reference(branch_end)]
        )
    return _graph.rebuild(config, quantized)


# ------------------------------------------------------------------------------------------------
# strip_ancillary


def strip_ancillary(model: keras.Model, force: bool = False) -> keras.Model:
    """Remove the ancillary branches: exactly the low-precision network, with its trained weights.

    Zhou et al., arXiv:1905.11781: once λ = 0, y = conv_lp(x) + 0·conv_fp(x) = conv_lp(x), so
    dropping every conv_fp (with its `AncillaryBatchNormalization`, if any) and `AncillaryScale`
    leaves a network with the outputs of the expanded one. The result has the layer names, order
    and weight shapes of ``quantize_model(float_model, ...)`` with the arguments given to
    `add_ancillary`, and the expanded model's weights for those layers (kernels, quantizer
    ranges, BatchNorm statistics), so `apprentice_tf.tflite.convert` writes the same tensors as
    for the plain quantized model.

    Args:
      model: a model returned by `add_ancillary` (or loaded from one). Not modified.
      force: strip even though some λ ≠ 0 (with a warning: the outputs change).

    Returns:
      A new functional model without ancillary layers.

    Raises:
      ValueError: `model` has no ancillary branches, has λ ≠ 0 and ``force`` is False, or uses
        a twin's output elsewhere than in its `AncillaryScale`.
    """
    _checks.keras_object("strip_ancillary", "model", model, keras.Model)
    if not isinstance(force, bool):
        raise ValueError(f"strip_ancillary: `force` must be True or False, received {force!r}.")
    scales = [layer for layer in model.layers if isinstance(layer, AncillaryScale)]
    if not scales:
        raise ValueError(_no_branches("strip_ancillary", model))
    values = {layer.name: float(layer.scale.numpy()) for layer in scales}
    nonzero = {name: value for name, value in values.items() if value != 0.0}
    if nonzero:
        if not force:
            raise ValueError(
                f"strip_ancillary: λ is not 0 in {nonzero}; removing the ancillary branches now "
                "would change the model's outputs. Train with AncillaryDecay until λ = 0 "
                "(allowed: every λ exactly 0), or pass force=True."
            )
        warnings.warn(
            f"strip_ancillary: removing ancillary branches while λ = {nonzero}: the stripped "
            "model's outputs (and accuracy) differ from the expanded model's.",
            UserWarning,
            stacklevel=2,
        )
    config = model.get_config()
    branch_layers = {layer.name for layer in model.layers if isinstance(layer, _BRANCH_LAYERS)}
    removed = branch_layers | set(values)
    mapping: dict[tuple[str, int], list] = {}
    for layer in config["layers"]:
        if layer["name"] not in values:
            continue
        for index, node in enumerate(layer["inbound_nodes"]):
            low, ancillary = node
            if ancillary[0] not in branch_layers or low[0] in removed:
                raise ValueError(
                    f"strip_ancillary: AncillaryScale '{layer['name']}' is not applied to "
                    f"[low-precision output, ancillary branch] (received {node}); the model was "
                    "not made by add_ancillary."
                )
            mapping[(layer["name"], index)] = low
    config["layers"] = [layer for layer in config["layers"] if layer["name"] not in removed]
    _graph.rewire(config, mapping)
    dangling = sorted(
        {
            ref[0]
            for layer in config["layers"]
            for node in layer.get("inbound_nodes") or []
            for ref in node
            if ref[0] in removed
        }
        | {ref[0] for ref in config["output_layers"] if ref[0] in removed}
    )
    if dangling:
        raise ValueError(
            f"strip_ancillary: layer(s) {dangling} of model '{model.name}' are used outside "
            "their ancillary branch, so they cannot be removed."
        )
    return _graph.rebuild(config, model)


# ------------------------------------------------------------------------------------------------
# AncillaryDecay


@keras.utils.register_keras_serializable(package="apprentice_tf")
class AncillaryDecay(keras.callbacks.Callback):
    """Keras callback driving the ancillary scale λ from `start_value` to exactly 0 at `end_step`.

    Zhou et al., "Progressive learning of low-precision networks" (arXiv:1905.11781): λ starts
    at 1 and decays to 0, after which training continues with λ = 0. The paper's decay law is not
    available to us, so it is a parameter. With t the step (optimizer updates done, restored by
    `BackupAndRestore`) or the epoch (0-based) and T = `end_step`, for t < T:

    - ``linear``:      λ = λ₀·(1 − t/T)
    - ``cosine``:      λ = λ₀·½(1 + cos(π·t/T))
    - ``exponential``: λ = λ₀·r^(t/T), r = `decay_rate` (default 0.01, the fraction left just
      before T; λ then snaps to 0 at T)
    - ``step``:        λ = λ₀·r^⌊t/s⌋, r = `decay_rate` (default 0.1), s = `step_value`
      (default ⌈T/4⌉); s ≥ T gives a single switch from λ₀ to 0 at T

    and λ = 0 exactly for t ≥ T. With ``by="step"`` λ is set before every training batch from
    ``model.optimizer.iterations``; with ``by="epoch"`` before every epoch. The callback sets
    every `AncillaryScale` in the model (nested models included, so it works on a `Distiller`
    holding the expanded student) and writes λ into ``logs["ancillary_scale"]`` at each epoch's
    end (so `History`, `CSVLogger` and TensorBoard record it if they come after it).

    Args:
      schedule: one of `SCHEDULES`.
      end_step: T > 0, in steps or epochs (see `by`).
      by: "step" or "epoch".
      start_value: λ₀ > 0 (paper: 1).
      decay_rate: r in (0, 1), for "exponential" and "step" only.
      step_value: s > 0, the interval between drops, for "step" only.

    Raises:
      ValueError: an argument outside what is listed above (the message names it).
    """

    def __init__(
        self,
        schedule: str = "linear",
        *,
        end_step: int,
        by: str = "step",
        start_value: float = 1.0,
        decay_rate: float | None = None,
        step_value: int | None = None,
    ) -> None:
        super().__init__()
        owner = "AncillaryDecay"
        _checks.choice(owner, "schedule", schedule, SCHEDULES)
        _checks.choice(owner, "by", by, _BY)
        self.schedule = schedule
        self.end_step = _checks.integer(owner, "end_step", end_step, 1)
        self.by = by
        self.start_value = _checks.real(owner, "start_value", start_value, 0, low_open=True)
        if decay_rate is not None:
            if schedule not in ("exponential", "step"):
                raise ValueError(
                    f"{owner}: `decay_rate` applies to the 'exponential' and 'step' schedules "
                    f"only, received decay_rate={decay_rate!r} with schedule={schedule!r}."
                )
            decay_rate = _checks.real(
                owner, "decay_rate", decay_rate, 0, 1, low_open=True, high_open=True
            )
        if step_value is not None:
            if schedule != "step":
                raise ValueError(
                    f"{owner}: `step_value` applies to the 'step' schedule only, received "
                    f"step_value={step_value!r} with schedule={schedule!r}."
                )
            step_value = _checks.integer(owner, "step_value", step_value, 1)
        self.decay_rate = decay_rate
        self.step_value = step_value
        self._scales: list[AncillaryScale] = []
        self._last: float | None = None

    def value(self, t: float) -> float:
        """λ at step or epoch `t` (see the class docstring); exactly 0.0 for t ≥ `end_step`."""
        end = self.end_step
        if t >= end:
            return 0.0
        t = max(float(t), 0.0)
        if self.schedule == "linear":
            fraction = 1.0 - t / end
        elif self.schedule == "cosine":
            fraction = 0.5 * (1.0 + math.cos(math.pi * t / end))
        elif self.schedule == "exponential":
            rate = 0.01 if self.decay_rate is None else self.decay_rate
            fraction = rate ** (t / end)
        else:
            rate = 0.1 if self.decay_rate is None else self.decay_rate
            interval = self.step_value or math.ceil(end / 4)
            fraction = rate ** math.floor(t / interval)
        return self.start_value * fraction

    # Keras hooks --------------------------------------------------------------------------

    def _assign(self, value: float) -> None:
        if not self._scales:
            self._scales = ancillary_scales(self.model)
            if not self._scales:
                raise ValueError(_no_branches("AncillaryDecay", self.model))
        if value != self._last:
            for layer in self._scales:
                layer.scale.assign(value)
            self._last = value

    def _step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                "AncillaryDecay: by='step' reads model.optimizer.iterations, but model "
                f"'{self.model.name}' has no optimizer. Compile it first, or use by='epoch'."
            )
        return int(optimizer.iterations.numpy())

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self._scales = []
        self._last = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._scales = ancillary_scales(self.model)
        if not self._scales:
            raise ValueError(_no_branches("AncillaryDecay", self.model))
        self._last = None  # BackupAndRestore may have changed λ and the step since last time

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self.by == "step":
            self._assign(self.value(self._step()))

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.by == "epoch":
            self._assign(self.value(epoch))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None and self._scales:
            logs["ancillary_scale"] = float(self._scales[0].scale.numpy())

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "end_step": self.end_step,
            "by": self.by,
            "start_value": self.start_value,
            "decay_rate": self.decay_rate,
            "step_value": self.step_value,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AncillaryDecay:
        """The callback `get_config` describes."""
        return cls(**config)
