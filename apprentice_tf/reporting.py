"""Results as a user reads them: markdown tables, JSON written atomically, PNG plots.

Every writer goes through a temporary file in the target directory and `os.replace`, so an
interrupted run never leaves a half-written results.json behind.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RESULT_COLUMNS",
    "write_bytes",
    "write_text",
    "write_json",
    "markdown_table",
    "results_table",
    "machine_info",
    "SIMD_FLAGS",
    "plot_curves",
    "plot_accuracy_vs_size",
]

#: Columns of the standard results table: (row key, header).
RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "model"),
    ("bits", "bits (W/A)"),
    ("scheme", "scheme"),
    ("keras_top1", "top-1 Keras"),
    ("tflite_top1", "top-1 TFLite"),
    ("file_bytes", "file B"),
    ("gzip_bytes", "gzip B"),
    ("packed_bytes", "packed B (ideal)"),
)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file, then rename); returns the path.

    The file gets the permissions a plain `open` would give it (0666 less the umask), not the
    temporary file's 0600.
    """
    path = Path(path)
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"write_json: cannot serialise {type(value).__name__} {value!r}")


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write `payload` as indented JSON, atomically (NumPy scalars and arrays allowed)."""
    return write_text(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float | np.floating):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return f"{value:,d}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub markdown table: one row per mapping, `columns` as (key, header) pairs."""
    lines = [
        "| " + " | ".join(header for _, header in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The standard results table (`RESULT_COLUMNS`) of a recipe run."""
    return markdown_table(rows, RESULT_COLUMNS)


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


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    curves: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    ylabel: str = "test top-1",
    xlabel: str = "epoch",
    title: str | None = None,
) -> Path:
    """One line per named series (e.g. validation accuracy per epoch of each run), as a PNG."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_vs_size(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    size_key: str = "packed_bytes",
    accuracy_key: str = "tflite_top1",
    label_key: str = "scheme",
) -> Path:
    """Accuracy against model size (log scale), one labelled point per row, as a PNG."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        if row.get(size_key) is None or row.get(accuracy_key) is None:
            continue
        ax.scatter(row[size_key], row[accuracy_key])
        ax.annotate(str(row.get(label_key, "")), (row[size_key], row[accuracy_key]), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"{size_key} (bytes)")
    ax.set_ylabel(accuracy_key)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency_sweep(
    panels: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    xlabel: str = "channels (in = out)",
    ylabel: str = "median latency (ms)",
) -> Path:
    """Latency sweeps as a PNG: one panel per key of `panels`, one line per series in it.

    Each series is a mapping with ``label``, ``x`` (channel counts), ``y`` (latencies), ``low``
    and ``high`` (a shaded band, e.g. p10-p90) and ``marks`` (the x values to cross, e.g. the
    latency steps `apprentice_tf.hardware.find_steps` reports). `apprentice_tf.hardware.plot_sweep`
    builds the panels from a latency table. Uses matplotlib's Agg canvas directly (no global
    backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * len(panels), 4), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, series) in zip(axes, panels.items(), strict=True):
        for line_data in series:
            x, y = list(line_data["x"]), list(line_data["y"])
            (line,) = ax.plot(x, y, marker=".", label=line_data["label"])
            ax.fill_between(
                x, line_data["low"], line_data["high"], alpha=0.2, color=line.get_color()
            )
            marked = set(line_data.get("marks", ()))
            marks = [(xi, yi) for xi, yi in zip(x, y, strict=True) if xi in marked]
            if marks:
                ax.plot(*zip(*marks, strict=True), "x", color="black", markersize=8)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path
