"""TFLite deployment: convert, prove what the file stores, account for its size, run it with LiteRT.

Low-bit claims are checked in the .tflite flatbuffer itself, not in Keras: the converter can keep
a kernel in float or re-quantize it to more levels, so `convert` inspects its own output and
refuses a file in which a low-precision layer lost its levels.

This module holds what needs TensorFlow (`convert`, `evaluate`, `agreement`). Reading a file
(`inspect`, `size_report`), placing its operators (`delegation`) and timing it (`latency`) need
only the flatbuffer and LiteRT: they live in `apprentice_tf.litert` and are re-exported here, so
`atf.tflite.inspect is atf.litert.inspect`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from apprentice_tf import _checks, _io, litert
from apprentice_tf.compat import keras, tf
from apprentice_tf.litert import (
    Latency,
    OpPlacement,
    SizeReport,
    TFLiteFileError,
    WeightTensor,
    delegation,
    format_delegation,
    format_inspection,
    inspect,
    latency,
    latency_ratio,
    make_interpreter,
    predict,
    run_batch,
    size_report,
    store_ternary_dense_as_int2,
)
from apprentice_tf.quantize import is_quantization_aware
from apprentice_tf.quantize_configs import (
    ActivationQuantizeConfig,
    NBitQuantizeConfig,
    TernaryQuantizeConfig,
)
from apprentice_tf.saving import custom_objects, quantize_scope

__all__ = [
    "convert",
    "inspect",
    "size_report",
    "delegation",
    "latency",
    "latency_ratio",
    "evaluate",
    "agreement",
    "WeightTensor",
    "SizeReport",
    "OpPlacement",
    "Latency",
    "TFLiteFileError",
    "format_inspection",
    "format_delegation",
    "low_precision_levels",
    "narrow_activation_layers",
    "predict",
]


def low_precision_levels(model: keras.Model) -> dict[str, int]:
    """Maximum levels per output channel each low-precision layer of `model` may store.

    Ternary layers 3, k-bit layers 2^k − 1, keyed by the QuantizeWrapper's name.
    """
    limits = {}
    for layer in model.layers:
        config = getattr(layer, "quantize_config", None)
        if isinstance(config, TernaryQuantizeConfig):
            limits[layer.name] = 3
        elif isinstance(config, NBitQuantizeConfig):
            limits[layer.name] = 2**config.num_bits - 1
    return limits


def _check_levels(model: keras.Model, weights: list[WeightTensor], path: Path) -> None:
    problems = []
    for layer_name, limit in low_precision_levels(model).items():
        matches = [w for w in weights if f"/{layer_name}/" in w.name.split(";")[0]]
        if not matches:
            problems.append(f"'{layer_name}': no weight tensor found in the file")
            continue
        for w in matches:
            if w.dtype.startswith("FLOAT") or w.levels > limit:
                problems.append(
                    f"'{layer_name}': stored as {w.dtype} with {w.levels} levels per channel "
                    f"(at most {limit} expected)"
                )
    if problems:
        raise RuntimeError(
            f"TFLite conversion of '{model.name}' did not keep the low-precision levels in "
            f"{path}: " + "; ".join(problems) + ". The converter keeps FakeQuant kernels as "
            "integers only inside ops whose input and output are quantized: use "
            "activation_bits=8 or 4 in quantize_model (weight-only models stay float32), or pass "
            "verify=False to write the file anyway."
        )


def convert(
    model: keras.Model,
    path: str | os.PathLike,
    representative_data: Callable[[], Iterable[Any]] | tf.data.Dataset | None = None,
    *,
    verify: bool = True,
    int4_weights: bool = False,
    int2_dense: bool = False,
    widen_activations: bool = False,
) -> Path:
    """Convert a Keras model (float or from `quantize_model`) to a .tflite file.

    A model from `quantize_model` is converted with `Optimize.DEFAULT`, so FakeQuant kernels
    become integer tensors (ternary: 3 levels per channel, 4-bit: 15) and the layers
    `quantize_model` left float stay float. Activations quantized to fewer than 8 bits in Keras
    are stored and computed as int8 over the same learned ranges (LiteRT has no 4-bit
    activation kernels). With
    `representative_data`, the remaining float tensors are calibrated on it and the model
    becomes full-integer (int8 activations everywhere; float input and output). A float model
    without `representative_data` stays float32.

    Args:
      model: a tf_keras model.
      path: where to write the file; parent directories are created; written atomically.
      representative_data: a `tf.data.Dataset` of input batches (or of (x, y) pairs), or a
        callable returning an iterable of input batches; 100 batches at most are used.
      verify: inspect the written file and raise if a low-precision layer was stored in float
        or with more levels than its bit width allows.
      int4_weights: store 2- and 4-bit conv kernels as INT4 (the TF 2.21 converter does so for
        a FakeQuant of 4 bits or fewer; its `_experimental_low_bit_qat` mode produced files
        LiteRT could not run). Checked in the output: when the file holds no INT4 tensor, a
        warning says so and the kernels keep int8 storage. Default: int8 storage, which LiteRT
        runs with its fast int8 kernels.
      int2_dense: store the kernels of ternary Dense layers (FULLY_CONNECTED ops) as INT2, four
        values a byte, with `apprentice_tf.litert.store_ternary_dense_as_int2` (the dequantized
        weights are unchanged; the int32 bias is re-rounded at the new scale). LiteRT runs INT2
        only in FULLY_CONNECTED, on XNNPACK when the input channels are a multiple of 4. A
        layer that cannot be packed (its op is not integer, its input channels are not a
        multiple of 4, or this LiteRT cannot run the result) keeps int8 storage, and a warning
        names the layer and the reason. Ternary convolutions keep int8: LiteRT has no INT2
        CONV_2D kernel.
      widen_activations: LiteRT has no kernels for activations below 8 bits, so a k < 8-bit
        activation can only be stored as int8 over the same learned range [min, m]: 255 levels
        instead of 2^k − 1, a finer network than the Keras one whose top-1 decisions differ
        (measure them with `agreement`). False (default): such a model is refused with a
        `ValueError` naming its layers; True: the file is written with int8 activations.

    Returns:
      The path written.

    Raises:
      RuntimeError: `verify` found a layer whose levels were not kept.
      ValueError: `model` has activations below 8 bits and `widen_activations` is False.
    """
    _checks.keras_object("convert", "model", model, keras.Model)
    narrow = narrow_activation_layers(model)
    if narrow and not widen_activations:
        raise ValueError(
            f"convert: '{model.name}' quantizes activations to fewer than 8 bits in "
            f"{_some_layers(narrow)}. LiteRT has "
            "no kernels for activations below 8 bits: the file could only compute them as int8 "
            "over the same ranges, a different network whose top-1 decisions do not match the "
            "Keras model's. Quantize with activation_bits=8 (W4A8 and ternary-A8 files match "
            "Keras), or pass widen_activations=True to write the int8-activation file anyway "
            "and measure it with apprentice_tf.tflite.agreement."
        )
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"convert: `path` {str(path)!r} is a directory; pass a file name.")
    converter = _converter(_export_copy(model, int4_weights))
    if representative_data is not None or is_quantization_aware(model):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative_data is not None:
        converter.representative_dataset = _representative(representative_data)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        flatbuffer = converter.convert()
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.write_bytes(path, flatbuffer)
    if int2_dense:
        _store_int2_dense(model, path)
    weights = inspect(path)
    if int4_weights and not any(w.dtype == "INT4" for w in weights):
        warnings.warn(
            f"convert: int4_weights=True but this TensorFlow ({tf.__version__}) converter wrote no "
            f"INT4 tensor to {path}; the low-precision kernels are stored as int8.",
            stacklevel=2,
        )
    if verify:
        _check_levels(model, weights, path)
    return path


def _converter(model: keras.Model) -> tf.lite.TFLiteConverter:
    """A TFLite converter of `model`'s inference function, without exporting its Keras layers.

    `TFLiteConverter.from_keras_model` first writes the model as a Keras SavedModel, which traces
    every layer's call functions: for a quantization-aware ResNet-20 that is 28 of the 36 s a
    conversion takes on 2 cores. Here a `tf.Module` holds only the model's variables and one
    ``serving_default`` function, ``{output name: model(inputs, training=False)}`` over the
    model's named inputs, so the converter sees the same graph and writes the same tensors (same
    names, dtypes and levels, identical outputs: checked on ternary and 4-bit ResNet-20) in 8 s.
    A model without symbolic inputs (a subclassed model) goes through `from_keras_model`.
    """
    if not getattr(model, "inputs", None):
        return tf.lite.TFLiteConverter.from_keras_model(model)
    specs = [
        tf.TensorSpec(tensor.shape, tensor.dtype, name=name)
        for tensor, name in zip(model.inputs, model.input_names, strict=True)
    ]
    names = model.output_names

    @tf.function(input_signature=specs, autograph=False)
    def serve(*inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return dict(zip(names, outputs, strict=True))

    module = tf.Module()
    module.model_variables = list(model.variables)
    module.serve = serve
    return tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module)


def _some_layers(bits_by_layer: dict[str, int], shown: int = 3) -> str:
    """``'a' (4-bit), 'b' (4-bit), 'c' (4-bit) and 47 more layers``: an error names a few."""
    named = [f"{name!r} ({bits}-bit)" for name, bits in list(bits_by_layer.items())[:shown]]
    rest = len(bits_by_layer) - len(named)
    return ", ".join(named) + (f" and {rest} more layer{'s' * (rest > 1)}" if rest else "")


def narrow_activation_layers(model: keras.Model) -> dict[str, int]:
    """Layers of `model` whose activations are quantized to k < 8 bits, with k."""
    narrow = {}
    for layer in model.layers:
        config = getattr(layer, "quantize_config", None)
        if isinstance(config, ActivationQuantizeConfig):
            bits = config.num_bits
        else:
            bits = getattr(config, "activation_bits", None)
        if bits is not None and bits < 8:
            narrow[layer.name] = int(bits)
    return narrow


def _store_int2_dense(model: keras.Model, path: Path) -> None:
    """Pack the ternary Dense kernels of the file at `path` as INT2; warn about the others."""
    ternary_dense = [
        layer.name
        for layer in model.layers
        if isinstance(getattr(layer, "quantize_config", None), TernaryQuantizeConfig)
        and isinstance(getattr(layer, "layer", None), keras.layers.Dense)
    ]
    if not ternary_dense:
        warnings.warn(
            f"convert: int2_dense=True but '{model.name}' has no ternary Dense layer; {path} "
            "keeps its storage (ternary convolutions stay int8: LiteRT has no INT2 CONV_2D).",
            stacklevel=3,
        )
        return
    kept = [r for r in store_ternary_dense_as_int2(path, ternary_dense) if not r.packed]
    for result in kept:
        warnings.warn(
            f"convert: int2_dense=True: '{litert.short_name(result.name)}' in {path} keeps int8 "
            f"storage: {result.reason}.",
            stacklevel=3,
        )


def _set_export_settings(config: Any, int4_weights: bool, known: dict[str, type]) -> bool:
    """Replace, in a serialized model config, every object that has an export form by it.

    Each apprentice_tf object found (by its stored class name, in `known`) whose class has
    ``export_form`` (the quantize configs, `ActivationQuantizer`) is rebuilt from its config and
    asked for its export form (``export_form(int4_weights)``); its stored config becomes that
    form's ``get_config()``. True if anything changed.
    """
    changed = False
    if isinstance(config, dict):
        cls = known.get(str(config.get("class_name", "")))
        settings = config.get("config")
        if isinstance(settings, dict) and hasattr(cls, "export_form"):
            exported = cls.from_config(settings).export_form(int4_weights).get_config()
            if exported != settings:
                config["config"] = exported
                changed = True
        for value in config.values():
            changed = _set_export_settings(value, int4_weights, known) or changed
    elif isinstance(config, list):
        for value in config:
            changed = _set_export_settings(value, int4_weights, known) or changed
    return changed


def _export_copy(model: keras.Model, int4_weights: bool) -> keras.Model:
    """`model`, or a copy with the storage the file should have, for conversion.

    Kernels: int8 storage unless `int4_weights` (see `TernaryWeightQuantizer`). Activations:
    LiteRT has no kernels for 4-bit activations, and the TF 2.21 converter types a 4-bit
    FakeQuant activation as i4, which CONV_2D and the other integer ops reject; the copy stores
    k < 8-bit activations as int8 over the same learned ranges [min, m], so the file runs the
    network with 255 activation levels instead of 2^k − 1 (`agreement` measures the change).
    The copy shares nothing with `model`; its weights are copied.
    """
    config = model.get_config()
    if not _set_export_settings(config, int4_weights, custom_objects()):
        return model
    with quantize_scope():
        copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def _representative(data: Any) -> Callable[[], Iterable[list[np.ndarray]]]:
    def generate() -> Iterable[list[np.ndarray]]:
        source = data() if callable(data) else data
        for count, batch in enumerate(source):
            if count >= 100:
                break
            x = batch[0] if isinstance(batch, tuple | list) else batch
            yield [np.asarray(x, dtype=np.float32)]

    return generate


def evaluate(
    path: str | os.PathLike,
    dataset: tf.data.Dataset | Iterable[tuple[np.ndarray, np.ndarray]],
    num_threads: int = 1,
    verbose: int = 1,
) -> dict[str, float]:
    """Top-1 accuracy and latency of a .tflite classifier under the LiteRT interpreter.

    Args:
      path: the .tflite file.
      dataset: batches of (images, integer labels), e.g. from `apprentice_tf.data.load`.
      num_threads: interpreter threads.
      verbose: 1 shows a progress bar.

    Returns:
      {"accuracy": correct/examples, "examples": n, "ms_per_batch": median batch latency,
       "ms_per_example": total time/examples}.
    """
    interpreter = make_interpreter(path, num_threads)
    correct = examples = 0
    batch_times = []
    cardinality = None
    if isinstance(dataset, tf.data.Dataset):
        known = int(dataset.cardinality())
        cardinality = known if known > 0 else None
    progress = keras.utils.Progbar(
        cardinality, verbose=verbose, unit_name="batch", stateful_metrics=["accuracy"]
    )
    for step, (x, y) in enumerate(dataset, start=1):
        x, y = np.asarray(x), np.asarray(y).reshape(-1)
        start = time.perf_counter()
        logits = run_batch(interpreter, x)
        batch_times.append(time.perf_counter() - start)
        correct += int((logits.argmax(-1) == y).sum())
        examples += len(y)
        progress.update(step, [("accuracy", correct / examples)])
    if examples == 0:
        raise ValueError(f"evaluate: `dataset` yielded no examples for {path}.")
    return {
        "accuracy": correct / examples,
        "examples": examples,
        "ms_per_batch": 1000 * float(np.median(batch_times)),
        "ms_per_example": 1000 * float(np.sum(batch_times)) / examples,
    }


def agreement(
    model: keras.Model,
    path: str | os.PathLike,
    data: np.ndarray | tf.data.Dataset | Iterable[Any],
    num_threads: int = 1,
    verbose: int = 0,
) -> dict[str, float]:
    """How closely a .tflite file reproduces its Keras model on the same inputs (one pass).

    Both networks run on every batch: Keras in inference mode (``model(x, training=False)`` in
    one `tf.function`, which skips the per-call data-adapter set-up of ``predict_on_batch``: a
    third faster on a 10,000-image split), the file under one LiteRT interpreter. With labelled
    batches it also gives both top-1 accuracies, so a whole test split is read once for accuracy
    and agreement alike.

    Args:
      model: the Keras model the file was converted from.
      path: the .tflite file.
      data: one batch of inputs, or batches of inputs or of (inputs, labels) pairs (e.g. the
        whole test split from `apprentice_tf.data.load`).
      num_threads: interpreter threads.
      verbose: 1 shows a progress bar (its total is the dataset's cardinality when known).

    Returns:
      {"top1_agreement": fraction of examples where argmax keras = argmax tflite,
       "max_abs_diff": max |keras − tflite| over all outputs,
       "mean_abs_diff": mean |keras − tflite| over all outputs,
       "max_abs_output": max |keras| (to judge the difference against),
       "examples": number of examples}, and, when every batch carries labels y,
      "keras_top1" and "tflite_top1": the fraction of examples whose argmax equals y.
    """
    batches = [data] if isinstance(data, np.ndarray) else data
    interpreter = make_interpreter(path, num_threads)
    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    cardinality = int(data.cardinality()) if isinstance(data, tf.data.Dataset) else None
    progress = keras.utils.Progbar(
        cardinality if cardinality and cardinality > 0 else None, verbose=verbose, unit_name="batch"
    )
    same = examples = labelled = keras_correct = tflite_correct = 0
    max_diff = max_output = total_diff = 0.0
    outputs = 0
    for step, batch in enumerate(batches, start=1):
        pair = isinstance(batch, tuple | list)
        x = np.asarray(batch[0] if pair else batch)
        expected = np.asarray(infer(tf.convert_to_tensor(x)), dtype=np.float32)
        actual = run_batch(interpreter, x.astype(np.float32))
        difference = np.abs(expected - actual)
        same += int(np.sum(expected.argmax(-1) == actual.argmax(-1)))
        examples += len(x)
        if pair and len(batch) > 1:
            labels = np.asarray(batch[1]).reshape(-1)
            keras_correct += int(np.sum(expected.argmax(-1) == labels))
            tflite_correct += int(np.sum(actual.argmax(-1) == labels))
            labelled += len(labels)
        max_diff = max(max_diff, float(difference.max()))
        max_output = max(max_output, float(np.abs(expected).max()))
        total_diff += float(difference.sum())
        outputs += difference.size
        progress.update(step)
    if examples == 0:
        raise ValueError(f"agreement: `data` yielded no examples for {path}.")
    result = {
        "top1_agreement": same / examples,
        "max_abs_diff": max_diff,
        "mean_abs_diff": total_diff / outputs,
        "max_abs_output": max_output,
        "examples": examples,
    }
    if labelled == examples:
        result.update(keras_top1=keras_correct / examples, tflite_top1=tflite_correct / examples)
    return result
