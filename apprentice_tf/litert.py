"""The .tflite file and the LiteRT runtime, without TensorFlow.

Everything here needs only the flatbuffer schema and the interpreter that ai-edge-litert ships
(plus NumPy), so reading, sizing, timing and placing a .tflite file starts in a fraction of a
second and prints nothing: the `apprentice-tf inspect | bench` commands use this module alone.
`apprentice_tf.tflite` (which needs TensorFlow to convert) re-exports the public names, so
`atf.tflite.inspect` and `atf.litert.inspect` are the same function.

* `read_model` checks that a path holds a TFLite flatbuffer and fails with one line naming the
  file and what is wrong (`TFLiteFileError`).
* `inspect` / `size_report`: what each conv/FC weight tensor stores, and the file's sizes.
* `delegation`: which operators LiteRT hands to its default XNNPACK delegate and which run on
  its built-in kernels, with the reason XNNPACK gave them back where the LiteRT source states it.
* `latency`: LiteRT latency of several files, measured alternately in one process.
* `store_ternary_dense_as_int2`: rewrite ternary FULLY_CONNECTED kernels as INT2 (4 per byte).
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import struct
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from apprentice_tf import _checks, _io

__all__ = [
    "TFLiteFileError",
    "read_model",
    "WeightTensor",
    "SizeReport",
    "inspect",
    "size_report",
    "format_inspection",
    "OpPlacement",
    "delegation",
    "format_delegation",
    "Latency",
    "latency",
    "latency_ratio",
    "Int2Packing",
    "store_ternary_dense_as_int2",
    "make_interpreter",
    "run_batch",
    "predict",
    "invoke_times",
    "fill_random_inputs",
    "delegation_summary",
    "short_name",
    "unpack_values",
    "TYPE_NAMES",
    "WEIGHT_OPS",
]

#: Operators whose second input is a weight tensor `inspect` reports, by builtin code.
WEIGHT_OPS: dict[int, str] = {
    schema.BuiltinOperator.CONV_2D: "CONV_2D",
    schema.BuiltinOperator.DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D",
    schema.BuiltinOperator.FULLY_CONNECTED: "FULLY_CONNECTED",
}
#: Schema tensor type code -> name (FLOAT32, INT8, INT4, INT2, ...).
TYPE_NAMES: dict[int, str] = {
    value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")
}
_OP_NAMES = {
    value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")
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
_IDENTIFIER = b"TFL3"
#: Name LiteRT gives the node that replaces a delegated partition.
_DELEGATE_NODE = "DELEGATE"


class TFLiteFileError(ValueError):
    """A path that does not hold a readable TFLite model; the message names the file and why."""


# ----------------------------------------------------------------------------------------------
# Reading the flatbuffer


def read_model(path: str | os.PathLike) -> tuple[bytes, Any]:
    """The bytes of a .tflite file and its unpacked flatbuffer (`schema.ModelT`).

    Checks, in order: the path exists and is a file; it has at least the 8 bytes of a flatbuffer
    header; bytes 4..8 are the TFLite file identifier ``TFL3``; the flatbuffer unpacks (a
    truncated file fails here) and has a subgraph.

    Raises:
      TFLiteFileError: one of those checks failed; the message is one line:
        ``<path>: <what is wrong>``.
    """
    path = Path(path)
    if not path.exists():
        raise TFLiteFileError(f"{path}: no such file")
    if path.is_dir():
        raise TFLiteFileError(f"{path}: is a directory, not a .tflite file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TFLiteFileError(f"{path}: cannot be read ({error.strerror or error})") from error
    if len(data) < 8:
        raise TFLiteFileError(
            f"{path}: only {len(data)} bytes, too short for a TFLite flatbuffer "
            "(empty, truncated or not a .tflite file)"
        )
    if data[4:8] != _IDENTIFIER:
        raise TFLiteFileError(
            f"{path}: not a TFLite model (file identifier {data[4:8]!r}, expected {_IDENTIFIER!r})"
        )
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError) as error:
        raise TFLiteFileError(
            f"{path}: truncated or corrupt TFLite flatbuffer ({len(data)} bytes that do not "
            f"unpack: {error})"
        ) from error
    if not model.subgraphs:
        raise TFLiteFileError(f"{path}: TFLite flatbuffer without a subgraph")
    for buffer in model.buffers or ():
        if buffer.offset > 1 and buffer.offset + buffer.size > len(data):
            raise TFLiteFileError(
                f"{path}: truncated ({len(data)} bytes; a weight buffer ends at byte "
                f"{buffer.offset + buffer.size})"
            )
    return data, model


def _buffer_bytes(data: bytes, buffer: Any) -> bytes:
    """A buffer's contents, stored inline or (large models) at an offset after the flatbuffer."""
    if buffer.offset > 1:
        return data[buffer.offset : buffer.offset + buffer.size]
    return b"" if buffer.data is None else bytes(buffer.data)


