"""The `apprentice-tf` console command.

apprentice-tf inspect model.tflite [--json]    per-layer stored levels and the size report
apprentice-tf run quickstart [--flag=value ...]  run a recipe (apprentice, progressive, hakd,
                                                 quickstart) with its absl flags
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys

RECIPES = ("quickstart", "apprentice", "progressive", "hakd")


def _inspect(path: str, as_json: bool) -> int:
    from apprentice_tf import tflite

    weights = tflite.inspect(path)
    report = tflite.size_report(path, weights)
    if as_json:
        payload = {
            "weights": [dataclasses.asdict(w) for w in weights],
            "size": dataclasses.asdict(report),
        }
        print(json.dumps(payload, indent=2))
    else:
        print(tflite.format_inspection(weights, report))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `apprentice-tf`; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="apprentice-tf", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="show what a .tflite file stores")
    inspect.add_argument("path", help="a .tflite file")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    run = commands.add_parser("run", help="run a recipe; flags after the name go to the recipe")
    run.add_argument("recipe", choices=RECIPES)
    args, rest = parser.parse_known_args(argv)
    if args.command == "inspect":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        try:
            return _inspect(args.path, args.json)
        except (OSError, ValueError) as error:
            print(f"apprentice-tf inspect: cannot read {args.path!r}: {error}", file=sys.stderr)
            return 1
    from absl import app

    module = importlib.import_module(f"recipes.{args.recipe}")
    app.run(module.main, argv=[f"recipes.{args.recipe}", *rest])
    return 0


if __name__ == "__main__":
    sys.exit(main())
