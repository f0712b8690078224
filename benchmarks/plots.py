"""PNG plots of the committed benchmark JSON files, for the README.

    python -m benchmarks.plots

Reads benchmarks/results/{step_cost,deploy,accuracy}.json (whichever exist) and writes
step_cost.png (median ms per step, bars), latency_vs_size.png (LiteRT latency against file size
per export), accuracy_vs_size.png (TFLite top-1 against ideal packed size per row),
ternary_curves.png (validation top-1 per epoch of ternary alone vs scheme B and its variants:
the mean over seeds with a min–max band) and, once the study has timed every row's file side by
side, accuracy_vs_latency.png (TFLite top-1 against LiteRT latency per row) beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app
from matplotlib.figure import Figure

from apprentice_tf import reporting
from benchmarks import accuracy as accuracy_study

RESULTS = Path("benchmarks/results")


#: Rows of the study drawn in ternary_curves.png (with their variants, e.g. "... scheme B (τ=4)").
CURVE_ROWS = (accuracy_study.B_ALONE_ROW, accuracy_study.B_KD_ROW)


def step_cost_bars(payload: dict, path: Path) -> Path:
    """Horizontal bars of the median step time of each configuration."""
    rows = payload["rows"]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.barh([r["configuration"] for r in rows], [r["median_ms"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"median ms per training step (batch {payload['batch_size']})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def latency_vs_size(payload: dict, path: Path) -> Path:
    """LiteRT latency (1 thread) against file size, one labelled point per export; the bar is
    the min-max of the round medians when the JSON has them."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for row in payload["rows"]:
        median = row["latency_ms_1_thread"]
        low = row.get("latency_ms_1_thread_round_min", median)
        high = row.get("latency_ms_1_thread_round_max", median)
        ax.errorbar(row["file_bytes"], median, yerr=[[median - low], [high - median]], fmt="o")
        label = f"{row['network'].split()[0]} {row['variant']}"
        ax.annotate(label, (row["file_bytes"], row["latency_ms_1_thread"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("file bytes")
    ax.set_ylabel("ms per image (1 thread, median)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def accuracy_plots(accuracy: dict, directory: Path) -> list[Path]:
    """The CIFAR-10 study's PNGs (module docstring) from its JSON payload, into `directory`.

    accuracy_vs_latency.png only when the payload has its ``latency_note``: the latency column
    is then one side-by-side timing of every row's file, not the per-run figures some groups
    (HAKD) record while they train, on whatever machine they trained.
    """
    rows = [row for group in accuracy["groups"].values() for row in group]
    written = [  # the seeds of a row share its marker and legend entry
        reporting.plot_accuracy_vs_size(rows, directory / "accuracy_vs_size.png", label_key="row")
    ]
    if accuracy.get("latency_note"):
        written.append(
            reporting.plot_accuracy_vs_size(
                rows, directory / "accuracy_vs_latency.png", "latency_ms", label_key="row"
            )
        )
    curves: dict[str, list[list[float]]] = {}
    for row in rows:  # every seed of a row: its mean and min–max band
        if row["row"].startswith(CURVE_ROWS) and row["curve"]:
            curves.setdefault(row["row"], []).append(row["curve"])
    if curves:
        written.append(
            reporting.plot_curves(
                curves,
                directory / "ternary_curves.png",
                ylabel="validation top-1 (full test split)",
                title="ternary ResNet-20: alone vs distilled (scheme B)",
            )
        )
    return written


def main(argv: list[str]) -> None:
    del argv
    written = []
    sources = {
        "step_cost.json": ("step_cost.png", step_cost_bars),
        "deploy.json": ("latency_vs_size.png", latency_vs_size),
    }
    for source, (target, plot) in sources.items():
        if (RESULTS / source).exists():
            written.append(plot(json.loads((RESULTS / source).read_text()), RESULTS / target))
    if (RESULTS / "accuracy.json").exists():
        written += accuracy_plots(json.loads((RESULTS / "accuracy.json").read_text()), RESULTS)
    for path in written:
        print(path)


if __name__ == "__main__":
    app.run(main)