def _builtin_code(model: Any, op: Any) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _name(tensor: Any) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


# ----------------------------------------------------------------------------------------------
# Weights and sizes


@dataclasses.dataclass(frozen=True)
class WeightTensor:
    """One weight tensor of a conv or fully-connected op, as stored in the .tflite file.

    Attributes:
      name: the tensor's name (it contains the Keras layer's name).
      op: CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED.
      dtype: stored type (FLOAT32, INT8, INT4, INT2, ...).
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


def unpack_values(raw: bytes, tensor_type: int, count: int) -> np.ndarray:
    """Decode `count` stored values of a buffer.

    INT4 and INT2 are packed low bits first (value i of a byte is bits [b·i, b·i + b)) and
    sign-extended: v ≥ 2^(b−1) means v − 2^b. Other types are read as their NumPy type.
    """
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


def _weights(data: bytes, model: Any) -> list[WeightTensor]:
    results: dict[int, WeightTensor] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators or ():
            builtin = _builtin_code(model, op)
            inputs = list(op.inputs if op.inputs is not None else ())
            if builtin not in WEIGHT_OPS or len(inputs) < 2 or inputs[1] in results:
                continue
            tensor = subgraph.tensors[inputs[1]]
            raw = _buffer_bytes(data, model.buffers[tensor.buffer])
            if not raw or (tensor.type not in _NUMPY_TYPES and tensor.type not in _PACKED_BITS):
                continue
            shape = tuple(int(d) for d in tensor.shape)
            count = int(np.prod(shape))
            values = unpack_values(raw, tensor.type, count).reshape(shape)
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
            results[inputs[1]] = WeightTensor(
                name=_name(tensor),
                op=WEIGHT_OPS[builtin],
                dtype=TYPE_NAMES[tensor.type],
                shape=shape,
                levels=levels,
                bits_needed=bits,
                stored_bytes=len(raw),
                packed_bytes=count * bits / 8 + 4 * scales,
                float32_bytes=count * 4,
                channels=shape[axis],
            )
    return list(results.values())


def inspect(path: str | os.PathLike) -> list[WeightTensor]:
    """List every conv/fully-connected weight tensor stored in a .tflite file.

    Levels are counted on the stored integers (or floats) per output channel, i.e. along the
    tensor's quantized dimension (the first axis for conv and FC, the last for depthwise):
    levels = max over channels c of |{w[c, ...]}|, bits_needed = ⌈log2 levels⌉.

    Args:
      path: a .tflite file.

    Returns:
      One `WeightTensor` per distinct weight tensor, in the order the ops use them.

    Raises:
      TFLiteFileError: `path` is missing or is not a readable TFLite flatbuffer.
    """
    return _weights(*read_model(path))


def size_report(path: str | os.PathLike, weights: list[WeightTensor] | None = None) -> SizeReport:
    """File, gzip, ideal packed and float32-equivalent sizes of a .tflite file (`SizeReport`).

    packed = Σ_weights (n·bits_needed/8 + 4·scales) + other constants; float32 = Σ_weights 4·n +
    other constants, where "other constants" are every buffer that is not a conv/FC weight.
    """
    data, model = read_model(path)
    weights = _weights(data, model) if weights is None else weights
    all_constants = sum(len(_buffer_bytes(data, b)) for b in model.buffers or ())
    other = all_constants - sum(w.stored_bytes for w in weights)
    return SizeReport(
        file_bytes=len(data),
        gzip_bytes=len(gzip.compress(data, compresslevel=9, mtime=0)),
        packed_bytes=int(math.ceil(sum(w.packed_bytes for w in weights) + other)),
        float32_bytes=int(sum(w.float32_bytes for w in weights) + other),
    )


def short_name(name: str) -> str:
    """The Keras layer part of a TFLite tensor name: ``model/quant_conv1/k`` → ``quant_conv1/k``."""
    first = name.split(";")[0]
    parts = first.split("/")
    return "/".join(parts[1:3]) if len(parts) > 2 else first


def format_inspection(weights: list[WeightTensor], report: SizeReport) -> str:
    """The inspection as a markdown table followed by the labelled size report."""
    lines = [
        "| weight tensor | op | dtype | shape | levels/channel | bits | stored B | packed B |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in weights:
        lines.append(
            f"| {short_name(w.name)} | {w.op} | {w.dtype} | {'x'.join(map(str, w.shape))} | "
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


# ----------------------------------------------------------------------------------------------
# INT2 storage of ternary FULLY_CONNECTED kernels


@dataclasses.dataclass(frozen=True)
class Int2Packing:
    """What `store_ternary_dense_as_int2` did with one FULLY_CONNECTED weight tensor.

    Attributes:
      name: the weight tensor's name.
      packed: True when it is now stored as INT2.
      reason: why it kept its storage ("" when packed).
    """

    name: str
    packed: bool
    reason: str


def _ternary_rows(values: np.ndarray) -> np.ndarray | None:
    """Per row c the magnitude m_c when every value of row c is in {−m_c, 0, +m_c}, else None."""
    rows = values.reshape(values.shape[0], -1).astype(np.int32)
    magnitude = np.abs(rows).max(axis=1)
    if not np.all((rows == 0) | (np.abs(rows) == magnitude[:, None])):
        return None
    return magnitude


def _pack_int2(signs: np.ndarray) -> np.ndarray:
    """Pack values in {−1, 0, 1} four to a byte, low bits first (two's complement in 2 bits)."""
    flat = signs.reshape(-1).astype(np.int16) & 3
    flat = np.concatenate([flat, np.zeros(-len(flat) % 4, flat.dtype)]).reshape(-1, 4)
    packed = flat[:, 0] | (flat[:, 1] << 2) | (flat[:, 2] << 4) | (flat[:, 3] << 6)
    return packed.astype(np.uint8)


def _int2_rewrite(model: Any, data: bytes, subgraph: Any, op: Any) -> str:
    """Rewrite one FULLY_CONNECTED weight (and its bias) of `model` as INT2; "" or a reason."""
    inputs = list(op.inputs)
    weight = subgraph.tensors[inputs[1]]
    source = subgraph.tensors[inputs[0]]
    if weight.type != schema.TensorType.INT8:
        return f"stored as {TYPE_NAMES.get(weight.type)}, not INT8"
    if source.type != schema.TensorType.INT8:
        return f"its input is {TYPE_NAMES.get(source.type)}, not INT8 (the op is not integer)"
    rows, channels = int(weight.shape[0]), int(np.prod(weight.shape[1:]))
    if channels % 4:
        return (
            f"{channels} input channels: XNNPACK's FULLY_CONNECTED takes INT2 filters only when "
            "the input channels are a multiple of 4"
        )
    values = np.frombuffer(_buffer_bytes(data, model.buffers[weight.buffer]), np.int8)
    magnitude = _ternary_rows(values[: rows * channels].reshape(rows, channels))
    if magnitude is None:
        return "not ternary: a row holds values other than {-m, 0, +m}"
    quantization = weight.quantization
    scale = np.asarray(quantization.scale, np.float64)
    scale = np.broadcast_to(scale, (rows,)) if scale.size == 1 else scale
    if scale.size != rows or np.any(np.asarray(quantization.zeroPoint) != 0):
        return "its quantization is neither per-tensor nor per-row with zero points 0"
    magnitude = np.where(magnitude == 0, 1, magnitude)  # all-zero rows: any positive scale
    new_scale = (scale * magnitude).astype(np.float32)
    if len(inputs) > 2 and inputs[2] >= 0:
        bias = subgraph.tensors[inputs[2]]
        if bias.type != schema.TensorType.INT32:
            return f"its bias is {TYPE_NAMES.get(bias.type)}, not INT32"
        old = np.frombuffer(_buffer_bytes(data, model.buffers[bias.buffer]), np.int32)
        # the bias is stored at scale s_in·s_c: keep its value as s_c grows by m_c
        model.buffers[bias.buffer].data = np.round(old / magnitude).astype(np.int32).view(np.uint8)
        model.buffers[bias.buffer].offset = model.buffers[bias.buffer].size = 0
        input_scale = float(source.quantization.scale[0])
        bias.quantization.scale = [float(v) for v in input_scale * new_scale.astype(np.float64)]
        bias.quantization.zeroPoint = [0] * rows
        bias.quantization.quantizedDimension = 0
    signs = np.sign(values[: rows * channels]).astype(np.int8)
    model.buffers[weight.buffer].data = _pack_int2(signs)
    model.buffers[weight.buffer].offset = model.buffers[weight.buffer].size = 0
    weight.type = schema.TensorType.INT2
    quantization.scale = [float(v) for v in new_scale]
    quantization.zeroPoint = [0] * rows
    quantization.quantizedDimension = 0
    return ""


def _runtime_refusal(content: bytes) -> str:
    """ "" when LiteRT loads, allocates and invokes `content` once; else the runtime's error."""
    try:
        interpreter = Interpreter(model_content=content, num_threads=1)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
    except (RuntimeError, ValueError) as error:
        return " ".join(str(error).split())
    return ""


def store_ternary_dense_as_int2(
    path: str | os.PathLike, layer_names: Iterable[str] | None = None
) -> list[Int2Packing]:
    """Store the ternary FULLY_CONNECTED kernels of a .tflite file as INT2, in place.

    A ternary row c stored as int8 holds values in {−m_c, 0, +m_c} at scale s_c (the
    converter's form), i.e. weights w = s_c·m_c·t with t ∈ {−1, 0, 1}. The rewrite stores t as
    INT2 (four values a byte, low bits first) with the per-row scale s'_c = s_c·m_c, so the
    dequantized weights are unchanged; the int32 bias, stored at scale s_in·s_c, becomes
    round(b/m_c) at s_in·s'_c (a rounding of at most s_in·s'_c/2 per output). LiteRT runs INT2
    filters in FULLY_CONNECTED only: XNNPACK when the input channels are a multiple of 4 and
    the scales are per row, the built-in kernel by unpacking to int8.

    A tensor keeps its storage, with the reason in the result, when its op's input is not
    int8, it is not ternary, or its input channels are not a multiple of 4. When the rewritten
    file does not load and run once in this LiteRT, nothing is written and every tensor carries
    the runtime's error as its reason.

    Args:
      path: a .tflite file, rewritten atomically when at least one tensor was packed.
      layer_names: Keras layer names whose FULLY_CONNECTED kernels to pack (matched as
        ``/<name>/`` in the tensor name); None packs every FULLY_CONNECTED that qualifies.

    Returns:
      One `Int2Packing` per FULLY_CONNECTED weight tensor considered.
    """
    data, model = read_model(path)
    names = None if layer_names is None else list(layer_names)
    results = []
    for subgraph in model.subgraphs:
        done: set[int] = set()
        for op in subgraph.operators or ():
            if _builtin_code(model, op) != schema.BuiltinOperator.FULLY_CONNECTED:
                continue
            inputs = list(op.inputs if op.inputs is not None else ())
            if len(inputs) < 2 or inputs[1] in done:
                continue
            done.add(inputs[1])
            name = _name(subgraph.tensors[inputs[1]])
            if names is not None and not any(f"/{n}/" in name.split(";")[0] for n in names):
                continue
            reason = _int2_rewrite(model, data, subgraph, op)
            results.append(Int2Packing(name=name, packed=not reason, reason=reason))
    if not any(r.packed for r in results):
        return results
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
    content = bytes(builder.Output())
    refusal = _runtime_refusal(content)
    if refusal:
        return [
            Int2Packing(r.name, False, f"this LiteRT cannot run the INT2 file: {refusal}")
            if r.packed
            else r
            for r in results
        ]
    _io.write_bytes(path, content)
    return results


# ----------------------------------------------------------------------------------------------
# The interpreter


def make_interpreter(path: str | os.PathLike, num_threads: int = 1) -> Any:
    """A LiteRT `Interpreter` for a checked .tflite file, tensors allocated (which applies the
    default XNNPACK delegate).

    Raises:
      TFLiteFileError: `path` is not a readable TFLite model (see `read_model`).
      ValueError: `num_threads` is not an integer >= 1.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"`num_threads` must be an integer >= 1, received {num_threads!r}.")
    read_model(path)
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def run_batch(interpreter: Any, x: np.ndarray) -> np.ndarray:
    """Run `interpreter` on the batch `x` (resizing its input if needed) and return its output.

    Integer inputs are quantized as q = round(x/scale + zero_point), integer outputs
    dequantized as y = (q − zero_point)·scale, with the file's own parameters.
    """
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


def predict(path: str | os.PathLike, x: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Run a .tflite file on one batch `x` with the LiteRT interpreter and return its output.

    Integer inputs and outputs (full-integer files) are quantized and dequantized with the
    file's own scales, so the result is always float.
    """
    return run_batch(make_interpreter(path, num_threads), np.asarray(x))


# ----------------------------------------------------------------------------------------------
# Delegation


@dataclasses.dataclass(frozen=True)
class OpPlacement:
    """Where LiteRT runs one operator of a .tflite file (subgraph 0).

    Attributes:
      index: the operator's position in the file.
      op: its builtin name (CONV_2D, ADD, ...).
      weight_dtype: stored type of its weight (second input) for conv/FC ops, else "".
      delegated: True when the default XNNPACK delegate took it.
      kernel: "XNNPACK", "built-in" (LiteRT's optimized kernel) or "built-in reference" (a case
        the LiteRT source sends to its reference kernel, e.g. grouped CONV_2D).
      reason: why XNNPACK did not take it, where the LiteRT source states the rule; "" otherwise.
    """

    index: int
    op: str
    weight_dtype: str
    delegated: bool
    kernel: str
    reason: str


def _graph_nodes(interpreter: Any) -> list[dict[str, Any]]:
    """The interpreter's nodes after delegation: the file's operators, then one node per
    delegated partition. `_get_ops_details` is the interpreter's (experimental) node listing."""
    return interpreter._get_ops_details()


def _delegated_operators(nodes: list[dict[str, Any]], operator_count: int) -> set[int]:
    """Indices of the file's operators inside some delegate partition.

    A partition node's inputs are the tensors entering the partition and its outputs those
    leaving it; walking producers back from its outputs, stopping at its inputs, visits exactly
    the operators it replaced (partitions are convex).
    """
    producer = {}
    for node in nodes[:operator_count]:
        for tensor in node["outputs"]:
            producer[int(tensor)] = int(node["index"])
    inputs_of = {int(n["index"]): [int(t) for t in n["inputs"]] for n in nodes[:operator_count]}
    delegated: set[int] = set()
    for node in nodes[operator_count:]:
        if node["op_name"] != _DELEGATE_NODE:
            continue
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor not in producer:
                continue
            index = producer[tensor]
            if index in delegated:
                continue
            delegated.add(index)
            stack.extend(inputs_of[index])
    return delegated


def _fallback(op: str, filter_tensor: Any, input_tensor: Any) -> tuple[str, str]:
    """(kernel, reason) for an operator XNNPACK left to the built-in kernels."""
    filter_type = TYPE_NAMES.get(filter_tensor.type, "") if filter_tensor is not None else ""
    if op in ("CONV_2D", "DEPTHWISE_CONV_2D") and filter_type in ("INT4", "INT2"):
        return (
            "built-in",
            f"XNNPACK's {op} takes FLOAT32, FLOAT16 or INT8 filters only, this filter is "
            f"{filter_type}; the built-in kernel unpacks it to int8 on every invoke",
        )
    if op == "FULLY_CONNECTED" and filter_type in ("INT4", "INT2") and input_tensor is not None:
        channels = int(filter_tensor.shape[-1])
        multiple = 2 if filter_type == "INT4" else 4
        if channels % multiple:
            return (
                "built-in",
                f"XNNPACK's FULLY_CONNECTED needs input channels divisible by {multiple} for "
                f"{filter_type} filters, this one has {channels}",
            )
    if op == "CONV_2D" and filter_tensor is not None and input_tensor is not None:
        in_channels, filter_channels = int(input_tensor.shape[-1]), int(filter_tensor.shape[-1])
        if filter_channels and in_channels != filter_channels:
            return "built-in reference", "grouped CONV_2D: LiteRT has only a reference kernel"
    return "built-in", ""


def delegation(path: str | os.PathLike, num_threads: int = 1) -> list[OpPlacement]:
    """Which operators of a .tflite file LiteRT runs on XNNPACK and which on built-in kernels.

    The file is loaded as `make_interpreter` loads it (the default delegate, XNNPACK, applied
    when tensors are allocated); an operator is delegated when it lies inside one of the
    partitions XNNPACK replaced (see `_delegated_operators`). For operators left to LiteRT's
    built-in kernels, `OpPlacement.reason` gives the rule of the LiteRT source that applies:
    XNNPACK's CONV_2D accepts only FLOAT32/FLOAT16/INT8 filters (so INT4 conv kernels run on
    the built-in kernel, which unpacks them to int8 on each invoke); its FULLY_CONNECTED takes
    INT4 filters with an even and INT2 filters with a multiple-of-4 number of input channels.

    Returns:
      One `OpPlacement` per operator of subgraph 0, in file order.
    """
    data, model = read_model(path)
    subgraph = model.subgraphs[0]
    operators = list(subgraph.operators or ())
    interpreter = make_interpreter(path, num_threads)
    interpreter.allocate_tensors()
    delegated = _delegated_operators(_graph_nodes(interpreter), len(operators))
    placements = []
    for index, op in enumerate(operators):
        name = _OP_NAMES.get(_builtin_code(model, op), "CUSTOM")
        inputs = list(op.inputs if op.inputs is not None else ())
        input_tensor = subgraph.tensors[inputs[0]] if inputs and inputs[0] >= 0 else None
        filter_tensor = None
        if _builtin_code(model, op) in WEIGHT_OPS and len(inputs) > 1:
            filter_tensor = subgraph.tensors[inputs[1]]
        if index in delegated:
            kernel, reason = "XNNPACK", ""
        else:
            kernel, reason = _fallback(name, filter_tensor, input_tensor)
        placements.append(
            OpPlacement(
                index=index,
                op=name,
                weight_dtype=TYPE_NAMES[filter_tensor.type] if filter_tensor is not None else "",
                delegated=index in delegated,
                kernel=kernel,
                reason=reason,
            )
        )
    return placements


def delegation_summary(placements: Sequence[OpPlacement]) -> str:
    """``"n of N ops on XNNPACK"`` plus the built-in ops by name and weight type."""
    on_xnnpack = sum(p.delegated for p in placements)
    text = f"{on_xnnpack} of {len(placements)} ops on XNNPACK"
    rest: dict[str, int] = {}
    for p in placements:
        if not p.delegated:
            key = p.op + (f" ({p.weight_dtype} filter)" if p.weight_dtype else "")
            key += ", reference" if p.kernel == "built-in reference" else ""
            rest[key] = rest.get(key, 0) + 1
    if rest:
        text += "; built-in: " + ", ".join(f"{n}x {key}" for key, n in rest.items())
    return text


def format_delegation(placements: Sequence[OpPlacement]) -> str:
    """A one-line summary, then the operators XNNPACK did not take, grouped, with the reason."""
    lines = [f"runtime: {delegation_summary(placements)}"]
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for p in placements:
        if not p.delegated:
            groups.setdefault((p.op, p.weight_dtype, p.kernel, p.reason), []).append(p.index)
    if groups:
        lines += [
            "",
            "| op # | op | weight dtype | kernel | why not XNNPACK |",
            "|---|---|---|---|---|",
        ]
        for (op, dtype, kernel, reason), indices in groups.items():
            reason = reason or "not covered by the LiteRT source rules apprentice_tf knows"
            numbers = ", ".join(map(str, indices))
            lines.append(f"| {numbers} | {op} | {dtype or '-'} | {kernel} | {reason} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Latency


@dataclasses.dataclass(frozen=True)
class Latency:
    """LiteRT latency of one file at one thread count, from `latency`.

    Attributes:
      path: the file.
      num_threads: interpreter threads.
      median_ms: the median of `repeat_medians_ms`.
      repeat_medians_ms: per repeat, the median of its `runs` timed invokes (in repeat order).
      p10_ms, p90_ms: 10th and 90th percentiles over all timed invokes of all repeats.
      runs: timed invokes per repeat; warmup: untimed invokes before each repeat's timed ones.
    """

    path: str
    num_threads: int
    median_ms: float
    repeat_medians_ms: tuple[float, ...]
    p10_ms: float
    p90_ms: float
    runs: int
    warmup: int

    @property
    def spread_ms(self) -> tuple[float, float]:
        """(min, max) of the repeat medians: how far the estimate moved between repeats."""
        return min(self.repeat_medians_ms), max(self.repeat_medians_ms)


def fill_random_inputs(interpreter: Any, rng: np.random.Generator) -> None:
    """Allocate `interpreter`'s tensors and set every input to seeded random values: uniform
    [0, 1) for float inputs, uniform over the whole range for integer ones."""
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        dtype = np.dtype(detail["dtype"])
        if np.issubdtype(dtype, np.floating):
            value = rng.random(detail["shape"]).astype(dtype)
        else:
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max, detail["shape"], endpoint=True).astype(dtype)
        interpreter.set_tensor(detail["index"], value)


def invoke_times(interpreter: Any, runs: int, warmup: int) -> np.ndarray:
    """Seconds of each of `runs` timed ``invoke()`` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        interpreter.invoke()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times[i] = time.perf_counter() - start
    return times


def latency(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    num_threads: int | Iterable[int] = (1, 2),
    *,
    repeats: int = 5,
    runs: int = 100,
    warmup: int = 20,
    seed: int = 0,
) -> list[Latency]:
    """LiteRT latency of one or several .tflite files, measured side by side.

    Every (file, thread count) pair gets its own interpreter (default XNNPACK delegate) and one
    seeded random input of the file's shape (batch as stored, usually 1). Then `repeats` rounds
    run; each round visits every pair (in forward order on even rounds, backward on odd ones)
    and, for each, makes `warmup` untimed and `runs` timed ``invoke()`` calls. A pair's
    estimate is the median over rounds of its per-round median, so a slow drift of the machine
    (another process, clock changes) reaches all files alike; `Latency.spread_ms` and
    `latency_ratio` show how much it moved.

    Args:
      paths: one .tflite file or several.
      num_threads: one interpreter thread count or several.
      repeats, runs, warmup: rounds, timed and untimed invokes per pair and round.
      seed: seed of the random inputs.

    Returns:
      One `Latency` per (file, thread count), files outer, thread counts inner, in the order
      given.
    """
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    threads = [num_threads] if isinstance(num_threads, int) else list(num_threads)
    if not paths:
        raise ValueError("latency: `paths` is empty; pass one .tflite file or several.")
    if not threads:
        raise ValueError("latency: `num_threads` is empty; pass 1, 2 or a list such as (1, 2).")
    repeats = _checks.integer("latency", "repeats", repeats, 1)
    runs = _checks.integer("latency", "runs", runs, 1)
    warmup = _checks.integer("latency", "warmup", warmup, 0)
    rng = np.random.default_rng(seed)
    pairs = [(str(path), count) for path in paths for count in threads]
    interpreters = {}
    for path, count in pairs:
        interpreters[path, count] = make_interpreter(path, count)
        fill_random_inputs(interpreters[path, count], rng)
    times: dict[tuple[str, int], list[np.ndarray]] = {pair: [] for pair in pairs}
    for round_index in range(repeats):
        for pair in pairs if round_index % 2 == 0 else reversed(pairs):
            times[pair].append(1000.0 * invoke_times(interpreters[pair], runs, warmup))
    results = []
    for path, count in pairs:
        blocks = times[path, count]
        every = np.concatenate(blocks)
        medians = tuple(float(np.median(block)) for block in blocks)
        results.append(
            Latency(
                path=path,
                num_threads=count,
                median_ms=float(np.median(medians)),
                repeat_medians_ms=medians,
                p10_ms=float(np.percentile(every, 10)),
                p90_ms=float(np.percentile(every, 90)),
                runs=runs,
                warmup=warmup,
            )
        )
    return results


def latency_ratio(numerator: Latency, denominator: Latency) -> dict[str, float]:
    """Round-by-round ratio of two `latency` results measured in the same call.

    r_k = numerator.repeat_medians_ms[k] / denominator.repeat_medians_ms[k]; both were timed in
    round k, so drift common to the round cancels. Returns {"median", "min", "max"} of r_k.
    """
    if len(numerator.repeat_medians_ms) != len(denominator.repeat_medians_ms):
        raise ValueError(
            "latency_ratio: the two results have different numbers of rounds "
            f"({len(numerator.repeat_medians_ms)} and {len(denominator.repeat_medians_ms)}); "
            "pass results of the same `latency` call."
        )
    ratios = np.asarray(numerator.repeat_medians_ms) / np.asarray(denominator.repeat_medians_ms)
    return {
        "median": float(np.median(ratios)),
        "min": float(ratios.min()),
        "max": float(ratios.max()),
    }
