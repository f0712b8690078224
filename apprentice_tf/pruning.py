"""Pruning baselines for HAKD: magnitude pruning (tfmot) and channel pruning.

Turner et al. ("HAKD: Hardware Aware Knowledge Distillation", arXiv 1810.10460) compare the
hardware-aware student with pruned networks at equal latency:

* **Magnitude pruning** (`magnitude_prune`), the first stage of Deep Compression (Han et al.,
  ICLR 2016): the weights of smallest |w| are set to zero by tfmot's `prune_low_magnitude`
  during training (Zhu & Gupta 2017's polynomial sparsity schedule, or a constant one), then
  `strip` removes the wrappers. The kernels keep their dense shapes: a dense TFLite kernel runs
  no faster, which is the paper's point, while the file compresses better.
* **Channel pruning** (`channel_prune`): whole filters are removed, so the network becomes a
  narrower network with the same topology and genuinely fewer multiply-adds (as Fisher pruning,
  Theis et al. 2018, which HAKD also compares with, removes whole channels). Filters are kept by
  L1 norm (Li et al., ICLR 2017, "Pruning Filters for Efficient ConvNets") and their weights
  copied; the pruned network is then fine-tuned (distilled) like any student.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow_model_optimization as tfmot

from apprentice_tf import _checks, _graph
from apprentice_tf.compat import keras

__all__ = [
    "magnitude_prune",
    "strip",
    "weight_sparsity",
    "total_sparsity",
    "channel_prune",
]

_PRUNABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def _kernel(layer: keras.layers.Layer) -> Any:
    inner = layer.layer if isinstance(layer, keras.layers.Wrapper) else layer
    if isinstance(inner, keras.layers.DepthwiseConv2D):
        return inner.depthwise_kernel
    if isinstance(inner, keras.layers.Conv2D | keras.layers.Dense):
        return inner.kernel
    return None


def _functional(model: keras.Model, function: str) -> keras.Model:
    _checks.keras_object(function, "model", model, keras.Model)
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                f"{function}: Sequential model '{model.name}' has no known input shape. Start "
                "it with `keras.Input(shape=...)` or build it first."
            )
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not model._is_graph_network:  # noqa: SLF001
        raise ValueError(
            f"{function}: model '{model.name}' is a subclassed model; rebuild it with the "
            "functional API."
        )
    return model


def magnitude_prune(
    model: keras.Model,
    target_sparsity: float,
    *,
    end_step: int | None = None,
    begin_step: int = 0,
    initial_sparsity: float = 0.0,
    frequency: int = 100,
    skip: Iterable[str] = (),
) -> tuple[keras.Model, list[keras.callbacks.Callback]]:
    """Wrap the Conv2D, DepthwiseConv2D and Dense layers of a copy of `model` for magnitude
    pruning with tfmot (Deep Compression's first stage, Han et al. 2016).

    Every `frequency` steps, each wrapped kernel's smallest-|w| weights are masked to zero so
    that its sparsity follows the schedule: with `end_step`, tfmot's `PolynomialDecay` (Zhu &
    Gupta 2017)

        s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^3,   t_0 <= t <= t_1,

    from `initial_sparsity` s_i to `target_sparsity` s_f; without it, `ConstantSparsity` s_f
    from `begin_step` on.

    Args:
      model: a float Sequential or functional tf_keras model (not modified; weights copied).
      target_sparsity: fraction of zero weights per pruned kernel, in [0, 1).
      end_step: last step of the polynomial schedule (None: constant sparsity).
      begin_step: first pruning step.
      initial_sparsity: s_i of the polynomial schedule.
      frequency: steps between mask updates.
      skip: names of layers to leave dense (e.g. the first conv and the logits).

    Returns:
      (pruned model, callbacks): compile and fit the model with the callbacks
      (``tfmot.sparsity.keras.UpdatePruningStep()``, required by tfmot), then `strip` it.

    Raises:
      ValueError: a fraction out of range, a bad step, an unknown `skip` name, or no layer to
        prune.
    """
    function = "magnitude_prune"
    target = _checks.real(function, "target_sparsity", target_sparsity, 0, 1, high_open=True)
    initial = _checks.real(function, "initial_sparsity", initial_sparsity, 0, 1, high_open=True)
    for argument, value, minimum in (("begin_step", begin_step, 0), ("frequency", frequency, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"{function}: `{argument}` must be an integer >= {minimum}, received {value!r}."
            )
    if end_step is not None and (
        isinstance(end_step, bool) or not isinstance(end_step, int) or end_step <= begin_step
    ):
        raise ValueError(
            f"{function}: `end_step` must be None or an integer > begin_step={begin_step}, "
            f"received {end_step!r}."
        )
    model = _functional(model, function)
    skip = {skip} if isinstance(skip, str) else set(skip)
    names = {layer.name for layer in model.layers}
    if skip - names:
        raise ValueError(
            f"{function}: `skip` names {sorted(skip - names)}, which are not layers of model "
            f"'{model.name}'. Its layers are: {sorted(names)}."
        )
    targets = {
        layer.name
        for layer in model.layers
        if isinstance(layer, _PRUNABLE) and layer.name not in skip
    }
    if not targets:
        raise ValueError(
            f"{function}: model '{model.name}' has no Conv2D, DepthwiseConv2D or Dense layer "
            f"left to prune (skip={sorted(skip)})."
        )
    sparsity = tfmot.sparsity.keras
    if end_step is None:
        schedule = sparsity.ConstantSparsity(target, begin_step=begin_step, frequency=frequency)
    else:
        schedule = sparsity.PolynomialDecay(
            initial_sparsity=initial,
            final_sparsity=target,
            begin_step=begin_step,
            end_step=end_step,
            frequency=frequency,
        )

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        clone = layer.__class__.from_config(layer.get_config())
        if layer.name in targets:
            return sparsity.prune_low_magnitude(clone, pruning_schedule=schedule)
        return clone

    pruned = keras.models.clone_model(model, clone_function=wrap)
    for source, target_layer in zip(model.layers, pruned.layers, strict=True):
        inner = target_layer.layer if isinstance(target_layer, keras.layers.Wrapper) else None
        (inner or target_layer).set_weights(source.get_weights())
    return pruned, [sparsity.UpdatePruningStep()]


def strip(model: keras.Model) -> keras.Model:
    """Remove tfmot's pruning wrappers (``tfmot.sparsity.keras.strip_pruning``).

    The returned model has plain layers whose kernels hold the zeros; convert it to TFLite or
    distil it like any other model.
    """
    _checks.keras_object("strip", "model", model, keras.Model)
    return tfmot.sparsity.keras.strip_pruning(model)


def weight_sparsity(model: keras.Model) -> dict[str, float]:
    """Fraction of exactly-zero weights in the kernel of each Conv2D/DepthwiseConv2D/Dense layer
    (wrapped or not), keyed by layer name."""
    _checks.keras_object("weight_sparsity", "model", model, keras.Model)
    result = {}
    for layer in model.layers:
        kernel = _kernel(layer)
        if kernel is not None:
            values = np.asarray(kernel)
            result[layer.name] = float(np.mean(values == 0))
    return result


def total_sparsity(model: keras.Model, skip: Iterable[str] = ()) -> float:
    """Zero weights / all weights over the kernels `weight_sparsity` counts, less `skip`."""
    _checks.keras_object("total_sparsity", "model", model, keras.Model)
    skipped = set(skip)
    zeros = total = 0
    for layer in model.layers:
        kernel = _kernel(layer)
        if kernel is not None and layer.name not in skipped:
            values = np.asarray(kernel)
            zeros += int(np.sum(values == 0))
            total += values.size
    if total == 0:
        raise ValueError(f"total_sparsity: model '{model.name}' has no kernel to count.")
    return zeros / total


# ----------------------------------------------------------------------------------------------
# Channel pruning


class _Spaces:
    """Union-find over "channel spaces": sets of tensors whose channels must be pruned alike.

    A Conv2D output opens a new space; BatchNormalization, activations, pooling and depthwise
    convolutions (multiplier 1) keep their input's space; Add-type merges tie their inputs'
    spaces into one; Concatenate lays spaces side by side (a tensor is a list of segments).
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.prunable: list[bool] = []
        self.divisor: list[int] = []
        self.scores: list[np.ndarray] = []

    def new(self, size: int, prunable: bool, scores: np.ndarray | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.prunable.append(prunable)
        self.divisor.append(1)
        self.scores.append(np.zeros(size) if scores is None else np.asarray(scores, float))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        self.prunable[a] = self.prunable[a] and self.prunable[b]
        self.divisor[a] = math.lcm(self.divisor[a], self.divisor[b])
        self.scores[a] = self.scores[a] + self.scores[b]

    def freeze(self, i: int) -> None:
        self.prunable[self.find(i)] = False

    def require_divisor(self, i: int, d: int) -> None:
        root = self.find(i)
        self.divisor[root] = math.lcm(self.divisor[root], d)


_MERGE = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
)


