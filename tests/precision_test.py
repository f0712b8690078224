"""apprentice_tf.precision: bfloat16 only where the CPU has it; float32 logits; weights portable."""

from __future__ import annotations

import numpy as np
import pytest

from apprentice_tf import precision
from apprentice_tf.compat import keras
from apprentice_tf.models import cifar_resnet

ZEN3 = "processor : 0\nflags : fpu sse2 avx avx2 fma\n"
ZEN4 = "processor : 0\nflags : fpu avx2 avx512f avx512_vnni avx512_bf16\n"
SAPPHIRE_RAPIDS = "flags : avx512f amx_bf16 amx_tile\n"
NEOVERSE_V1 = "Features : fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    "cpuinfo, native", [(ZEN3, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True), (NEOVERSE_V1, True)]
)
def test_native_bfloat16_reads_the_cpu_flags(cpuinfo, native):
    assert precision.native_bfloat16(cpuinfo) is native
    expected = "mixed_bfloat16" if native else "float32"
    assert precision.training_policy("auto", cpuinfo) == expected


def test_a_forced_policy_is_kept_and_a_bad_one_refused():
    assert precision.training_policy("float32", ZEN4) == "float32"
    assert precision.training_policy("mixed_bfloat16", ZEN3) == "mixed_bfloat16"
    with pytest.raises(ValueError, match="`precision` must be one of .*'fp16'"):
        precision.training_policy("fp16")


def test_a_mixed_bfloat16_network_returns_float32_logits_and_its_weights_load_in_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = cifar_resnet(8, num_classes=10, width_multiplier=0.25)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    assert mixed(x).dtype == "float32"
    assert mixed.get_layer("stage1_block1_conv1").compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in mixed.get_weights())
    plain = cifar_resnet(8, num_classes=10, width_multiplier=0.25)
    plain.set_weights(mixed.get_weights())
    for a, b in zip(plain.get_weights(), mixed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_policy_twin_carries_the_weights_and_the_frozen_flag_both_ways():
    def build():
        return cifar_resnet(8, num_classes=10, width_multiplier=0.25)

    trained = precision.build_under("float32", build)
    trained.trainable = False
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert precision.policy_twin(trained, "float32", build) is trained

    mixed = precision.policy_twin(trained, "mixed_bfloat16", build)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert mixed.get_layer("stage1_block1_conv1").compute_dtype == "bfloat16"
    assert not mixed.trainable
    back = precision.policy_twin(mixed, "float32", build)
    assert back.get_layer("stage1_block1_conv1").compute_dtype == "float32"
    for a, b in zip(trained.get_weights(), back.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
