"""apprentice_tf: low-precision Keras networks trained by knowledge distillation, shipped as TFLite.

    import apprentice_tf as atf
    student = atf.quantize_model(float_student, weight_bits="ternary", activation_bits=8)
    distiller = atf.Distiller(student, teacher)          # Apprentice loss, scheme B by default
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(train_data, epochs=10)
    atf.tflite.convert(distiller.student, "student.tflite")

All Keras objects come from `tf_keras` (Keras 2), the Keras that tensorflow-model-optimization
uses; see `apprentice_tf.compat`.
"""

from apprentice_tf import (
    compat,
    data,
    hardware,
    losses,
    models,
    progressive,
    pruning,
    tflite,
)
from apprentice_tf.configs import (
    ActivationQuantizeConfig,
    NBitQuantizeConfig,
    TernaryQuantizeConfig,
)
from apprentice_tf.distiller import Distiller, cache_teacher_logits
from apprentice_tf.quantize import custom_objects, quantize_apply, quantize_model, quantize_scope
from apprentice_tf.quantizers import (
    ActivationQuantizer,
    TernaryWeightQuantizer,
    UniformWeightQuantizer,
    quantize_activation,
    quantize_uniform,
    ternarize,
)

__version__ = "0.1.0"

__all__ = [
    "ActivationQuantizeConfig",
    "ActivationQuantizer",
    "Distiller",
    "NBitQuantizeConfig",
    "TernaryQuantizeConfig",
    "TernaryWeightQuantizer",
    "UniformWeightQuantizer",
    "cache_teacher_logits",
    "compat",
    "custom_objects",
    "data",
    "hardware",
    "losses",
    "models",
    "progressive",
    "pruning",
    "quantize_activation",
    "quantize_apply",
    "quantize_model",
    "quantize_scope",
    "quantize_uniform",
    "ternarize",
    "tflite",
    "__version__",
]
