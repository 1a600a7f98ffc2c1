"""The README's quick start and CI stay in step: CI runs exactly the README's test command."""

from __future__ import annotations

import re
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
