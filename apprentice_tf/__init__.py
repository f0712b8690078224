"""apprentice_tf: low-precision Keras networks trained by knowledge distillation, shipped as TFLite.

    import apprentice_tf as atf
    student = atf.quantize_model(float_student, weight_bits="ternary", activation_bits=8)
    distiller = atf.Distiller(student=student, teacher=teacher)  # Apprentice loss, scheme B
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(train_data, epochs=10)
    atf.tflite.convert(distiller.student, "student.tflite")

All Keras objects come from `tf_keras` (Keras 2), the Keras that tensorflow-model-optimization
uses; see `apprentice_tf.compat`.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Lazy attributes (PEP 562). `import apprentice_tf` imports nothing heavy: each submodule, and
# each re-exported name, is imported the first time it is used. So the `apprentice-tf inspect`
# and `bench` commands, which need only `apprentice_tf.litert` (the flatbuffer and LiteRT), start
# in a fraction of a second without TensorFlow, while `atf.quantize_model(...)` works as before.
_SUBMODULES = (
    "caching",
    "compat",
    "data",
    "distiller",
    "hardware",
    "litert",
    "losses",
    "models",
    "precision",
    "progressive",
    "pruning",
    "quantize",
    "quantize_configs",
    "reporting",
    "saving",
    "tflite",
    "zoo",
)
_NAMES = {
    "ActivationQuantizeConfig": "apprentice_tf.quantize_configs",
    "NBitQuantizeConfig": "apprentice_tf.quantize_configs",
    "TernaryQuantizeConfig": "apprentice_tf.quantize_configs",
    "Distiller": "apprentice_tf.distiller",
    "cache_teacher_logits": "apprentice_tf.caching",
    "custom_objects": "apprentice_tf.saving",
    "calibrate": "apprentice_tf.quantize",
    "quantize_apply": "apprentice_tf.quantize",
    "quantize_model": "apprentice_tf.quantize",
    "quantize_scope": "apprentice_tf.saving",
    "ActivationQuantizer": "apprentice_tf.quantizers",
    "TernaryWeightQuantizer": "apprentice_tf.quantizers",
    "UniformWeightQuantizer": "apprentice_tf.quantizers",
    "quantize_activation": "apprentice_tf.quantizers",
    "quantize_uniform": "apprentice_tf.quantizers",
    "ternarize": "apprentice_tf.quantizers",
}

if TYPE_CHECKING:  # static analysers see the eager imports
    from apprentice_tf import (  # noqa: F401
        caching,
        compat,
        data,
        distiller,
        hardware,
        litert,
        losses,
        models,
        precision,
        progressive,
        pruning,
        quantize,
        quantize_configs,
        reporting,
        saving,
        tflite,
        zoo,
    )
    from apprentice_tf.caching import cache_teacher_logits  # noqa: F401
    from apprentice_tf.distiller import Distiller  # noqa: F401
    from apprentice_tf.quantize import calibrate, quantize_apply, quantize_model  # noqa: F401
    from apprentice_tf.quantize_configs import (  # noqa: F401
        ActivationQuantizeConfig,
        NBitQuantizeConfig,
        TernaryQuantizeConfig,
    )
    from apprentice_tf.quantizers import (  # noqa: F401
        ActivationQuantizer,
        TernaryWeightQuantizer,
        UniformWeightQuantizer,
        quantize_activation,
        quantize_uniform,
        ternarize,
    )
    from apprentice_tf.saving import custom_objects, quantize_scope  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import a submodule or a re-exported name on first use (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"apprentice_tf.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'apprentice_tf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [*sorted({*_SUBMODULES, *_NAMES}), "__version__"]
