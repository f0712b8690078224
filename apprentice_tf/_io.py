"""Files and the machine: atomic writes, JSON, and the machine fingerprint.

Every writer goes through a temporary file in the target directory and `os.replace`, so an
interrupted run never leaves a half-written results.json (or .tflite file) behind. Neither
TensorFlow nor Keras is imported here: the command line (`apprentice-tf inspect | bench`) uses
this module without them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "write_bytes",
    "write_text",
    "write_json",
    "jsonable",
    "plain",
    "machine_info",
    "SIMD_FLAGS",
]


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file, then rename); returns the path.

    The file gets the permissions a plain `open` would give it (0666 less the umask), not the
    temporary file's 0600.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"`path` {str(path)!r} is a directory; pass a file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(handle.name, 0o666 & ~umask)
    os.replace(handle.name, path)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; see `write_bytes`."""
    return write_bytes(path, text.encode("utf-8"))


def plain(value: Any) -> Any:
    """`value` as plain JSON values, recursively: mappings to dicts with string keys, tuples
    to lists, NumPy scalars and arrays to Python numbers and lists, paths to strings.

    What a value becomes after a JSON round trip, so that a record built in memory compares
    equal to the same record read back from its file.
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, np.generic | np.ndarray | Path):
        return jsonable(value)
    return value


def jsonable(value: Any) -> Any:
    """`json.dumps`'s ``default=``: NumPy scalars and arrays, and paths, as JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"write_json: cannot serialise {type(value).__name__} {value!r}")


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write `payload` as indented JSON, atomically (NumPy scalars and arrays allowed)."""
    return write_text(path, json.dumps(payload, indent=2, default=jsonable) + "\n")


#: CPU features that decide which LiteRT/XNNPACK kernels run: int8 convolutions are several
#: times faster with AVX-512 VNNI (or AVX-VNNI) than with AVX2 alone.
SIMD_FLAGS: tuple[str, ...] = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
)


def machine_info(num_threads: int | None = None) -> dict[str, Any]:
    """CPU model, family/model numbers, SIMD flags, core count, versions, threads, date (UTC).

    Read from /proc/cpuinfo and package metadata; TensorFlow is not imported, so the
    `apprentice-tf bench` command can call this. ``cpu_flags`` lists the `SIMD_FLAGS` the CPU
    has: a virtual machine may report only "AMD EPYC" as its model name, and the flags (with
    ``cpu_family_model``, e.g. "25/1" for Zen 3, "25/17" for Zen 4) tell the machines apart.
    """
    cpu = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if not key and fields:
                break  # first processor only
            fields.setdefault(key, value.strip())
    cpu = fields.get("model name", cpu)
    flags = set(fields.get("flags", fields.get("Features", "")).split())

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cpu_family_model": (
            f"{fields['cpu family']}/{fields['model']}"
            if "cpu family" in fields and "model" in fields
            else None
        ),
        "cpu_flags": " ".join(flag for flag in SIMD_FLAGS if flag in flags) or None,
        "cores": os.cpu_count(),
        "threads": num_threads,
        "tensorflow": version("tensorflow"),
        "ai_edge_litert": version("ai-edge-litert"),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    }