def _passes_channels(layer: keras.layers.Layer) -> bool:
    """A single-input layer that maps channel c to channel c, with only per-channel weights."""
    try:
        same = layer.input_shape[-1] == layer.output_shape[-1]
    except (AttributeError, RuntimeError):
        return False
    channels = layer.output_shape[-1]
    return same and all(tuple(w.shape) == (channels,) for w in layer.weights)


def channel_prune(
    model: keras.Model,
    keep_fraction: float,
    *,
    min_channels: int = 1,
    skip: Iterable[str] = (),
    copy_weights: bool = True,
) -> keras.Model:
    """A narrower copy of `model`: each Conv2D keeps round(keep_fraction * filters) filters.

    The architecture is rebuilt from `model.get_config()` with fewer filters per Conv2D (the
    Dense logits layer and the input channels stay), then the kept filters' weights are copied.
    Filters are ranked by L1 norm, ||W_j||_1 = sum |W[..., j]| (Li et al., ICLR 2017); channels
    that must stay aligned (the inputs of a residual Add) are ranked together by the sum of
    their producers' norms, so a ResNet's shortcut and residual branch keep the same channels.
    Concatenations (DenseNet) keep each part's own selection.

    Weights are copied for Conv2D (groups = 1), DepthwiseConv2D (multiplier 1), Dense and every
    layer with per-channel weights (BatchNormalization). A layer it cannot slice (a grouped
    Conv2D, a depthwise multiplier > 1, Flatten before Dense, ...) keeps the fresh
    initialisation of the rebuilt model, with a warning naming it; the pruned network is meant
    to be fine-tuned either way. Around a depthwise multiplier > 1 or an unknown layer the
    channels are not pruned.

    Args:
      model: a Sequential or functional tf_keras model.
      keep_fraction: fraction of filters kept per Conv2D, in (0, 1].
      min_channels: lower bound of every pruned channel count.
      skip: Conv2D layer names whose filters are all kept.
      copy_weights: False returns the narrower architecture freshly initialised.

    Returns:
      A new functional model with the same layer names and fewer parameters.

    Raises:
      ValueError: `keep_fraction` out of range, an unknown `skip` name, shared layers, or a
        subclassed model.
    """
    function = "channel_prune"
    keep = _checks.real(function, "keep_fraction", keep_fraction, 0, 1, low_open=True)
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(
            f"{function}: `min_channels` must be an integer >= 1, received {min_channels!r}."
        )
    model = _functional(model, function)
    skip = {skip} if isinstance(skip, str) else set(skip)
    names = {layer.name for layer in model.layers}
    if skip - names:
        raise ValueError(
            f"{function}: `skip` names {sorted(skip - names)}, which are not layers of model "
            f"'{model.name}'."
        )
    config = model.get_config()
    layer_configs = {entry["name"]: entry for entry in config["layers"]}
    spaces = _Spaces()
    segments: dict[str, list[int]] = {}  # layer name -> spaces of its output's channels, in order

    def opaque(layer: keras.layers.Layer, inputs: list[str]) -> list[int]:
        for name in inputs:
            for space in segments[name]:
                spaces.freeze(space)
        return [spaces.new(int(layer.output_shape[-1]), prunable=False)]

    for layer in model.layers:
        inputs = _graph.inbound_names(layer_configs[layer.name], "channel_prune")
        in_segments = [s for name in inputs for s in segments[name]]
        if isinstance(layer, keras.layers.InputLayer):
            shape = layer.output_shape[0] if isinstance(layer.output_shape, list) else None
            channels = int((shape or layer.output_shape)[-1])
            segments[layer.name] = [spaces.new(channels, prunable=False)]
        elif type(layer) is keras.layers.Conv2D:
            kernel = np.asarray(layer.kernel)
            norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)
            space = spaces.new(layer.filters, prunable=layer.name not in skip, scores=norms)
            if layer.groups > 1:
                spaces.require_divisor(space, layer.groups)
                for s in in_segments:
                    spaces.require_divisor(s, layer.groups)
            segments[layer.name] = [space]
        elif isinstance(layer, keras.layers.DepthwiseConv2D) and layer.depth_multiplier == 1:
            segments[layer.name] = list(in_segments)
        elif isinstance(layer, _MERGE):
            first = segments[inputs[0]]
            if all(len(segments[name]) == len(first) for name in inputs):
                for name in inputs[1:]:
                    for a, b in zip(first, segments[name], strict=True):
                        spaces.union(a, b)
                segments[layer.name] = list(first)
            else:
                segments[layer.name] = opaque(layer, inputs)
        elif isinstance(layer, keras.layers.Concatenate) and layer.axis in (-1, 3):
            segments[layer.name] = list(in_segments)
        elif isinstance(layer, keras.layers.Dense) and len(inputs) == 1:
            # The Dense output (logits) is never pruned; its input follows its producer.
            segments[layer.name] = [spaces.new(layer.units, prunable=False)]
        elif len(inputs) == 1 and _passes_channels(layer):
            segments[layer.name] = list(in_segments)
        else:
            segments[layer.name] = opaque(layer, inputs)

    # New size and kept channels of every space (shared by all its members).
    kept: dict[int, np.ndarray] = {}
    for space in range(len(spaces.parent)):
        root = spaces.find(space)
        if root in kept:
            continue
        size, divisor = spaces.size[root], spaces.divisor[root]
        if spaces.prunable[root] and keep < 1:
            new = max(min_channels, int(round(keep * size)))
            new = min(size, max(divisor, int(round(new / divisor)) * divisor))
        else:
            new = size
        order = np.argsort(-spaces.scores[root], kind="stable")[:new]
        kept[root] = np.sort(order)

    def indices(name: str) -> np.ndarray:
        offset, parts = 0, []
        for space in segments[name]:
            parts.append(offset + kept[spaces.find(space)])
            offset += spaces.size[space]
        return np.concatenate(parts)

    def spaces_width(name: str) -> int:
        return sum(spaces.size[space] for space in segments[name])

    for entry in config["layers"]:
        if entry["class_name"] == "Conv2D":
            entry["config"]["filters"] = int(len(kept[spaces.find(segments[entry["name"]][0])]))
    pruned = keras.Model.from_config(config)
    if not copy_weights:
        return pruned

    reinitialised = []
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        target = pruned.get_layer(layer.name)
        inputs = _graph.inbound_names(layer_configs[layer.name], "channel_prune")
        out_idx = indices(layer.name)
        in_idx = indices(inputs[0]) if len(inputs) == 1 else None
        if type(layer) is keras.layers.Conv2D and layer.groups == 1:
            new = [weights[0][:, :, in_idx][..., out_idx]] + [b[out_idx] for b in weights[1:]]
        elif isinstance(layer, keras.layers.DepthwiseConv2D) and layer.depth_multiplier == 1:
            new = [weights[0][:, :, in_idx]] + [b[in_idx] for b in weights[1:]]
        elif isinstance(layer, keras.layers.Dense) and in_idx is not None:
            new = [weights[0][in_idx]] + weights[1:]
        elif all(w.ndim == 1 and w.shape[0] == spaces_width(layer.name) for w in weights):
            new = [w[out_idx] for w in weights]  # per-channel weights (BatchNormalization)
        else:
            new = weights  # kept as is when the rebuilt layer has the same shapes
        shapes = [tuple(w.shape) for w in target.get_weights()]
        if [tuple(w.shape) for w in new] == shapes:
            target.set_weights(new)
        else:
            reinitialised.append(layer.name)
    if reinitialised:
        warnings.warn(
            f"channel_prune: kept the fresh initialisation of {reinitialised} (their weights "
            "cannot be sliced channel-wise); fine-tune the pruned model.",
            stacklevel=2,
        )
    return pruned
