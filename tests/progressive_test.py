"""Tests for apprentice_tf.progressive: ancillary branches (Zhou et al., arXiv:1905.11781)."""

import json
import math
import re

import numpy as np
import pytest

from apprentice_tf import progressive, saving, tflite
from apprentice_tf.compat import keras
from apprentice_tf.distiller import Distiller
from apprentice_tf.progressive import (
    AncillaryBatchNormalization,
    AncillaryConv2D,
    AncillaryDecay,
    AncillaryDepthwiseConv2D,
    AncillaryScale,
    add_ancillary,
    get_ancillary_scale,
    set_ancillary_scale,
    strip_ancillary,
)
from apprentice_tf.quantize import quantize_model
from apprentice_tf.saving import quantize_scope

LOW_PRECISION_CONVS = ("conv2", "dw", "conv3")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _float_model(name: str = "tiny") -> keras.Model:
    """conv1 (float: first) → conv2 'same' → depthwise 'valid', plus a 'valid' conv3 shortcut.

    Covers Conv2D and DepthwiseConv2D, with and without bias, 'same' and 'valid' padding, and a
    residual Add. (Each low-precision conv is followed by BatchNormalization: on TF 2.21 a
    low-precision conv feeding an Add directly loses its levels in TFLite even without
    ancillary branches.)
    """
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    y = keras.layers.ReLU(name="relu2")(y)
    y = keras.layers.DepthwiseConv2D(3, padding="valid", name="dw")(y)
    y = keras.layers.BatchNormalization(name="bn3")(y)
    shortcut = keras.layers.Conv2D(8, 3, padding="valid", name="conv3")(x)
    shortcut = keras.layers.BatchNormalization(name="bn_shortcut")(shortcut)
    y = keras.layers.Add(name="add")([y, shortcut])
    y = keras.layers.ReLU(name="relu3")(y)
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    outputs = keras.layers.Dense(4, name="logits")(y)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture(scope="module")
def shared():
    """Models built once for the tests that must leave them unchanged (checked where it matters).

    ``shared(kind)`` builds "float", "quantized" (quantize_model of it) or "expanded"
    (add_ancillary of it, λ = 1) on first use.
    """
    cache: dict[str, keras.Model] = {}
    builders = {
        "float": _float_model,
        "quantized": lambda: quantize_model(get("float")),
        "expanded": lambda: add_ancillary(get("float")),
    }

    def get(kind: str) -> keras.Model:
        if kind not in cache:
            cache[kind] = builders[kind]()
        return cache[kind]

    return get


def _data(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 16, 16, 3), dtype=np.float32), rng.integers(0, 4, n)


def _compile(model: keras.Model, learning_rate: float = 0.05) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _structure(model: keras.Model) -> list:
    return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers]


def _snapshot(model: keras.Model) -> tuple:
    return (
        [layer.name for layer in model.layers],
        json.dumps(model.get_config(), sort_keys=True, default=str),
        [w.copy() for w in model.get_weights()],
    )


def _assert_unchanged(model: keras.Model, before: tuple) -> None:
    after = _snapshot(model)
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert len(after[2]) == len(before[2])
    for new, old in zip(after[2], before[2], strict=True):
        np.testing.assert_array_equal(new, old)


def _twin_kernels(model: keras.Model) -> dict[str, np.ndarray]:
    return {
        layer.name: layer.get_weights()[0].copy()
        for layer in model.layers
        if isinstance(layer, AncillaryConv2D | AncillaryDepthwiseConv2D)
    }


def _kernel(model: keras.Model, layer_name: str) -> np.ndarray:
    return model.get_layer(layer_name).trainable_weights[0].numpy().copy()


