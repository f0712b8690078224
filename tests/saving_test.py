"""A quantized model saves and loads through .keras, .h5, SavedModel and tf.train.Checkpoint."""

import numpy as np
import pytest
from conftest import blobs, tiny_cnn

import apprentice_tf as atf
from apprentice_tf.compat import keras, tf


@pytest.fixture(scope="module")
def trained_ternary():
    keras.utils.set_random_seed(1)
    x, y = blobs(128)
    model = atf.quantize_model(tiny_cnn(), "ternary", activation_bits=4)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model, x[:16]


@pytest.mark.parametrize("suffix", [".keras", ".h5", ""], ids=["keras", "h5", "savedmodel"])
def test_save_and_load_predicts_identically(trained_ternary, tmp_path, suffix):
    model, x = trained_ternary
    path = str(tmp_path / f"model{suffix}")
    with atf.quantize_scope():
        model.save(path, **({"save_format": "tf"} if suffix == "" else {}))
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    configs = [getattr(layer, "quantize_config", None) for layer in loaded.layers]
    assert atf.TernaryQuantizeConfig(activation_bits=4) in configs


def test_checkpoint_round_trip(trained_ternary, tmp_path):
    model, x = trained_ternary
    saved = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = atf.quantize_model(tiny_cnn(), "ternary", activation_bits=4)
    assert not np.array_equal(model.predict(x, verbose=0), fresh.predict(x, verbose=0))
    tf.train.Checkpoint(model=fresh).restore(saved).assert_existing_objects_matched()
    np.testing.assert_array_equal(model.predict(x, verbose=0), fresh.predict(x, verbose=0))


def test_custom_objects_lists_every_class():
    objects = atf.custom_objects()
    for cls in (
        atf.TernaryQuantizeConfig,
        atf.NBitQuantizeConfig,
        atf.ActivationQuantizeConfig,
        atf.TernaryWeightQuantizer,
        atf.UniformWeightQuantizer,
        atf.ActivationQuantizer,
    ):
        assert objects[cls.__name__] is cls


def test_quantize_scope_takes_the_users_classes_and_dicts():
    """As tfmot's quantize_scope(*args): classes by __name__, and {name: object} dicts."""

    class Doubling(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    def my_activation(x):
        return x

    with atf.quantize_scope(Doubling, {"renamed": my_activation}):
        assert keras.utils.get_registered_object("Doubling") is Doubling
        assert keras.utils.get_registered_object("renamed") is my_activation
        assert keras.utils.get_registered_object("TernaryQuantizeConfig") is (
            atf.TernaryQuantizeConfig
        )
    with (
        pytest.raises(ValueError, match="quantize_scope: argument 0 must be a class"),
        atf.quantize_scope(3),
    ):
        pass


def test_custom_objects_knows_progressive_layers_and_the_distiller():
    objects = atf.custom_objects()
    for cls in (
        atf.progressive.AncillaryScale,
        atf.progressive.AncillaryConv2D,
        atf.progressive.AncillaryDepthwiseConv2D,
        atf.progressive.AncillaryBatchNormalization,
        atf.progressive.AncillaryDecay,
        atf.Distiller,
        atf.losses.AttentionTransfer,
    ):
        assert objects[cls.__name__] is cls
        assert objects[f"apprentice_tf>{cls.__name__}"] is cls
