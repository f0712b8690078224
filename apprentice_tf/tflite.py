"""TFLite deployment: convert, prove what the file stores, account for its size, run it with LiteRT.

Low-bit claims are checked in the .tflite flatbuffer itself, not in Keras: the converter can keep
a kernel in float or re-quantize it to more levels, so `convert` inspects its own output and
refuses a file in which a low-precision layer lost its levels.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from apprentice_tf import reporting
from apprentice_tf.compat import check_keras_object, keras, tf

__all__ = [
    "convert",
    "inspect",
    "size_report",
    "evaluate",
    "agreement",
    "WeightTensor",
    "SizeReport",
    "format_inspection",
    "low_precision_levels",
    "predict",
]

_WEIGHT_OPS = {
    schema.BuiltinOperator.CONV_2D: "CONV_2D",
    schema.BuiltinOperator.DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D",
    schema.BuiltinOperator.FULLY_CONNECTED: "FULLY_CONNECTED",
}
_TYPE_NAMES = {
    value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")
}
_NUMPY_TYPES = {
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.FLOAT16: np.float16,
    schema.TensorType.INT8: np.int8,
    schema.TensorType.UINT8: np.uint8,
    schema.TensorType.INT16: np.int16,
    schema.TensorType.INT32: np.int32,
}
_PACKED_BITS = {schema.TensorType.INT4: 4, schema.TensorType.INT2: 2}


@dataclasses.dataclass(frozen=True)
class WeightTensor:
    """One weight tensor of a conv or fully-connected op, as stored in the .tflite file.

    Attributes:
      name: the tensor's name (it contains the Keras layer's name).
      op: CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED.
      dtype: stored type (FLOAT32, INT8, INT4, ...).
      shape: stored shape.
      levels: the largest number of distinct stored values in any output channel.
      bits_needed: ceil(log2(levels)) for integer tensors (3 levels → 2 bits), the type's width
        for float ones.
      stored_bytes: bytes of the tensor's buffer in the file.
      packed_bytes: elements·bits_needed/8 plus 4 bytes per quantization scale.
      float32_bytes: elements·4.
      channels: number of output channels (quantization scales) the levels were counted over.
    """

    name: str
    op: str
    dtype: str
    shape: tuple[int, ...]
    levels: int
    bits_needed: int
    stored_bytes: int
    packed_bytes: float
    float32_bytes: int
    channels: int


@dataclasses.dataclass(frozen=True)
class SizeReport:
    """Sizes of a .tflite file, each computed as its field's docstring says.

    Attributes:
      file_bytes: the file's size on disk.
      gzip_bytes: the file gzip-compressed at level 9 (what a download would carry).
      packed_bytes: an ideal, not a file: every conv/FC weight packed at `bits_needed` bits per
        value plus its float32 scales, every other buffer (biases, other constants) as stored;
        graph structure not counted.
      float32_bytes: the same weights at 32 bits each, every other buffer as stored.
    """

    file_bytes: int
    gzip_bytes: int
    packed_bytes: int
    float32_bytes: int

    def ratios(self) -> dict[str, float]:
        """Each size divided by `float32_bytes`."""
        return {
            field: getattr(self, field) / self.float32_bytes
            for field in ("file_bytes", "gzip_bytes", "packed_bytes")
        }


def _unpack(raw: bytes, tensor_type: int, count: int) -> np.ndarray:
    """Decode a buffer; INT4/INT2 are packed low bits first, sign-extended."""
    if tensor_type in _PACKED_BITS:
        bits = _PACKED_BITS[tensor_type]
        per_byte = 8 // bits
        data = np.frombuffer(raw, dtype=np.uint8)
        values = np.stack([(data >> (bits * i)) & ((1 << bits) - 1) for i in range(per_byte)], -1)
        values = values.reshape(-1)[:count].astype(np.int8)
        return np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return np.frombuffer(raw, dtype=_NUMPY_TYPES[tensor_type])[:count]


def _channel_levels(values: np.ndarray, axis: int) -> int:
    rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    return max(len(np.unique(row)) for row in rows)


def inspect(path: str | os.PathLike) -> list[WeightTensor]:
    """List every conv/fully-connected weight tensor stored in a .tflite file.

    Levels are counted on the stored integers (or floats) per output channel, i.e. along the
    tensor's quantized dimension (the first axis for conv and FC, the last for depthwise).

    Args:
      path: a .tflite file.

    Returns:
      One `WeightTensor` per distinct weight tensor, in the order the ops use them.
    """
    buffer = Path(path).read_bytes()
    model = schema.ModelT.InitFromPackedBuf(buffer, 0)
    results: dict[int, WeightTensor] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            if builtin not in _WEIGHT_OPS or len(op.inputs) < 2 or op.inputs[1] in results:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            data = model.buffers[tensor.buffer].data
            if data is None or len(data) == 0:
                continue
            raw = bytes(data)
            shape = tuple(int(d) for d in tensor.shape)
            count = int(np.prod(shape))
            values = _unpack(raw, tensor.type, count).reshape(shape)
            quantization = tensor.quantization
            scales = (
                0 if quantization is None or quantization.scale is None else len(quantization.scale)
            )
            if builtin == schema.BuiltinOperator.DEPTHWISE_CONV_2D:
                axis = len(shape) - 1
            elif scales > 1:
                axis = int(quantization.quantizedDimension)
            else:
                axis = 0
            levels = _channel_levels(values, axis)
            is_float = tensor.type in (schema.TensorType.FLOAT32, schema.TensorType.FLOAT16)
            bits = values.dtype.itemsize * 8 if is_float else max(1, math.ceil(math.log2(levels)))
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            results[op.inputs[1]] = WeightTensor(
                name=name,
                op=_WEIGHT_OPS[builtin],
                dtype=_TYPE_NAMES[tensor.type],
                shape=shape,
                levels=levels,
                bits_needed=bits,
                stored_bytes=len(raw),
                packed_bytes=count * bits / 8 + 4 * scales,
                float32_bytes=count * 4,
                channels=shape[axis],
            )
    return list(results.values())


def size_report(path: str | os.PathLike, weights: list[WeightTensor] | None = None) -> SizeReport:
    """File, gzip, ideal packed and float32-equivalent sizes of a .tflite file (`SizeReport`)."""
    buffer = Path(path).read_bytes()
    weights = inspect(path) if weights is None else weights
    model = schema.ModelT.InitFromPackedBuf(buffer, 0)
    all_constants = sum(len(b.data) for b in model.buffers if b.data is not None)
    other = all_constants - sum(w.stored_bytes for w in weights)
    return SizeReport(
        file_bytes=len(buffer),
        gzip_bytes=len(gzip.compress(buffer, compresslevel=9, mtime=0)),
        packed_bytes=int(math.ceil(sum(w.packed_bytes for w in weights) + other)),
        float32_bytes=int(sum(w.float32_bytes for w in weights) + other),
    )


def format_inspection(weights: list[WeightTensor], report: SizeReport) -> str:
    """The inspection as a markdown table followed by the labelled size report."""
    lines = [
        "| weight tensor | op | dtype | shape | levels/channel | bits | stored B | packed B |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in weights:
        lines.append(
            f"| {_short_name(w.name)} | {w.op} | {w.dtype} | {'x'.join(map(str, w.shape))} | "
            f"{w.levels} | {w.bits_needed} | {w.stored_bytes} | {w.packed_bytes:.0f} |"
        )
    ratios = report.ratios()
    lines += [
        "",
        f"file bytes (on disk):                        {report.file_bytes:>10,d}"
        f"  ({ratios['file_bytes']:.3f} of float32)",
        f"gzip bytes (gzip -9 of the file):            {report.gzip_bytes:>10,d}"
        f"  ({ratios['gzip_bytes']:.3f} of float32)",
        f"packed bytes (ideal: weights at bits needed): {report.packed_bytes:>9,d}"
        f"  ({ratios['packed_bytes']:.3f} of float32)",
        f"float32-equivalent bytes (weights at 32 bit): {report.float32_bytes:>9,d}",
    ]
    return "\n".join(lines)


def _short_name(name: str) -> str:
    first = name.split(";")[0]
    parts = first.split("/")
    return "/".join(parts[1:3]) if len(parts) > 2 else first


def low_precision_levels(model: keras.Model) -> dict[str, int]:
    """Maximum levels per output channel each low-precision layer of `model` may store.

    Ternary layers 3, k-bit layers 2^k − 1, keyed by the QuantizeWrapper's name.
    """
    from apprentice_tf.configs import NBitQuantizeConfig, TernaryQuantizeConfig

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

    Returns:
      The path written.

    Raises:
      RuntimeError: `verify` found a layer whose levels were not kept.
    """
    check_keras_object(model, "model")
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"convert: `path` {str(path)!r} is a directory; pass a file name.")
    converter = tf.lite.TFLiteConverter.from_keras_model(_export_copy(model, int4_weights))
    if representative_data is not None or _is_quantization_aware(model):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative_data is not None:
        converter.representative_dataset = _representative(representative_data)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        flatbuffer = converter.convert()
    path.parent.mkdir(parents=True, exist_ok=True)
    reporting.write_bytes(path, flatbuffer)
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


