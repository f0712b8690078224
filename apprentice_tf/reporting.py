"""Results as a user reads them: markdown tables and PNG plots.

The files themselves are written by `apprentice_tf._io` (atomically: a temporary file, then
`os.replace`); its writers and `machine_info` are re-exported here, the public module recipes and
benchmarks write their results through.

Plots use Matplotlib's object-oriented API (`matplotlib.figure.Figure`, no pyplot), so importing
this module selects no backend and changes no global state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from apprentice_tf._io import SIMD_FLAGS, machine_info, write_bytes, write_json, write_text

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
    "plot_latency_sweep",
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


def plot_curves(
    curves: Mapping[str, Sequence[float] | Sequence[Sequence[float]]],
    path: str | os.PathLike,
    ylabel: str = "test top-1",
    xlabel: str = "epoch",
    title: str | None = None,
) -> Path:
    """One line per named series (e.g. validation accuracy per epoch of each run), as a PNG.

    A series given as several runs of equal length (e.g. one curve per seed) is drawn as their
    mean, ȳ_e = (1/n)·Σ_i y_{i,e}, with a shaded band from min_i y_{i,e} to max_i y_{i,e}; its
    legend entry says how many runs it averages.

    Raises:
      ValueError: the runs of one series differ in length.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, values in curves.items():
        if values and isinstance(values[0], Sequence):
            lengths = {len(run) for run in values}
            if len(lengths) != 1:
                raise ValueError(
                    f"plot_curves: the runs of series {name!r} have lengths {sorted(lengths)}; "
                    "pass runs of equal length (or each run as its own series)."
                )
        runs = np.atleast_2d(np.asarray(values, dtype=float))  # one row per run
        epochs = range(1, runs.shape[1] + 1)
        label = name if len(runs) == 1 else f"{name} (mean of {len(runs)}, min–max)"
        (line,) = ax.plot(epochs, runs.mean(axis=0), marker="o", label=label)
        if len(runs) > 1:
            ax.fill_between(
                epochs, runs.min(axis=0), runs.max(axis=0), color=line.get_color(), alpha=0.2
            )
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
    return path


#: Axis titles of the result keys the plots draw (other keys are shown as they are).
_AXIS_TITLES = {
    "packed_bytes": "packed size (bytes: weights at their bit width)",
    "gzip_bytes": "gzip -9 size of the .tflite file (bytes)",
    "file_bytes": ".tflite file size (bytes)",
    "tflite_top1": "TFLite top-1",
    "keras_top1": "Keras top-1",
    "latency_ms": "LiteRT latency (ms, batch 1)",
}


_SCATTER_MARKERS = "osD^vP*X<>"


def _scatter_style(index: int) -> tuple[str, tuple[float, float, float]]:
    """The marker and colour of the `index`-th label of a scatter plot: colour i mod 20 of
    ``tab20``, marker (i + ⌊i / 20⌋) mod 10, so labels 20 apart differ in marker and the first
    200 pairs are all distinct (i mod 20 and i mod 10 alone repeat after 20)."""
    colours = matplotlib.colormaps["tab20"].colors
    shift = index // len(colours)
    return _SCATTER_MARKERS[(index + shift) % len(_SCATTER_MARKERS)], colours[index % len(colours)]


def plot_accuracy_vs_size(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    size_key: str = "packed_bytes",
    accuracy_key: str = "tflite_top1",
    label_key: str = "scheme",
) -> Path:
    """Accuracy against model size (log scale) as a PNG, named in a legend below the axes (rows
    of equal size, e.g. every ternary student, would overlap as labels). Any positive per-row
    quantity can stand for the size (`size_key`, e.g. ``"latency_ms"``).

    Rows that share a label (e.g. the seeds of one configuration) share one colour and marker
    and one legend entry, which says how many runs it holds; each label gets its own
    colour/marker pair (20 colours × 10 markers before one repeats).
    """
    plotted = [r for r in rows if r.get(size_key) is not None and r.get(accuracy_key) is not None]
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for row in plotted:
        by_label.setdefault(str(row.get(label_key, "")), []).append(row)
    fig = Figure(figsize=(7, 4.5 + 0.22 * len(by_label)))
    ax = fig.subplots()
    for index, (label, group) in enumerate(by_label.items()):
        marker, colour = _scatter_style(index)
        ax.scatter(
            [row[size_key] for row in group],
            [row[accuracy_key] for row in group],
            marker=marker,
            color=colour,
            s=45,
            label=label if len(group) == 1 else f"{label} ({len(group)} runs)",
        )
    ax.set_xscale("log")
    ax.set_xlabel(_AXIS_TITLES.get(size_key, f"{size_key} (bytes)"))
    ax.set_ylabel(_AXIS_TITLES.get(accuracy_key, accuracy_key))
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
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
    figure = Figure(figsize=(5 * len(panels), 4), constrained_layout=True)
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
