"""The ``pptp-search`` command (search/console.py): manual pages and dispatch."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from fixtures_pick import make_run

from search.console import COMMANDS, command_help, main

REPO = Path(__file__).resolve().parents[1]
OVERVIEW = ("usage:", "description:", "commands:", "a first study:", "exit status:", "files:")
PAGE = ("options:", "examples:", "exit status:", "environment:")
#: what a user must never read in a help page: module prose, markup, notes outside the repository
DEVELOPER_PROSE = ("This module", ":mod:", ":func:", "``", "**", "DESIGN.md", "STYLE.md", "issue ")


def test_the_manual_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for section in OVERVIEW:
        assert f"\n{section}\n" in text
    for name in ("run", "localize", "pick", "compare", "report", "ui", "sync"):
        assert f"\n  {name} " in text
    assert main(["help"]) == 0 and capsys.readouterr().out == text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_a_manual_page(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--help"]) == 0
    text = capsys.readouterr().out
    for section in PAGE:
        assert f"\n{section}\n" in text, section
    assert text.startswith(f"usage: pptp-search {name} ")
    options = text.split("\noptions:\n")[1].split("\n\n")[0]
    assert "--help" in options and options.count("--") >= 2
    for prose in DEVELOPER_PROSE:
        assert prose not in text, (name, prose)
    assert main(["help", name]) == 0 and capsys.readouterr().out == text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_script_prints_the_same_page(name: str) -> None:
    """``python search/NAME.py --help`` is the console's page, under the script's name, and it
    imports none of torch, Ray, MLflow, SciPy, plotly, matplotlib (what keeps it under a second)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", f"search/{name}.py", "--help"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "ray", "mlflow", "scipy", "plotly", "matplotlib"}, name
    assert done.stdout.startswith(f"usage: search/{name}.py ")
    assert command_help(name).split("\n", 1)[1].split("options:")[1] == (
        done.stdout.split("\n", 1)[1].split("options:")[1]
    )


def test_every_exit_status_a_command_returns_is_on_its_page() -> None:
    """The statuses the entry points define are documented (run's 3, compare's 3, report's 3)."""
    from search.compare import EXIT_NO_VERDICT
    from search.report import EXIT_NOTHING_TO_REPORT
    from search.running.plan import EXIT_INTERRUPTED, EXIT_STOPPED, EXIT_TRACKING_INCOMPLETE

    documented = {name: {code for code, _ in page.exit_status} for name, page in COMMANDS.items()}
    assert {str(c) for c in (0, EXIT_STOPPED, 2, EXIT_TRACKING_INCOMPLETE, EXIT_INTERRUPTED)} <= (
        documented["run"]
    )
    assert str(EXIT_NO_VERDICT) in documented["compare"]
    assert str(EXIT_NOTHING_TO_REPORT) in documented["report"]


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


def test_a_space_refused_on_its_structure_pays_for_no_heavy_import(tmp_path: Path) -> None:
    """A misspelt key is refused (exit 2, one line) before torch, Ray or MLflow are imported."""
    space = tmp_path / "typo.yaml"
    space.write_text("study:\n  name: x\nfixed:\n  train.epochz: 3\n")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "search/run.py", "--space", str(space)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "|" not in line]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {space}: fixed.train.epochz: unknown key; did you mean")
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "ray", "mlflow", "scipy", "plotly", "matplotlib"}
