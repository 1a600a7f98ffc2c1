"""``pptp/`` is the library: it imports no ray, optuna or mlflow (docs/design.md#module-layout).

Two checks, each able to fail on its own: a static scan of every ``import`` statement in every
module of ``pptp`` (top level or inside functions, so a lazy import is caught too), and a fresh
interpreter that imports every module of ``pptp`` and looks at ``sys.modules`` (so an indirect
import through a third-party package is caught too).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pptp

FORBIDDEN = ("ray", "optuna", "mlflow")
ROOT = Path(pptp.__file__).resolve().parent
MODULES = sorted(ROOT.rglob("*.py"))


def imported_names(source: str) -> set[str]:
    """Top-level package names of every import statement in ``source``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_scan_sees_lazy_and_dotted_imports() -> None:
    source = "import os\ndef f():\n    import ray.tune\n    from mlflow.client import X\n"
    assert imported_names(source) == {"os", "ray", "mlflow"}


def test_there_are_modules_to_scan() -> None:
    names = {str(p.relative_to(ROOT)) for p in MODULES}
    assert {"trial.py", "train.py", "attacks/lira.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_the_orchestration_libraries(path: Path) -> None:
    bad = imported_names(path.read_text()) & set(FORBIDDEN)
    assert not bad, f"pptp/{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_importing_all_of_pptp_loads_none_of_them() -> None:
    script = f"""
import importlib, json, pkgutil, sys
import pptp
for info in pkgutil.walk_packages(pptp.__path__, "pptp."):
    importlib.import_module(info.name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
print(json.dumps({{"n_modules": sum(m.startswith("pptp") for m in sys.modules), "loaded": loaded}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT.parent,
        timeout=120,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["n_modules"] >= len(MODULES) - 1  # every module was imported
    assert report["loaded"] == []
