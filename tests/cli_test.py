"""`apprentice-tf inspect | bench`: quick (no TensorFlow), quiet, and safe on bad files.

The commands run in a fresh interpreter (subprocess), as a user would start them, so the test
can see which modules they import and everything they print. No timing thresholds.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_cnn

from apprentice_tf import tflite

WORKTREE = Path(__file__).resolve().parents[1]
# Runs the command in-process so the modules it imported can be listed afterwards.
RUNNER = (
    "import sys\n"
    "from apprentice_tf import cli\n"
    "code = cli.main(sys.argv[1:])\n"
    "heavy = sorted(m for m in ('tensorflow', 'tf_keras', 'keras') if m in sys.modules)\n"
    "print('IMPORTED-HEAVY:', ','.join(heavy), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_cli(*args):
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, *map(str, args)],
        cwd=WORKTREE,
        capture_output=True,
        text=True,
        check=False,
    )
    stderr_lines = result.stderr.splitlines()
    assert stderr_lines and stderr_lines[-1].startswith("IMPORTED-HEAVY:"), result.stderr
    heavy = stderr_lines[-1].removeprefix("IMPORTED-HEAVY:").strip()
    return result.returncode, result.stdout, stderr_lines[:-1], heavy


@pytest.fixture(scope="module")
def float_file(tmp_path_factory):
    return tflite.convert(tiny_cnn(), tmp_path_factory.mktemp("c") / "tiny.tflite")


def test_help_and_inspect_are_quiet_and_do_not_import_tensorflow(float_file):
    code, out, err, heavy = run_cli("inspect", float_file)
    assert code == 0 and heavy == "" and err == []
    assert "| stem/" in out and "packed bytes" in out
    assert "runtime: " in out and "ops on XNNPACK" in out
    help_run = subprocess.run(
        [sys.executable, "-m", "apprentice_tf.cli", "--help"],
        cwd=WORKTREE,
        capture_output=True,
        text=True,
        check=False,
    )
    assert help_run.returncode == 0 and help_run.stderr == ""
    assert "inspect" in help_run.stdout and "bench" in help_run.stdout


def test_inspect_json_has_weights_delegation_and_size(float_file):
    code, out, err, heavy = run_cli("inspect", float_file, "--json")
    assert code == 0 and heavy == "" and err == []
    payload = json.loads(out)
    assert {w["dtype"] for w in payload["weights"]} == {"FLOAT32"}
    assert payload["delegation"] and all(p["kernel"] == "XNNPACK" for p in payload["delegation"])
    assert payload["size"]["file_bytes"] == float_file.stat().st_size


def test_bench_times_files_side_by_side_without_tensorflow(float_file, tmp_path):
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(float_file.read_bytes())
    args = ("bench", float_file, copy, "--threads", "1", "2", "--repeats", "2", "--runs", "3")
    code, out, err, heavy = run_cli(*args, "--warmup", "1", "--json")
    assert code == 0 and heavy == "" and err == []
    payload = json.loads(out)
    assert [Path(f["file"]).name for f in payload["files"]] == ["tiny.tflite", "copy.tflite"]
    first = payload["files"][0]
    for key in ("latency_1t", "latency_2t"):
        timing = first[key]
        assert timing["repeat_min_ms"] <= timing["median_ms"] <= timing["repeat_max_ms"]
        assert timing["vs_first_file"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert payload["machine"]["cores"] >= 1 and payload["machine"]["ai_edge_litert"]
    code, out, err, heavy = run_cli(*args)
    assert code == 0 and heavy == "" and err == []
    assert "tiny.tflite" in out and "copy.tflite" in out and "machine:" in out


@pytest.mark.parametrize(
    "content,problem",
    [
        (None, "no such file"),
        (b"hello!\n\n", "not a TFLite model"),
        ("truncated", "truncated"),
    ],
)
@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_bad_file_gets_one_line_and_status_2(float_file, tmp_path, command, content, problem):
    path = tmp_path / "bad.tflite"
    if content == "truncated":
        path.write_bytes(float_file.read_bytes()[:1000])
    elif content is not None:
        path.write_bytes(content)
    code, out, err, heavy = run_cli(command, path)
    assert code == 2 and out == "" and heavy == ""
    assert len(err) == 1, err
    assert err[0].startswith(f"apprentice-tf {command}: {path}: ") and problem in err[0]


def test_lazy_package_still_exposes_every_public_name():
    import apprentice_tf as atf

    for name in atf.__all__:
        assert getattr(atf, name) is not None, name
    assert atf.tflite.inspect is atf.litert.inspect
    assert set(atf.__all__) <= set(dir(atf))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        atf.not_a_name  # noqa: B018


def test_run_defines_the_recipes_flags_and_importing_a_recipe_defines_none():
    """`apprentice-tf run` parses the recipe's flags; an import alone leaves FLAGS untouched.

    Recipes share flag names (``--seeds``, ``--epochs``) with allow_override, so a recipe that
    defined its flags on import would silently replace the defaults of the program importing it
    (the CIFAR-10 study imports four recipes and has its own ``--seeds=0,1,2``).
    """
    bad_flag = subprocess.run(
        [sys.executable, "-m", "apprentice_tf.cli", "run", "quickstart", "--temperature=0"],
        cwd=WORKTREE,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad_flag.returncode != 0 and "--temperature must be > 0" in bad_flag.stderr
    probe = (
        "from absl import flags\n"
        "from recipes import apprentice, hakd, pretrain, progressive, quickstart\n"
        "print(sorted(n for n in ('seeds', 'epochs', 'output_dir') if n in flags.FLAGS))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=WORKTREE, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
