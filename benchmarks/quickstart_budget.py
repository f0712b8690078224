"""The quickstart at several fine-tuning budgets: which ``--epochs`` brings the distilled ternary
student within 2 points of the float one, and the distillation gain at each budget over seeds.

    python -m benchmarks.quickstart_budget [--runs=0.25:0,1,2 --runs=1:0 --runs=2:0]

Each ``--runs=<epochs>:<seeds>`` is one `recipes.quickstart.run` (scheme C on the full CIFAR-10: the
zoo's float ResNet-20 lowered to ternary W2A8 and fine-tuned alone and distilled from the zoo's
ResNet-56, every network tested on the full test split in Keras and LiteRT) with that ``--epochs``
and ``--seeds`` (and ``--temperature``), in ``<work_dir>/epochs<epochs>_tau<τ>``. The quickstart's
stages resume, so a rerun (or a budget's directory copied from an earlier quickstart run) trains
only what is missing. Per budget the table gives the mean TFLite top-1 of the students over the
seeds, the distance of the distilled student from the float one,

    gap = top1(float) − mean over seeds of top1(distilled)      (target: ≤ 2 points),

the distillation gain, mean ± standard deviation over seeds of top1(distilled) − top1(alone),
and the median fine-tuning wall minutes per student. ``--calibration_steps=0`` measures the same
budgets without the quickstart's calibration (use another ``--work_dir`` and ``--output``).
Writes ``--output`` (JSON) with every row.
Time on an idle machine: the fine-tuning minutes are wall time.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from absl import app, flags

from apprentice_tf import reporting
from recipes import quickstart

flags.DEFINE_multi_string(
    "runs",
    ["0.25:0,1,2", "1:0", "2:0"],
    "one budget per flag: <fine-tuning epochs>:<comma-separated seeds>",
)
flags.DEFINE_integer(
    "calibration_steps",
    quickstart.QuickstartConfig.calibration_steps,
    "the quickstart's --calibration_steps (0: fine-tune from the uncalibrated network)",
)
flags.DEFINE_float(
    "temperature",
    quickstart.QuickstartConfig.temperature,
    "the quickstart's --temperature: distillation temperature τ of every budget",
)
flags.DEFINE_float("target_points", 2.0, "the largest acceptable gap to the float student")
# Names other benchmarks and recipes also define (--threads, --work_dir, --output): overridable,
# so that tests can import several of them into one process.
flags.DEFINE_integer("threads", 2, "TensorFlow threads", allow_override=True)
flags.DEFINE_string(
    "work_dir",
    "runs/quickstart_budget",
    "where each budget's run keeps its stages",
    allow_override=True,
)
flags.DEFINE_string(
    "output",
    "benchmarks/results/quickstart_budget.json",
    "JSON output path",
    allow_override=True,
)


def parse_run(text: str) -> tuple[float, tuple[int, ...]]:
    """``"0.25:0,1,2"`` → ``(0.25, (0, 1, 2))``; a `ValueError` names the malformed flag."""
    epochs, _, seeds = text.partition(":")
    try:
        parsed = float(epochs), tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        parsed = (0.0, ())
    if not parsed[0] > 0 or not parsed[1]:
        raise ValueError(
            f"--runs={text!r}: expected <epochs>:<seeds>, e.g. --runs=1:0,1,2 (epochs > 0)."
        )
    return parsed


def finished_run(config: quickstart.QuickstartConfig) -> dict[str, Any] | None:
    """The results.json a quickstart run with the same settings left in its output directory
    (None if there is none or its settings differ: the run is then made again)."""
    path = Path(config.output_dir) / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    ignore = {"threads", "verbose"}
    wanted = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in dataclasses.asdict(config).items()
        if key not in ignore
    }
    stored = {key: value for key, value in results.get("config", {}).items() if key not in ignore}
    return results if stored == wanted else None


def summarise(results: dict[str, Any], target_points: float) -> dict[str, Any]:
    """One budget's line: mean top-1 per network kind over the seeds, the gap, the gain."""
    rows = results["rows"]
    alone = [r for r in rows if r["network"].startswith("ternary, fine-tuned alone")]
    distilled = [r for r in rows if r["network"].startswith("ternary, fine-tuned with")]
    float_top1 = rows[0]["tflite_top1"]
    distilled_mean = statistics.fmean(r["tflite_top1"] for r in distilled)
    gain = results["distillation_gain"]
    seconds = [r["fine_tuning_seconds"] for r in alone + distilled if "fine_tuning_seconds" in r]
    gap = 100 * (float_top1 - distilled_mean)
    return {
        "epochs": results["config"]["epochs"],
        "seeds": results["config"]["seeds"],
        "temperature": results["config"]["temperature"],
        "teacher_top1": results["teacher_top1"],
        "float_top1": float_top1,
        "before_top1": rows[1]["tflite_top1"],
        "alone_top1": statistics.fmean(r["tflite_top1"] for r in alone),
        "distilled_top1": distilled_mean,
        "gap_points": gap,
        "within_target": gap <= target_points + 1e-9,  # top-1s are multiples of 1e-4
        "gain_points": 100 * gain["mean"],
        "gain_std_points": None if gain["std"] is None else 100 * gain["std"],
        "minutes_per_student": statistics.median(seconds) / 60 if seconds else None,
    }


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    try:
        budgets = [parse_run(text) for text in f.runs]
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    work_dir = Path(f.work_dir)
    lines, runs = [], []
    for index, (epochs, seeds) in enumerate(budgets, start=1):
        print(f"[budget] {index}/{len(budgets)}: --epochs={epochs:g} --seeds={seeds}", flush=True)
        config = quickstart.QuickstartConfig(
            epochs=epochs,
            seeds=seeds,
            calibration_steps=f.calibration_steps,
            temperature=f.temperature,
            output_dir=str(work_dir / f"epochs{epochs:g}_tau{f.temperature:g}"),
            threads=f.threads,
            verbose=2,
        )
        results = finished_run(config)
        if results is None:
            results = quickstart.run(config)
        else:
            print(f"[budget] finished earlier: {config.output_dir}/results.json", flush=True)
        lines.append(summarise(results, f.target_points))
        runs.append(results)
    machine = reporting.machine_info(f.threads)
    reporting.write_json(
        Path(f.output),
        {
            "target_points": f.target_points,
            "calibration_steps": f.calibration_steps,
            "temperature": f.temperature,
            "machine": machine,
            "budgets": lines,
            "runs": runs,
        },
    )
    for line in lines:
        line["gain"] = (
            f"{line['gain_points']:+.2f}"
            if line["gain_std_points"] is None
            else f"{line['gain_points']:+.2f} ± {line['gain_std_points']:.2f}"
        )
        line["epochs"] = f"{line['epochs']:g}"
        line["gap"] = f"{line['gap_points']:.2f}"
        minutes = line["minutes_per_student"]
        line["minutes"] = "—" if minutes is None else f"{minutes:.1f}"
    print(f"\nMachine: {machine['cpu']}, {machine['cores']} cores, {machine['date']}")
    print(
        reporting.markdown_table(
            lines,
            [
                ("epochs", "--epochs"),
                ("seeds", "seeds"),
                ("temperature", "τ"),
                ("teacher_top1", "teacher"),
                ("float_top1", "float"),
                ("before_top1", "ternary before"),
                ("alone_top1", "alone"),
                ("distilled_top1", "distilled"),
                ("gap", "float − distilled (points)"),
                ("within_target", f"≤ {f.target_points:g} points"),
                ("gain", "gain (points)"),
                ("minutes", "min per student"),
            ],
        )
    )


if __name__ == "__main__":
    app.run(main)
