"""The README's "Your own model and data" section, run end to end: every command it shows, in a
copy of examples/own-model-and-data/, each study cut to one trial (the README test's rule)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_ray import ray_tmp

from search import pick, run

__all__ = ["ray_tmp"]  # the fixture, imported for its use below

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = "examples/own-model-and-data"


def section_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line.split(" #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_section_shows_data_three_studies_and_a_pick() -> None:
    commands = section_commands()
    assert commands[0] == f"python {EXAMPLE}/make_data.py"
    spaces = [c for c in commands if "search/run.py" in c]
    assert [c.split("--space ")[1] for c in spaces] == [
        f"{EXAMPLE}/{name}.yaml" for name in ("images", "table", "loader")
    ]
    assert any("search/pick.py" in c and "--register" in c for c in commands)


@pytest.mark.slow
def test_every_command_of_the_section_runs(
    tmp_path: Path,
    ray_tmp: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(REPO / EXAMPLE, tmp_path / EXAMPLE)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs: dict[str, Path] = {}
    for command in section_commands():
        words = shlex.split(command)
        if words[:2] == ["python", f"{EXAMPLE}/make_data.py"]:
            subprocess.run([sys.executable, *words[1:]], check=True, timeout=300)
            assert (tmp_path / "data/own/digits/test").is_dir()
            assert (tmp_path / "data/own/cancer.csv").is_file()
        elif words[:2] == ["python", "search/run.py"]:
            name = Path(words[words.index("--space") + 1]).stem
            runs[name] = tmp_path / "runs" / name
            argv = [*words[2:], "--n-trials", "1", "--output", str(runs[name])]
            assert run.main([*argv, "--tracking-uri", uri]) == 0, name
            out = capsys.readouterr().out
            assert "Pareto front (1 of 1 finished trials, 0 failed)" in out, out
        elif words[:2] == ["python", "search/pick.py"]:
            argv = [w if "<" not in w else str(runs["table"]) for w in words[2:]]
            assert pick.main(argv) == 0
            out = capsys.readouterr().out
            assert "trained on 449 examples (the audit target on 224" in out, out
        else:
            raise AssertionError(f"a command this test does not run: {command}")
    assert set(runs) == {"images", "table", "loader"}
