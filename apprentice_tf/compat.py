"""The one place apprentice_tf picks its Keras.

tensorflow-model-optimization (tfmot) 0.8 works on Keras 2 only. With TensorFlow >= 2.16, Keras 2 is
the separate ``tf_keras`` package (``tf.keras`` is Keras 3 unless ``TF_USE_LEGACY_KERAS=1``). Every
layer, model, callback and optimizer that apprentice_tf builds or accepts comes from this module's
``keras``, so that the objects a user fits, quantizes and saves all come from one Keras.
`apprentice_tf._checks.keras_object` refuses, with a message that says which Keras to use, an
object from another Keras.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

__all__ = ["keras", "tf"]
