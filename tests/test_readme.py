"""The README's quick start and CI stay in step: CI runs exactly the README's test command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines()
            if line.strip() and not line.startswith("#")]


def test_quick_start_has_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    setup_and_run = commands[0]
    assert "spaces/quickstart.yaml" in setup_and_run and "search/run.py" in setup_and_run
    assert setup_and_run.startswith("bash .ci/setup && ")


def test_ci_runs_the_readme_test_command() -> None:
    test = quick_start_commands()[1]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd ", "export "))]
    assert ci == [test]


# ------------------------------------------------------------------- every command in the README
#: the project's commands: how the README spells them -> the module whose parse_args reads them
ENTRY_POINTS = {
    "search/run.py": "search.run",
    "search/pick.py": "search.pick",
    "search/localize.py": "search.localize",
    "search/compare.py": "search.compare",
    "pptp-search run": "search.run",
    "pptp-search pick": "search.pick",
    "pptp-search localize": "search.localize",
    "pptp-search compare": "search.compare",
    "pptp-search report": "search.report",
    "pptp-search ui": "search.ui",
}
#: the module -> the test that runs that command end to end (tests/<file>.py::<function>)
EXERCISED_BY = {
    "search.run": "test_search.py::test_two_trial_study_end_to_end_then_extended",
    "search.pick": "test_pick.py::test_retrain_adaptive_register_end_to_end",
    "search.localize": "test_localize_cli.py::test_command_writes_files_and_an_mlflow_run",
    "search.compare": "test_compare.py::test_the_command_writes_figure_table_and_csv",
    "search.report": "test_report.py::test_report_command_without_mlflow",
    "search.ui": "test_ui.py::test_ui_command_prints_the_study_url_and_stops_on_ctrl_c",
}
#: other commands the README shows -> (a file that runs them, a string it must contain)
RUN_ELSEWHERE = {
    "bash .ci/setup": (".ci/test", "bash .ci/setup"),
    "bash .ci/test": (".ci/run", "bash .ci/test"),
    "pip install -e '.[server]'": (".ci/setup", "-e '.[dev,server]'"),
    "mlflow server": ("tests/fixtures_postgres.py", '"--artifacts-destination"'),
    "python examples/own-model-and-data/make_data.py": ("tests/test_examples.py", "make_data.py"),
}


def readme_commands() -> list[str]:
    """Every command line of the README's ``bash`` blocks (continuations joined, comments cut)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.extend(part.strip() for part in line.split("&&"))
    return commands


def _entry(command: str) -> tuple[str, list[str]] | None:
    words = shlex.split(re.sub(r"<[^>]+>", "PLACEHOLDER", command))
    for i, word in enumerate(words):
        for spelled, module in ENTRY_POINTS.items():
            parts = spelled.split()
            if word.endswith(parts[0]) and words[i + 1 : i + len(parts)] == parts[1:]:
                return module, words[i + len(parts) :]
    return None


def test_every_readme_command_is_valid_and_exercised() -> None:
    import ast
    import importlib

    commands = readme_commands()
    assert len(commands) > 10, commands
    for command in commands:
        entry = _entry(command)
        if entry is None:
            where = [v for k, v in RUN_ELSEWHERE.items() if command.startswith(k)]
            assert where, f"README command exercised nowhere: {command!r}"
            path, needle = where[0]
            assert needle in (REPO / path).read_text(), (command, path)
            continue
        module, argv = entry
        try:
            importlib.import_module(module).parse_args(argv)  # type: ignore[attr-defined]
        except SystemExit as exit_:
            raise AssertionError(f"README command does not parse: {command!r}") from exit_
        test_file, test_name = EXERCISED_BY[module].split("::")
        tree = ast.parse((REPO / "tests" / test_file).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert test_name in names, EXERCISED_BY[module]
