"""The one place apprentice_tf picks its Keras.

tensorflow-model-optimization (tfmot) 0.8 works on Keras 2 only. With TensorFlow >= 2.16, Keras 2 is
the separate ``tf_keras`` package (``tf.keras`` is Keras 3 unless ``TF_USE_LEGACY_KERAS=1``). Every
layer, model, callback and optimizer that apprentice_tf builds or accepts comes from this module's
``keras``, so that the objects a user fits, quantizes and saves all come from one Keras.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras

__all__ = ["keras", "tf", "check_keras_object"]

_WHICH_KERAS = (
    "apprentice_tf (like tensorflow-model-optimization) needs Keras 2 objects: build them with "
    "`import tf_keras as keras` (or `from apprentice_tf.compat import keras`), or set "
    "TF_USE_LEGACY_KERAS=1 before importing tensorflow so that `tf.keras` is Keras 2."
)


def check_keras_object(obj: Any, argument: str, expected: type = keras.Model) -> None:
    """Raise a ValueError unless `obj` is an instance of `expected` from this module's Keras.

    Args:
      obj: the object a user passed.
      argument: the argument's name, used in the message.
      expected: a class of `apprentice_tf.compat.keras` (default `keras.Model`).

    Raises:
      ValueError: `obj` comes from another Keras (typically Keras 3) or is not a `expected` at all;
        the message names the argument, what was received, and which Keras to use.
    """
    if isinstance(obj, expected):
        return
    module = type(obj).__module__ or ""
    if module.startswith("keras") and not module.startswith("keras.src.legacy"):
        raise ValueError(
            f"`{argument}` is a Keras 3 object ({type(obj).__module__}.{type(obj).__name__}). "
            + _WHICH_KERAS
        )
    raise ValueError(
        f"`{argument}` must be a tf_keras `{expected.__name__}`, received "
        f"{type(obj).__module__}.{type(obj).__name__}. " + _WHICH_KERAS
    )
