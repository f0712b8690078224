"""Which floating-point policy to train float networks in: bfloat16 only where the CPU has it.

Keras's ``mixed_bfloat16`` policy computes layers in bfloat16 (8-bit exponent, 7-bit mantissa) and
keeps the variables in float32 (Micikevicius et al., "Mixed Precision Training", ICLR 2018;
Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", 2019). On a CPU it pays only
where the instruction set has bfloat16 dot products (x86 AVX512_BF16 or AMX-BF16, Arm BF16); where
it has not, oneDNN emulates them and the step is several times *slower* (measured on an AMD EPYC
without AVX-512: a float ResNet-20 training step at batch 128 took 6.4x the float32 time).

`training_policy("auto")` therefore picks ``mixed_bfloat16`` only when `native_bfloat16()` finds the
instructions in the CPU's flags, and ``float32`` otherwise. It is for float networks (teachers,
float students): the weights a mixed-precision network trains are float32 variables, so they load
into the same architecture built under float32 for evaluation and TFLite export (`policy_twin`).
Quantization-aware students stay float32: tfmot's FakeQuant ops take float32 tensors only.

    policy = atf.precision.training_policy("auto")
    teacher = atf.precision.build_under(policy, lambda: cifar_resnet(56))   # train it
    exported = atf.precision.policy_twin(teacher, "float32", lambda: cifar_resnet(56))
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

from apprentice_tf.compat import keras

__all__ = ["POLICIES", "native_bfloat16", "training_policy", "build_under", "policy_twin"]

#: The policies `training_policy` accepts ("auto" picks one of the other two).
POLICIES = ("auto", "float32", "mixed_bfloat16")
#: CPU flags (``/proc/cpuinfo``) that mean bfloat16 dot products in hardware.
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def native_bfloat16(cpuinfo: str | None = None) -> bool:
    """True if the CPU has bfloat16 arithmetic in hardware (AVX512_BF16, AMX-BF16 or Arm BF16).

    Args:
      cpuinfo: the text of ``/proc/cpuinfo`` (read from the machine when ``None``; on a system
        without it, e.g. macOS or Windows, the answer is False: float32 is always safe).
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if platform.system() != "Linux" or not path.is_file():
            return False
        cpuinfo = path.read_text(errors="replace")
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _BF16_FLAGS & set(value.split()):
            return True
    return False


def training_policy(requested: str = "auto", cpuinfo: str | None = None) -> str:
    """The Keras dtype policy to build float networks under.

    Args:
      requested: ``"auto"`` (``mixed_bfloat16`` if `native_bfloat16`, else ``float32``), or one of
        the two policies to force it.
      cpuinfo: passed to `native_bfloat16` (for tests).

    Raises:
      ValueError: `requested` is not one of `POLICIES`.
    """
    if requested not in POLICIES:
        raise ValueError(f"`precision` must be one of {list(POLICIES)}, received {requested!r}.")
    if requested != "auto":
        return requested
    return "mixed_bfloat16" if native_bfloat16(cpuinfo) else "float32"


def build_under(policy: str, build: Callable[[], keras.Model]) -> keras.Model:
    """``build()`` with Keras's global dtype policy set to `policy`, the previous one restored."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        return build()
    finally:
        keras.mixed_precision.set_global_policy(previous)


def policy_twin(model: keras.Model, policy: str, build: Callable[[], keras.Model]) -> keras.Model:
    """A copy of the float network `model`, built by `build` under `policy`, with its weights.

    Under ``mixed_bfloat16`` the variables stay float32 (only the layers' arithmetic is
    bfloat16), so the weights move exactly either way: a frozen teacher's twin under
    ``mixed_bfloat16`` computes its logits in bfloat16 (faster where the CPU has bfloat16
    instructions; benchmarks/step_cost.py times both), and a network trained under
    ``mixed_bfloat16`` comes back as a float32 twin for evaluation, quantization and export.
    The copy has `model`'s ``trainable`` flag; `model` itself is returned when `policy` is the one
    it was built under.
    """
    if model.dtype_policy.name == policy:
        return model
    twin = build_under(policy, build)
    twin.set_weights(model.get_weights())
    twin.trainable = model.trainable
    return twin