def _set_export_settings(config: Any, int4_weights: bool) -> bool:
    """Rewrite a serialized model config for export; True if anything changed.

    Activation widths below 8 become 8, and every weight config's ``int4_storage`` becomes
    `int4_weights`.
    """
    changed = False
    if isinstance(config, dict):
        name = str(config.get("class_name", "")).split(">")[-1]
        settings = config.get("config")
        if isinstance(settings, dict):
            for key in _ACTIVATION_WIDTH_KEYS.get(name, ()):
                if settings.get(key) is not None and settings[key] < 8:
                    settings[key] = 8
                    changed = True
            if name in _WEIGHT_CONFIGS and settings.get("int4_storage", False) != int4_weights:
                settings["int4_storage"] = int4_weights
                changed = True
        for value in config.values():
            changed = _set_export_settings(value, int4_weights) or changed
    elif isinstance(config, list):
        for value in config:
            changed = _set_export_settings(value, int4_weights) or changed
    return changed


_ACTIVATION_WIDTH_KEYS = {
    "ActivationQuantizeConfig": ("num_bits",),
    "ActivationQuantizer": ("num_bits",),
    "TernaryQuantizeConfig": ("activation_bits",),
    "NBitQuantizeConfig": ("activation_bits",),
}
_WEIGHT_CONFIGS = ("TernaryQuantizeConfig", "NBitQuantizeConfig")


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
    if not _set_export_settings(config, int4_weights):
        return model
    from apprentice_tf.quantize import quantize_scope

    with quantize_scope():
        copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def _is_quantization_aware(model: keras.Model) -> bool:
    return any(hasattr(layer, "quantize_config") for layer in model.layers)


