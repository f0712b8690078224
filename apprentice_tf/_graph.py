"""Functional-model surgery: who feeds whom, serialised tensor references, rebuilding.

Two views of a functional tf_keras model are used:

- the live graph: `inbound` (the layers a layer reads) and `consumers` (the layers that read
  it), through Keras's nodes;
- the serialised config (``model.get_config()``), edited and rebuilt with `rebuild`: a tensor
  reference there is ``[layer_name, node_index, tensor_index, kwargs]`` (`reference`), and
  `rename_references` / `rewire` point references at other layers.

`rebuild` runs ``from_config`` inside tfmot's ``quantize_scope`` (apprentice_tf's own classes are
registered with Keras, so they resolve by name) and copies the weights of every layer that keeps
its name.
"""

from __future__ import annotations

from typing import Any

import tensorflow_model_optimization as tfmot

from apprentice_tf.compat import keras, tf

__all__ = [
    "inbound",
    "consumers",
    "inbound_names",
    "reference",
    "is_reference",
    "rename_references",
    "rewire",
    "rebuild",
]


def inbound(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers whose outputs `layer` reads, over all the nodes it is called at."""
    return [
        source
        for node in layer._inbound_nodes  # noqa: SLF001
        for source in tf.nest.flatten(node.inbound_layers)
    ]


def consumers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers that read `layer`'s output, one per call."""
    return [node.outbound_layer for node in layer._outbound_nodes]  # noqa: SLF001


def inbound_names(layer_config: dict, owner: str) -> list[str]:
    """Names of the layers a serialised layer reads; refuses a layer called more than once.

    Args:
      layer_config: one entry of a functional config's ``"layers"``.
      owner: the public function doing the surgery, for the message.
    """
    nodes = layer_config.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise ValueError(
            f"{owner}: layer '{layer_config['name']}' is shared (called {len(nodes)} "
            f"times); {owner} supports each layer called once."
        )
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3-style serialisation
        raise ValueError(f"{owner}: unsupported model config format.")
    return [entry[0] for entry in node]


def reference(name: str, node: int = 0) -> list:
    """The serialised reference to the first output of layer `name` at call `node`."""
    return [name, node, 0, {}]


def is_reference(value: Any) -> bool:
    """A serialised tensor reference: ``[layer_name, node_index, tensor_index, ...]``."""
    return (
        isinstance(value, list)
        and len(value) >= 3
        and isinstance(value[0], str)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:3])
    )


def rename_references(value: Any, renamed: dict[str, str]) -> None:
    """Point every tensor reference inside `value` (in place) from a layer to its new name.

    Handles both layouts of a functional config: a node as a list of references (most layers)
    and a node as one reference whose call keywords hold further references (operator layers,
    ``TFOpLambda``: ``x * y`` is ``["x", 0, 0, {"y": ["y", 0, 0]}]``).
    """
    if is_reference(value):
        value[0] = renamed.get(value[0], value[0])
        for rest in value[3:]:
            rename_references(rest, renamed)
    elif isinstance(value, list):
        for item in value:
            rename_references(item, renamed)
    elif isinstance(value, dict):
        for item in value.values():
            rename_references(item, renamed)


def rewire(config: dict, mapping: dict[tuple[str, int], list]) -> None:
    """Point every reference to a (layer, node) in `mapping` at its [layer, node, tensor] value."""
    for layer in config["layers"]:
        for node in layer.get("inbound_nodes") or []:
            for i, ref in enumerate(node):
                target = mapping.get((ref[0], ref[1]))
                if target is not None:
                    node[i] = [*target[:3], *ref[3:]]
    outputs = config["output_layers"]
    for i, ref in enumerate(outputs):
        target = mapping.get((ref[0], ref[1]))
        if target is not None:
            outputs[i] = list(target[:3])


def rebuild(config: dict, source: keras.Model) -> keras.Model:
    """A functional model from `config`, with the weights of `source`'s same-named layers.

    Layers of `config` that `source` does not have (new ones) keep their initial weights.
    """
    with tfmot.quantization.keras.quantize_scope():
        model = keras.Model.from_config(config)
    for layer in model.layers:
        try:
            original = source.get_layer(layer.name)
        except ValueError:
            continue
        layer.set_weights(original.get_weights())
    return model
