"""Wall time of the README's first command on a fresh clone, run as a new user runs it.

    python -m benchmarks.first_command [--tfds_data_dir=../shared/tensorflow_datasets]

The command is the first one in the README's first ``bash`` block (`readme_first_command`):
install into a new virtualenv, then run the main job. The script clones ``--repo`` (its committed
HEAD: commit what you want timed) into a new directory under ``--work_dir``, and runs the command
there with ``bash -c``, from an environment without any active virtualenv, with ``TFDS_DATA_DIR``
set as the README says for a machine without internet and, unless ``--pip_cache``, pip's cache off
(a first install). Every output line is timestamped from the start, which gives the phases:

- install: until pip's "Successfully installed" line;
- one row per ``[quickstart] ...`` progress line of the main job (the time from it to the next);
- total wall time, against ``--target_seconds`` (600: the main job's target, install included).

Prints a table and the job's own report (its last lines, from ``# Quickstart``) and writes
``--output`` (JSON) with both, the exact command, the cloned commit and the machine. Time on an
idle machine: anything else running makes every phase slower.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from absl import app, flags

from apprentice_tf import reporting

REPO_ROOT = Path(__file__).resolve().parents[1]

flags.DEFINE_string("repo", str(REPO_ROOT), "git repository to clone (its HEAD is timed)")
flags.DEFINE_string("work_dir", "/tmp/atf_first_command", "where the fresh clone is made")
flags.DEFINE_string(
    "tfds_data_dir",
    str(REPO_ROOT.parent / "shared" / "tensorflow_datasets"),
    "TFDS_DATA_DIR for the command (a prepared offline copy); empty: leave unset",
)
flags.DEFINE_bool("pip_cache", False, "let pip use its cache (default: off, as on a new machine)")
flags.DEFINE_float("target_seconds", 600.0, "the wall-time target of the first command")
flags.DEFINE_string("output", "benchmarks/results/first_command.json", "JSON output path")

#: pip's last line of a successful install.
INSTALLED = "Successfully installed"
#: Progress lines of the main job start with this.
PROGRESS = re.compile(r"^\[quickstart\]")
#: The job's final report starts at the last line that starts with this.
REPORT_START = "# Quickstart"


def readme_first_command(readme: str) -> str:
    """The first command line of the first ```` ```bash ```` block of `readme` (comments skipped).

    Raises:
      ValueError: the README has no bash block, or the block holds only comments.
    """
    block = re.search(r"^```bash\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL)
    if block is None:
        raise ValueError("README: no ```bash block; the first command is its first line.")
    for line in block.group(1).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise ValueError("README: the first ```bash block holds no command, only comments.")


def clean_environment(tfds_data_dir: str, pip_cache: bool) -> dict[str, str]:
    """This process's environment without any active virtualenv, as a new shell has it."""
    env = dict(os.environ)
    venv = env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    if venv:
        bin_dir = str(Path(venv) / "bin")
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != bin_dir)
    if tfds_data_dir:
        env["TFDS_DATA_DIR"] = str(Path(tfds_data_dir).resolve())
    if not pip_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    return env


def phases(lines: list[tuple[float, str]], total: float) -> list[dict[str, Any]]:
    """Phase rows from timestamped output lines: install, then one per progress line.

    Each phase lasts from its marker line to the next marker (the last one to `total`); the
    install phase runs from 0 to pip's "Successfully installed" line, and the job's start-up
    (imports, loading the networks) from there to the first progress line.
    """
    markers: list[tuple[float, str]] = []
    installed = next((t for t, line in lines if line.startswith(INSTALLED)), None)
    if installed is not None:
        markers.append((0.0, "install (venv + pip)"))
        markers.append((installed, "start-up (imports, load)"))
    markers += [(t, line.strip()) for t, line in lines if PROGRESS.match(line)]
    rows = []
    for (start, name), end in zip(markers, [t for t, _ in markers[1:]] + [total], strict=True):
        rows.append({"phase": name, "start_s": round(start, 1), "seconds": round(end - start, 1)})
    return rows


def main(argv: list[str]) -> None:
    """Clone, run the README's first command, time it, print and write the results."""
    del argv
    f = flags.FLAGS
    repo = Path(f.repo).resolve()
    command = readme_first_command((repo / "README.md").read_text())
    if f.tfds_data_dir and not Path(f.tfds_data_dir).is_dir():
        raise app.UsageError(
            f"--tfds_data_dir={f.tfds_data_dir!r} is not a directory; point it at the prepared "
            "CIFAR-10 copy or pass --tfds_data_dir= to leave TFDS_DATA_DIR unset."
        )
    if shutil.which("git") is None:
        raise app.UsageError("git is not on PATH: the benchmark clones --repo with it.")
    Path(f.work_dir).mkdir(parents=True, exist_ok=True)
    clone = Path(tempfile.mkdtemp(prefix="clone_", dir=f.work_dir))
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    commit = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"[first_command] {commit[:12]} in {clone}\n[first_command] $ {command}", flush=True)

    env = clean_environment(f.tfds_data_dir, f.pip_cache)
    lines: list[tuple[float, str]] = []
    log_path = clone.parent / f"{clone.name}.log"
    start = time.monotonic()
    with (
        subprocess.Popen(
            ["bash", "-c", command],
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as process,
        log_path.open("w") as log,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            elapsed = time.monotonic() - start
            lines.append((elapsed, line.rstrip("\n")))
            log.write(f"{elapsed:8.1f} {line}")
            if PROGRESS.match(line) or line.startswith(INSTALLED):
                print(f"[first_command] {elapsed:6.1f} s  {line.strip()[:100]}", flush=True)
    total = time.monotonic() - start
    if process.returncode != 0:
        tail = "\n".join(line for _, line in lines[-30:])
        sys.exit(f"the first command failed (exit {process.returncode}); log {log_path}:\n{tail}")

    texts = [line for _, line in lines]
    report_at = max(
        (i for i, line in enumerate(texts) if line.startswith(REPORT_START)), default=None
    )
    report = "\n".join(texts[report_at:]) if report_at is not None else ""
    rows = phases(lines, total)
    rows.append({"phase": "total (wall)", "start_s": 0.0, "seconds": round(total, 1)})
    results = {
        "command": command,
        "commit": commit,
        "tfds_data_dir": env.get("TFDS_DATA_DIR"),
        "pip_cache": f.pip_cache,
        "total_seconds": round(total, 1),
        "target_seconds": f.target_seconds,
        "within_target": total <= f.target_seconds,
        "phases": rows,
        "report": report,
        "log": str(log_path),
        "machine": reporting.machine_info(),
    }
    reporting.write_json(f.output, results)
    columns = (("phase", "phase"), ("start_s", "starts at (s)"), ("seconds", "seconds"))
    print()
    print(reporting.markdown_table(rows, columns))
    verdict = "within" if results["within_target"] else "OVER"
    minutes, seconds = divmod(round(total), 60)
    print(f"\n{minutes} min {seconds:02d} s: {verdict} the {f.target_seconds:g} s target.")
    print(f"\n{report}\n\nwrote {f.output}; log {log_path}")


if __name__ == "__main__":
    app.run(main)