def _representative(data: Any) -> Callable[[], Iterable[list[np.ndarray]]]:
    def generate() -> Iterable[list[np.ndarray]]:
        source = data() if callable(data) else data
        for count, batch in enumerate(source):
            if count >= 100:
                break
            x = batch[0] if isinstance(batch, tuple | list) else batch
            yield [np.asarray(x, dtype=np.float32)]

    return generate


def _interpreter(path: str | os.PathLike, num_threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"`num_threads` must be an integer >= 1, received {num_threads!r}.")
    return Interpreter(model_path=str(path), num_threads=num_threads)


def predict(path: str | os.PathLike, x: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Run a .tflite file on one batch `x` with the LiteRT interpreter and return its output.

    Integer inputs and outputs (full-integer files) are quantized and dequantized with the
    file's own scales, so the result is always float.
    """
    interpreter = _interpreter(path, num_threads)
    return _run_batch(interpreter, np.asarray(x))


def _run_batch(interpreter: Any, x: np.ndarray) -> np.ndarray:
    input_detail = interpreter.get_input_details()[0]
    if tuple(input_detail["shape"]) != x.shape:
        interpreter.resize_tensor_input(input_detail["index"], x.shape)
        interpreter.allocate_tensors()
    if input_detail["dtype"] != np.float32:
        scale, zero_point = input_detail["quantization"]
        x = np.round(x / scale + zero_point).astype(input_detail["dtype"])
    interpreter.set_tensor(input_detail["index"], x.astype(input_detail["dtype"]))
    interpreter.invoke()
    output_detail = interpreter.get_output_details()[0]
    y = interpreter.get_tensor(output_detail["index"])
    if output_detail["dtype"] != np.float32:
        scale, zero_point = output_detail["quantization"]
        y = (y.astype(np.float32) - zero_point) * scale
    return y


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
    interpreter = _interpreter(path, num_threads)
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
        logits = _run_batch(interpreter, x)
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


def agreement(model: keras.Model, path: str | os.PathLike, x: np.ndarray) -> dict[str, float]:
    """How closely a .tflite file reproduces its Keras model on the batch `x`.

    Returns:
      {"top1_agreement": fraction of rows with the same argmax,
       "max_abs_diff": max |keras − tflite| over all outputs,
       "max_abs_output": max |keras| (to judge the difference against)}.
    """
    expected = model.predict(x, verbose=0)
    actual = predict(path, x)
    return {
        "top1_agreement": float(np.mean(expected.argmax(-1) == actual.argmax(-1))),
        "max_abs_diff": float(np.max(np.abs(expected - actual))),
        "max_abs_output": float(np.max(np.abs(expected))),
    }
