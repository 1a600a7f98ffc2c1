"""The ``pptp-search`` command (search/console.py): manual pages and dispatch."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from fixtures_pick import make_run

from search.console import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES", "EXIT STATUS", "FILES", "ENVIRONMENT")


def test_the_manual_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for section in (*SECTIONS, "COMMANDS"):
        assert f"\n{section}\n" in text
    for name in ("run", "localize", "pick", "compare", "report", "ui"):
        assert f"\n       {name} " in text
    assert main(["help"]) == 0 and capsys.readouterr().out == text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_a_manual_page(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--help"]) == 0
    text = capsys.readouterr().out
    for section in (*SECTIONS, "OPTIONS"):
        assert f"\n{section}\n" in text, section
    synopsis = text.split("\nSYNOPSIS\n")[1].split("\n\n")[0]
    assert f"pptp-search {name} " in synopsis and "search/" not in synopsis
    options = text.split("\nOPTIONS\n")[1].split("\n\n")[0]
    assert "--help" in options and options.count("--") >= 2
    assert main(["help", name]) == 0 and capsys.readouterr().out == text


def test_bad_command_lines_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'; commands: run, localize" in capsys.readouterr().err
    assert main(["rnu", "--space", "spaces/quickstart.yaml"]) == 2  # a typo: the closest command
    assert "unknown command 'rnu'; did you mean 'run'?" in capsys.readouterr().err
    # the entry point's own bad-input handling comes through
    assert main(["run", "--space", "/nonexistent/space.yaml"]) == 2
    assert "error:" in capsys.readouterr().err


def test_dispatch_runs_the_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    assert main(["report", "--run", str(run), "--no-mlflow"]) == 0
    assert (run / "report.html").is_file()
    assert main(["pick", "--run", str(run), "--rule", "knee"]) == 0
    assert (run / "picked.yaml").is_file()
    out = capsys.readouterr().out
    assert "picked" in out


def test_installed_as_a_console_script() -> None:
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert scripts.get("pptp-search") == "search.console:main"
    beside = Path(sys.executable).parent / "pptp-search"
    done = subprocess.run([str(beside), "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.startswith("pptp-search ")


def test_python_search_run_py_keeps_working() -> None:
    done = subprocess.run(
        [sys.executable, "search/run.py", "--help"], cwd=REPO, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "--space" in done.stdout
