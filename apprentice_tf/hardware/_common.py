"""What every module of `apprentice_tf.hardware` shares: argument checks, the quantize settings,
JSON conversion and the atomic writer.

The one place of these helpers inside the package, so that pointing them at the library's shared
checks and I/O is a change to this file only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: `quantize` settings of `profile`: float, post-training full-integer int8, or quantization-aware
#: low-precision weights from `apprentice_tf.quantize_model` (with 8-bit activations).
QUANTIZE_MODES: tuple[str | int | None, ...] = (None, "int8", "ternary", 2, 4, 8)

ANY = object()  # "no filter" sentinel (None is a valid quantize value)


def fail(function: str, argument: str, received: Any, allowed: str) -> ValueError:
    """The error every check raises: what was received and what is allowed."""
    return ValueError(f"{function}: `{argument}` must be {allowed}, received {received!r}.")


def is_int(value: Any) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_int(function: str, argument: str, value: Any, minimum: int) -> int:
    """`value` as an int, or ValueError unless it is an integer >= `minimum`."""
    if not is_int(value) or value < minimum:
        raise fail(function, argument, value, f"an integer >= {minimum}")
    return int(value)


def check_quantize(function: str, quantize: Any) -> None:
    """ValueError unless `quantize` is one of `QUANTIZE_MODES`."""
    if isinstance(quantize, bool) or quantize not in QUANTIZE_MODES:
        raise fail(
            function,
            "quantize",
            quantize,
            f"one of {QUANTIZE_MODES} (None: float; 'int8': full-integer post-training; "
            "'ternary', 2, 4, 8: quantize_model weights with 8-bit activations)",
        )


def quantize_label(quantize: str | int | None) -> str:
    """``float``, ``int8``, ``ternary`` or ``w<bits>a8``: the quantize setting in a row key."""
    if quantize is None:
        return "float"
    if quantize in ("int8", "ternary"):
        return str(quantize)
    return f"w{quantize}a8"


def jsonable(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python, recursively (what JSON stores)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and `os.replace`; returns the path."""
    if path.is_dir():
        raise ValueError(f"`path` {str(path)!r} is a directory; pass a file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8"
    ) as handle:
        handle.write(text)
    os.replace(handle.name, path)
    return path


def check_table_device(
    function: str, table: Any, here: str, allow_foreign: bool, argument: str
) -> None:
    """ValueError if `table` (a `LatencyTable`) holds rows of a device other than `here`,
    unless `allow_foreign`."""
    foreign = table.foreign_devices(here)
    if foreign and not allow_foreign:
        described = "; ".join(f"{i}: {table.devices.get(i, {})}" for i in foreign)
        raise ValueError(
            f"{function}: `{argument}` holds measurements from another device ({described}); "
            f"this device is {here!r}. Latency does not transfer between devices: profile here, "
            "or pass allow_foreign=True to use the table anyway."
        )