def _conv_into_add() -> keras.Model:
    """A low-precision conv whose output goes straight into an Add (no BatchNormalization)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(x)
    y = keras.layers.Add(name="add")([x, y])
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(y), name="conv_into_add")


# ------------------------------------------------------------------------------------------------
# Structure


@pytest.mark.parametrize(
    "kernel_size, per_layer_scale, weight_bits",
    [(None, False, "ternary"), (1, True, 4)],
)
def test_expand_then_strip_gives_quantize_model_topology(
    shared, kernel_size, per_layer_scale, weight_bits
):
    model = shared("float")
    expanded = add_ancillary(
        model, kernel_size=kernel_size, per_layer_scale=per_layer_scale, weight_bits=weight_bits
    )
    for conv in LOW_PRECISION_CONVS:
        twin = expanded.get_layer(f"ancillary_{conv}")
        original = model.get_layer(conv)
        expected = original.kernel_size if kernel_size is None else (1, 1)
        assert twin.kernel_size == expected
        assert (twin.strides, twin.padding, twin.use_bias) == (
            original.strides,
            original.padding,
            original.use_bias,
        )
    scales = progressive.ancillary_scales(expanded)
    assert len(scales) == (3 if per_layer_scale else 1)
    assert get_ancillary_scale(expanded) == [1.0] * len(scales)
    assert all(not w.trainable for layer in scales for w in layer.weights)

    x, _ = _data(4)
    set_ancillary_scale(expanded, 1.0)
    with_branches = expanded(x, training=False).numpy()
    set_ancillary_scale(expanded, 0.0)
    stripped = strip_ancillary(expanded)
    reference = quantize_model(model, weight_bits=weight_bits)
    assert _structure(stripped) == _structure(reference)
    assert stripped.name == reference.name
    assert not [w.name for w in stripped.weights if "ancillary" in w.name]
    at_zero = expanded(x, training=False).numpy()
    assert np.max(np.abs(stripped(x, training=False).numpy() - at_zero)) < 1e-5
    assert np.max(np.abs(with_branches - at_zero)) > 1e-3  # λ = 1 did change the outputs


def test_branch_norm_joins_after_the_convs_batchnorm_and_strips_to_quantize_model(shared):
    model = shared("float")
    expanded = _compile(add_ancillary(model, branch_norm=True))
    by_name = {layer.name: layer for layer in expanded.layers}
    for conv in LOW_PRECISION_CONVS:
        norm = by_name[f"ancillary_bn_{conv}"]
        assert isinstance(norm, AncillaryBatchNormalization)
        assert norm.input.node.layer.name == f"ancillary_{conv}"  # BN_fp(conv_fp(x))
    # y = BN(conv_lp(x)) + λ·BN_fp(conv_fp(x)); what read BN(conv_lp(x)) reads the sum.
    scale = by_name["ancillary_scale"]
    joined = {  # branch -> the layer it joins (tfmot wraps a BatchNorm that feeds an Add)
        node.inbound_layers[1].name: node.inbound_layers[0].name for node in scale.inbound_nodes
    }
    assert {branch: main.removeprefix("quant_") for branch, main in joined.items()} == {
        "ancillary_bn_conv2": "bn2",
        "ancillary_bn_dw": "bn3",
        "ancillary_bn_conv3": "bn_shortcut",
    }
    for main in joined.values():
        assert {node.layer.name for node in by_name[main].outbound_nodes} == {"ancillary_scale"}

    x, y = _data(16)
    expanded.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[AncillaryDecay("cosine", end_step=2, by="step")],
    )
    assert get_ancillary_scale(expanded) == [0.0]
    stripped = strip_ancillary(expanded)
    assert _structure(stripped) == _structure(shared("quantized"))
    assert not [w.name for w in stripped.weights if "ancillary" in w.name]
    expected = expanded.predict(x, verbose=0)
    assert np.max(np.abs(stripped.predict(x, verbose=0) - expected)) < 1e-5


def test_one_by_one_valid_twin_sees_window_centres():
    x = np.random.default_rng(1).random((2, 7, 6, 3), dtype=np.float32)
    twin = AncillaryConv2D(4, 1, strides=2, padding="valid", crop=((1, 1), (1, 1)))
    full = keras.layers.Conv2D(4, 3, strides=2, padding="valid")
    plain = keras.layers.Conv2D(4, 1, strides=2, padding="valid")
    out = twin(x)
    plain(x)
    plain.set_weights(twin.get_weights())
    assert out.shape == full(x).shape
    np.testing.assert_allclose(out.numpy(), plain(x[:, 1:-1, 1:-1, :]).numpy(), atol=1e-6)


def test_already_quantized_model_is_accepted_and_left_unchanged(shared):
    quantized = shared("quantized")
    before = _snapshot(quantized)
    expanded = add_ancillary(quantized)
    _assert_unchanged(quantized, before)
    set_ancillary_scale(expanded, 0.0)
    stripped = strip_ancillary(expanded)
    assert _structure(stripped) == _structure(quantized)
    x, _ = _data(4)
    diff = stripped(x, training=False).numpy() - quantized(x, training=False).numpy()
    assert np.max(np.abs(diff)) < 1e-5


# ------------------------------------------------------------------------------------------------
# Decay schedules


@pytest.fixture(scope="module")
def compiled_expanded(shared):
    keras.utils.set_random_seed(0)
    return _compile(add_ancillary(shared("float"), per_layer_scale=True))


@pytest.mark.parametrize("by", ["step", "epoch"])
@pytest.mark.parametrize(
    "schedule, kwargs, expected",
    [
        ("linear", {}, {0: 1.0, 2: 0.75, 4: 0.5, 6: 0.25}),
        ("cosine", {}, {0: 1.0, 4: 0.5, 2: 0.5 * (1 + math.cos(math.pi / 4))}),
        ("exponential", {}, {0: 1.0, 4: 0.1, 2: 0.01**0.25}),
        ("exponential", {"decay_rate": 0.5, "start_value": 2.0}, {0: 2.0, 4: 2 * 0.5**0.5}),
        ("step", {}, {0: 1.0, 1: 1.0, 2: 0.1, 4: 0.01, 7: 0.001}),
        ("step", {"decay_rate": 0.5, "step_value": 3}, {0: 1.0, 2: 1.0, 3: 0.5, 6: 0.25}),
        ("step", {"step_value": 8}, {0: 1.0, 7: 1.0}),
    ],
)
def test_schedule_reaches_exactly_zero_at_end_step_and_stays(
    compiled_expanded, schedule, kwargs, expected, by
):
    end_step = 8
    callback = AncillaryDecay(schedule, end_step=end_step, by=by, **kwargs)
    callback.set_model(compiled_expanded)
    callback.on_train_begin()
    values, logged = [], []
    for t in range(end_step + 4):
        if by == "step":
            compiled_expanded.optimizer.iterations.assign(t)
            callback.on_train_batch_begin(0)
        else:
            callback.on_epoch_begin(t)
        scales = get_ancillary_scale(compiled_expanded)
        assert len(scales) == 3 and len(set(scales)) == 1  # every per-layer λ driven alike
        values.append(scales[0])
        logs = {}
        callback.on_epoch_end(t, logs)
        logged.append(logs["ancillary_scale"])
    for t, value in expected.items():
        assert values[t] == pytest.approx(value, rel=1e-6), t
    assert all(v > 0 for v in values[:end_step])
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert values[end_step:] == [0.0] * 4  # exactly 0, and it stays there
    assert logged == pytest.approx(values, rel=1e-6)
    assert [callback.value(t) for t in range(end_step + 4)] == pytest.approx(values, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Training


def test_fit_trains_branches_while_lambda_positive_then_strip_matches(shared):
    model = shared("float")
    expanded = _compile(add_ancillary(model))
    x, y = _data(16)
    initial = _twin_kernels(expanded)
    lp_initial = _kernel(expanded, "quant_conv2")
    per_epoch = []
    snapshot = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: per_epoch.append(
            (_twin_kernels(expanded), _kernel(expanded, "quant_conv2"))
        )
    )
    # 2 steps per epoch; λ = 1, 0.5 in epoch 0, then 0 from step 2 on.
    history = expanded.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[AncillaryDecay("linear", end_step=2, by="step"), snapshot],
    )
    assert history.history["ancillary_scale"] == [0.5, 0.0]
    (twins_0, lp_0), (twins_1, lp_1) = per_epoch
    for name, kernel in initial.items():
        assert not np.allclose(twins_0[name], kernel), name  # trained while λ > 0
        np.testing.assert_array_equal(twins_1[name], twins_0[name])  # no gradient at λ = 0
    assert not np.allclose(lp_0, lp_initial)
    assert not np.allclose(lp_1, lp_0)  # the low-precision network keeps training at λ = 0

    stripped = strip_ancillary(expanded)
    assert _structure(stripped) == _structure(shared("quantized"))
    assert not [w.name for w in stripped.weights if "ancillary" in w.name]
    np.testing.assert_array_equal(_kernel(stripped, "quant_conv2"), lp_1)
    for source in expanded.layers:  # every remaining variable (BN stats, quantizer ranges) copied
        if not source.name.startswith("ancillary"):
            for new, old in zip(
                stripped.get_layer(source.name).get_weights(), source.get_weights(), strict=True
            ):
                np.testing.assert_array_equal(new, old)
    expected = expanded.predict(x, verbose=0)
    assert np.max(np.abs(stripped.predict(x, verbose=0) - expected)) < 1e-5


def test_distiller_drives_lambda_of_expanded_student():
    student = add_ancillary(_float_model("student"))
    teacher = _float_model("teacher")
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"])
    initial = _twin_kernels(student)
    x, y = _data(16)
    history = distiller.fit(  # 2 steps: λ = 1, then 0
        x, y, batch_size=8, epochs=1, verbose=0, callbacks=[AncillaryDecay("cosine", end_step=1)]
    )
    assert history.history["ancillary_scale"] == [0.0]
    assert get_ancillary_scale(student) == [0.0]
    trained = _twin_kernels(student)
    assert all(not np.allclose(trained[name], initial[name]) for name in initial)
    stripped = strip_ancillary(distiller.student)
    diff = stripped.predict(x, verbose=0) - student.predict(x, verbose=0)
    assert np.max(np.abs(diff)) < 1e-5


# ------------------------------------------------------------------------------------------------
# Saving, restoring, deployment


@pytest.mark.parametrize("branch_norm", [False, True])
def test_save_load_keeps_lambda_and_branches(shared, tmp_path, branch_norm):
    expanded = add_ancillary(shared("float"), kernel_size=1, branch_norm=branch_norm)
    set_ancillary_scale(expanded, 0.3)
    path = tmp_path / "expanded.keras"
    expanded.save(path)
    x, _ = _data(4)
    expected = expanded(x, training=False).numpy()
    with quantize_scope():
        loaded = keras.models.load_model(path)
    with quantize_scope(*saving.SERIALISABLE):  # the classes given as the user's own
        loaded_again = keras.models.load_model(path)
    for model in (loaded, loaded_again):
        assert get_ancillary_scale(model) == [pytest.approx(0.3)]
        assert _structure(model) == _structure(expanded)
        np.testing.assert_allclose(model(x, training=False).numpy(), expected, atol=1e-6)
        for name, kernel in _twin_kernels(expanded).items():
            np.testing.assert_array_equal(model.get_layer(name).get_weights()[0], kernel)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("pre-empted")


class _Probe(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.at_train_begin = None
        self.epochs = []

    def on_train_begin(self, logs=None):
        self.at_train_begin = get_ancillary_scale(self.model)[0]

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_backup_and_restore_restores_lambda(shared, tmp_path):
    x, y = _data(16)  # 2 steps per epoch: the backup after epoch 1 holds step 4 and λ(3) = 0.5

    def fit(model, *extra):
        return model.fit(
            x,
            y,
            batch_size=8,
            epochs=3,
            verbose=0,
            callbacks=[
                keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
                *extra,
                AncillaryDecay("linear", end_step=6, by="step"),
            ],
        )

    with pytest.raises(RuntimeError, match="pre-empted"):
        fit(_compile(add_ancillary(shared("float"))), _Interrupt())
    fresh = _compile(add_ancillary(shared("float")))
    assert get_ancillary_scale(fresh) == [1.0]
    probe = _Probe()
    history = fit(fresh, probe)
    assert probe.at_train_begin == 0.5  # λ came back from the backup
    assert probe.epochs == [2]
    assert fresh.optimizer.iterations.numpy() == 6
    assert history.history["ancillary_scale"] == [pytest.approx(1 / 6)]  # λ(5), from step 4 on


def test_tflite_of_stripped_model_has_plain_low_precision_tensors(shared, tmp_path):
    expanded = add_ancillary(shared("float"))
    set_ancillary_scale(expanded, 0.0)
    stripped_path = tflite.convert(strip_ancillary(expanded), tmp_path / "stripped.tflite")
    plain_path = tflite.convert(shared("quantized"), tmp_path / "plain.tflite")

    def tensors(path):
        return [(t.name, t.op, t.dtype, t.shape, t.stored_bytes) for t in tflite.inspect(path)]

    assert tensors(stripped_path) == tensors(plain_path)
    assert not [t for t in tflite.inspect(stripped_path) if "ancillary" in t.name]


# ------------------------------------------------------------------------------------------------
# Bad input


def _dense_only_low_precision() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="conv1")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x), name="dense_only")


def _folded_relu() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x), name="folded")


BAD_MODEL_CALLS = [
    ("dense_only", lambda m: add_ancillary(m), r"no low-precision Conv2D or DepthwiseConv2D"),
    ("folded", lambda m: add_ancillary(m), r"\['conv2'\] apply a non-linear activation"),
    ("float", lambda m: add_ancillary(m, kernel_size=3), r"`kernel_size`.*\(None, 1\).*received 3"),
    ("float", lambda m: add_ancillary(m, per_layer_scale="yes"), r"`per_layer_scale`.*'yes'"),
    ("float", lambda m: add_ancillary(m, branch_norm=1), r"`branch_norm`.*True or False.*1"),
    (
        "conv_into_add",
        lambda m: add_ancillary(m, branch_norm=True),
        r"branch_norm=True .* conv 'conv2' feeds \['add'\].*branch_norm=False",
    ),
    ("float", lambda m: add_ancillary(m, weight_bit=2), r"unknown argument.*weight_bit.*allowed"),
    ("float", lambda m: add_ancillary(m, kernel_initializer="nope"), r"`kernel_initializer`"),
    ("float", lambda m: add_ancillary(m, weight_bits=3), r"`weight_bits` must be one of"),
    ("quantized", lambda m: add_ancillary(m, weight_bits=4), r"already quantized.*weight_bits"),
    ("expanded", lambda m: add_ancillary(m), r"already has ancillary branches"),
    ("quantized", lambda m: strip_ancillary(m), r"has no ancillary branches"),
    ("expanded", lambda m: strip_ancillary(m), r"λ is not 0 in \{'ancillary_scale': 1\.0\}"),
    ("expanded", lambda m: strip_ancillary(m, force="yes"), r"`force`.*received 'yes'"),
    ("expanded", lambda m: set_ancillary_scale(m, -1.0), r"`value`.*>= 0.*received -1\.0"),
    ("quantized", lambda m: set_ancillary_scale(m, 0.0), r"has no ancillary branches"),
]


@pytest.mark.parametrize("kind, call, message", BAD_MODEL_CALLS)
def test_bad_model_input_raises_and_leaves_model_unchanged(shared, kind, call, message):
    builders = {
        "dense_only": _dense_only_low_precision,
        "folded": _folded_relu,
        "conv_into_add": _conv_into_add,
    }
    model = builders[kind]() if kind in builders else shared(kind)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        call(model)
    _assert_unchanged(model, before)


def test_callback_on_model_without_branches_raises(shared):
    callback = AncillaryDecay(end_step=4)
    callback.set_model(shared("quantized"))
    with pytest.raises(ValueError, match="AncillaryDecay: model .* has no ancillary branches"):
        callback.on_train_begin()


def test_force_strip_warns(shared):
    expanded = shared("expanded")
    set_ancillary_scale(expanded, 0.25)
    try:
        with pytest.warns(UserWarning, match="outputs .* differ"):
            stripped = strip_ancillary(expanded, force=True)
        assert get_ancillary_scale(expanded) == [0.25]
    finally:
        set_ancillary_scale(expanded, 1.0)
    assert not progressive.ancillary_scales(stripped)
    assert _structure(stripped) == _structure(shared("quantized"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "polynomial", "end_step": 4}, r"`schedule` must be one of \('linear'"),
        ({"end_step": 0}, r"`end_step` must be an integer >= 1, received 0"),
        ({"end_step": -3}, r"`end_step` must be an integer >= 1, received -3"),
        ({"end_step": 2.5}, r"`end_step` must be an integer >= 1, received 2\.5"),
        ({"end_step": True}, r"`end_step` must be an integer >= 1, received True"),
        ({"end_step": 4, "by": "batch"}, r"`by` must be one of \('step', 'epoch'\).*'batch'"),
        ({"end_step": 4, "start_value": 0.0}, r"`start_value`.*> 0.*received 0\.0"),
        ({"end_step": 4, "decay_rate": 0.5}, r"`decay_rate` applies to .*'linear'"),
        (
            {"schedule": "exponential", "end_step": 4, "decay_rate": 1.5},
            r"`decay_rate` must be in \(0, 1\), received 1\.5",
        ),
        ({"schedule": "cosine", "end_step": 4, "step_value": 2}, r"`step_value` applies to"),
        ({"schedule": "step", "end_step": 4, "step_value": 0}, r"`step_value`.*received 0"),
    ],
)
def test_bad_callback_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AncillaryDecay(**kwargs)


def test_step_callback_needs_an_optimizer(shared):
    callback = AncillaryDecay(end_step=4)
    callback.set_model(shared("expanded"))
    callback.on_train_begin()
    with pytest.raises(ValueError, match=re.escape("has no optimizer")):
        callback.on_train_batch_begin(0)


# ------------------------------------------------------------------------------------------------
# Serialisation


@pytest.mark.parametrize(
    "build",
    [
        lambda: AncillaryScale(initial_value=0.5, name="scale"),
        lambda: AncillaryConv2D(4, 3, strides=2, padding="valid", crop=((1, 1), (0, 2))),
        lambda: AncillaryDepthwiseConv2D(1, depth_multiplier=2, crop=((1, 0), (1, 0))),
        lambda: AncillaryBatchNormalization(momentum=0.9, epsilon=1e-5, name="bn"),
    ],
)
def test_layer_config_json_round_trip(build):
    layer = build()
    config = json.loads(json.dumps(layer.get_config()))
    again = type(layer).from_config(config)
    assert json.loads(json.dumps(again.get_config())) == config
    serialized = json.loads(json.dumps(keras.layers.serialize(layer)))
    assert serialized["registered_name"] == f"apprentice_tf>{type(layer).__name__}"
    restored = keras.layers.deserialize(serialized)
    assert type(restored) is type(layer)
    assert json.loads(json.dumps(restored.get_config())) == config


def test_callback_config_json_round_trip():
    callback = AncillaryDecay("step", end_step=8, by="epoch", decay_rate=0.5, step_value=2)
    config = json.loads(json.dumps(callback.get_config()))
    again = AncillaryDecay.from_config(config)
    assert again.get_config() == config == callback.get_config()
    assert [again.value(t) for t in range(10)] == [callback.value(t) for t in range(10)]
    assert keras.utils.get_registered_object("apprentice_tf>AncillaryDecay") is AncillaryDecay
    serialized = json.loads(json.dumps(keras.utils.serialize_keras_object(callback)))
    restored = keras.utils.deserialize_keras_object(serialized)
    assert type(restored) is AncillaryDecay and restored.get_config() == config
    assert set(saving.custom_objects()) >= {
        "AncillaryScale",
        "apprentice_tf>AncillaryConv2D",
        "apprentice_tf>AncillaryDepthwiseConv2D",
        "apprentice_tf>AncillaryDecay",
    }
