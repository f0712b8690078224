"""benchmarks.first_command finds the README's first command and splits its output into phases."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import first_command

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_first_command_installs_then_runs_the_quickstart():
    command = first_command.readme_first_command(README.read_text())
    assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert command.endswith("python -m recipes.quickstart")


def test_comments_and_blank_lines_before_the_command_are_skipped():
    readme = "# t\n\ntext\n```bash\n# a comment\n\n  run --it  \n# tests\nother\n```\n"
    assert first_command.readme_first_command(readme) == "run --it"


@pytest.mark.parametrize(
    ("readme", "message"),
    [("no block\n", "no ```bash block"), ("```bash\n# only\n```\n", "only comments")],
)
def test_a_readme_without_a_command_is_an_error_that_says_why(readme, message):
    with pytest.raises(ValueError, match=message):
        first_command.readme_first_command(readme)


def test_phases_run_from_marker_to_marker_and_the_last_to_the_total():
    lines = [
        (0.5, "Collecting tensorflow"),
        (100.0, "Successfully installed apprentice-tf-0.1"),
        (110.0, "2026 I tensorflow noise"),
        (115.0, "[quickstart] float: converting"),
        (140.0, "[quickstart] ternary: converting"),
        (150.0, "| table |"),
    ]
    rows = first_command.phases(lines, total=170.0)
    assert [r["phase"] for r in rows] == [
        "install (venv + pip)",
        "start-up (imports, load)",
        "[quickstart] float: converting",
        "[quickstart] ternary: converting",
    ]
    assert [r["seconds"] for r in rows] == [100.0, 15.0, 25.0, 30.0]
    assert sum(r["seconds"] for r in rows) == 170.0


def test_the_environment_drops_the_active_virtualenv(monkeypatch, tmp_path):
    venv = tmp_path / "venv"
    monkeypatch.setenv("VIRTUAL_ENV", str(venv))
    monkeypatch.setenv("PATH", f"{venv / 'bin'}:/usr/bin")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    env = first_command.clean_environment(str(tmp_path), pip_cache=False)
    assert "VIRTUAL_ENV" not in env and "PYTHONPATH" not in env
    assert env["PATH"] == "/usr/bin"
    assert env["TFDS_DATA_DIR"] == str(tmp_path.resolve())
    assert env["PIP_NO_CACHE_DIR"] == "1"


def test_pip_cache_and_tfds_data_dir_are_left_alone_when_asked(monkeypatch):
    monkeypatch.delenv("PIP_NO_CACHE_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", "/the/users/own")
    env = first_command.clean_environment("", pip_cache=True)
    assert "PIP_NO_CACHE_DIR" not in env
    assert env["TFDS_DATA_DIR"] == "/the/users/own"
