"""The `apprentice-tf` console command.

apprentice-tf inspect model.tflite [--json] [--threads N]
    per-layer stored levels and dtypes, which ops LiteRT runs on XNNPACK, and the size report
apprentice-tf bench a.tflite [b.tflite ...] [--threads 1 2] [--repeats 5] [--runs 100] [--json]
    LiteRT latency of the files side by side (median and spread), delegation and sizes
apprentice-tf run quickstart [--flag=value ...]
    run a recipe (apprentice, progressive, hakd, pretrain, quickstart) with its absl flags

`inspect` and `bench` import only `apprentice_tf.litert` (the flatbuffer schema and the LiteRT
interpreter), never TensorFlow, and silence LiteRT's native start-up line ("Created TensorFlow
Lite XNNPACK delegate"), so they start quickly and print only their answer. A missing,
truncated or foreign file is answered with one line naming the file and the problem, exit
status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Iterator, Sequence

from absl import app

from apprentice_tf import _io, litert

RECIPES = ("quickstart", "apprentice", "progressive", "hakd", "pretrain")
#: The installed name of the repository's recipes/ folder (setup.py's package_dir).
RECIPES_PACKAGE = "apprentice_tf_recipes"
#: Exit status for a file that cannot be read as a TFLite model (argparse uses 2 for bad usage).
EXIT_BAD_FILE = 2


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: LiteRT's C++ code logs there, below Python."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _inspect(path: str, as_json: bool, num_threads: int) -> int:
    weights = litert.inspect(path)
    report = litert.size_report(path, weights)
    with _native_stderr_silenced():
        placements = litert.delegation(path, num_threads)
    if as_json:
        payload = {
            "weights": [dataclasses.asdict(w) for w in weights],
            "delegation": [dataclasses.asdict(p) for p in placements],
            "size": dataclasses.asdict(report),
        }
        print(json.dumps(payload, indent=2))
    else:
        print(litert.format_inspection(weights, report))
        print()
        print(litert.format_delegation(placements))
    return 0


def _bench(
    paths: Sequence[str],
    threads: Sequence[int],
    repeats: int,
    runs: int,
    warmup: int,
    as_json: bool,
) -> int:
    files = []
    for path in paths:
        weights = litert.inspect(path)
        with _native_stderr_silenced():
            placements = litert.delegation(path, threads[0])
        files.append((path, weights, litert.size_report(path, weights), placements))
    with _native_stderr_silenced():
        timings = litert.latency(paths, threads, repeats=repeats, runs=runs, warmup=warmup)
    by_pair = {(t.path, t.num_threads): t for t in timings}
    rows = []
    for path, weights, report, placements in files:
        row = {
            "file": path,
            **dataclasses.asdict(report),
            "weight_dtypes": sorted({w.dtype for w in weights}),
            "delegation": litert.delegation_summary(placements),
        }
        for count in threads:
            timing = by_pair[str(path), count]
            ratio = litert.latency_ratio(timing, by_pair[str(paths[0]), count])
            row[f"latency_{count}t"] = {
                "median_ms": timing.median_ms,
                "repeat_min_ms": timing.spread_ms[0],
                "repeat_max_ms": timing.spread_ms[1],
                "p10_ms": timing.p10_ms,
                "p90_ms": timing.p90_ms,
                "vs_first_file": ratio,
            }
        rows.append(row)
    machine = _io.machine_info()
    method = (
        f"batch 1, {repeats} rounds x {runs} timed invokes after {warmup} warm-ups, files "
        "alternated in one process; median of round medians [min-max of round medians]"
    )
    if as_json:
        print(json.dumps({"machine": machine, "method": method, "files": rows}, indent=2))
        return 0
    print(
        f"machine: {machine['cpu']} ({machine['cpu_flags']}), {machine['cores']} cores, "
        f"LiteRT {machine['ai_edge_litert']}; {method}"
    )
    header = ["file", "file B", "gzip B", "weights"]
    for count in threads:
        header += [f"ms {count} thread{'s' if count > 1 else ''}", f"x first ({count}t)"]
    header.append("runtime")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            os.path.basename(row["file"]),
            f"{row['file_bytes']:,d}",
            f"{row['gzip_bytes']:,d}",
            "/".join(row["weight_dtypes"]),
        ]
        for count in threads:
            timing = row[f"latency_{count}t"]
            ratio = timing["vs_first_file"]
            cells += [
                f"{timing['median_ms']:.3f} [{timing['repeat_min_ms']:.3f}-"
                f"{timing['repeat_max_ms']:.3f}]",
                f"{ratio['median']:.2f} [{ratio['min']:.2f}-{ratio['max']:.2f}]",
            ]
        cells.append(row["delegation"])
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, received {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apprentice-tf", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect", help="show what a .tflite file stores and where LiteRT runs its ops"
    )
    inspect.add_argument("path", help="a .tflite file")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of tables")
    inspect.add_argument("--threads", type=_positive, default=1, help="interpreter threads")
    bench = commands.add_parser("bench", help="time .tflite files side by side with LiteRT")
    bench.add_argument("paths", nargs="+", help="one or several .tflite files")
    bench.add_argument("--threads", type=_positive, nargs="+", default=[1, 2])
    bench.add_argument("--repeats", type=_positive, default=5, help="rounds over all files")
    bench.add_argument("--runs", type=_positive, default=100, help="timed invokes per round")
    bench.add_argument("--warmup", type=int, default=20, help="untimed invokes per round")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    run = commands.add_parser("run", help="run a recipe; flags after the name go to the recipe")
    run.add_argument("recipe", choices=RECIPES)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `apprentice-tf`; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("inspect", "bench"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        try:
            if args.command == "inspect":
                return _inspect(args.path, args.json, args.threads)
            return _bench(args.paths, args.threads, args.repeats, args.runs, args.warmup, args.json)
        except litert.TFLiteFileError as error:
            print(f"apprentice-tf {args.command}: {error}", file=sys.stderr)
            return EXIT_BAD_FILE
    module = importlib.import_module(f"{RECIPES_PACKAGE}.{args.recipe}")
    module.define_flags()
    app.run(module.main, argv=[f"recipes.{args.recipe}", *rest])
    return 0


if __name__ == "__main__":
    sys.exit(main())
