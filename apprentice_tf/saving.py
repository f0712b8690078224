"""Saving and loading: the one module that knows every class apprentice_tf serialises.

`custom_objects()` lists them (quantization configs and quantizers, the progressive-learning
layers and callback, the `Distiller` and its distillation terms), keyed by the names Keras stores
them under; `quantize_scope(*extra)` is tfmot's ``quantize_scope`` extended with them, and with
the user's own classes, as tfmot's takes them::

    with atf.quantize_scope():
        model = keras.models.load_model("student.keras")
    with atf.quantize_scope(MyLayer, {"MyTerm": MyTerm}):
        distiller = keras.models.load_model("distiller.keras")

Every class is also registered with Keras (package "apprentice_tf"), so a model that only
uses them loads by name; the scope adds tfmot's own wrapper classes and the user's classes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import tensorflow_model_optimization as tfmot

from apprentice_tf.distiller import Distiller
from apprentice_tf.losses import AttentionTransfer
from apprentice_tf.progressive import (
    AncillaryBatchNormalization,
    AncillaryConv2D,
    AncillaryDecay,
    AncillaryDepthwiseConv2D,
    AncillaryScale,
)
from apprentice_tf.quantize_configs import (
    ActivationQuantizeConfig,
    NBitQuantizeConfig,
    NoOpQuantizeConfig,
    TernaryQuantizeConfig,
)
from apprentice_tf.quantizers import (
    ActivationQuantizer,
    TernaryWeightQuantizer,
    UniformWeightQuantizer,
)

__all__ = ["custom_objects", "quantize_scope", "SERIALISABLE"]

#: Every class apprentice_tf adds to a saved model or config.
SERIALISABLE: tuple[type, ...] = (
    TernaryQuantizeConfig,
    NBitQuantizeConfig,
    ActivationQuantizeConfig,
    NoOpQuantizeConfig,
    TernaryWeightQuantizer,
    UniformWeightQuantizer,
    ActivationQuantizer,
    AncillaryScale,
    AncillaryConv2D,
    AncillaryDepthwiseConv2D,
    AncillaryBatchNormalization,
    AncillaryDecay,
    Distiller,
    AttentionTransfer,
)


def custom_objects() -> dict[str, type]:
    """Every class apprentice_tf adds to a saved model: {name: class}.

    Each class appears under its plain name and under the name Keras registers it with
    (``"apprentice_tf>TernaryQuantizeConfig"``), for ``custom_objects=`` arguments; prefer
    `quantize_scope()`.
    """
    objects: dict[str, type] = {cls.__name__: cls for cls in SERIALISABLE}
    objects.update({f"apprentice_tf>{cls.__name__}": cls for cls in SERIALISABLE})
    return objects


def _extra_objects(extra: tuple[Any, ...]) -> dict[str, Any]:
    objects: dict[str, Any] = {}
    for index, item in enumerate(extra):
        if isinstance(item, dict):
            objects.update(item)
        elif callable(item) and hasattr(item, "__name__"):
            objects[item.__name__] = item
        else:
            raise ValueError(
                f"quantize_scope: argument {index} must be a class (or function) or a dict "
                f"{{name: class}}, received {item!r}."
            )
    return objects


@contextlib.contextmanager
def quantize_scope(*extra: dict[str, Any] | type) -> Iterator[None]:
    """tfmot's `quantize_scope` extended with apprentice_tf's classes and `extra`.

    Load (and save) any model apprentice_tf made (`quantize_model`, `add_ancillary`, a
    `Distiller`) inside it. As tfmot's ``quantize_scope(*args)``, it takes the user's own
    classes too: each argument is a dict ``{name: class}`` or a class (or function), known by
    its ``__name__``::

        with atf.quantize_scope(MyLayer, {"my_loss": my_loss}):
            model = keras.models.load_model("student.keras")

    Raises:
      ValueError: an argument that is neither a dict nor a class or function.
    """
    objects = {**custom_objects(), **_extra_objects(extra)}
    with tfmot.quantization.keras.quantize_scope(objects):
        yield
