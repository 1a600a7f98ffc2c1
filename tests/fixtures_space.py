"""Helpers shared by the space tests: the shipped spaces, a minimal space file, a writer."""

from __future__ import annotations

import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "spaces").glob("*.yaml"))

MINIMAL = """\
study:
  name: t
  n_trials: 4
fixed:
  train.epochs: 3
  model.norm: group
params:
  protect.strength: {type: float, low: 0.0, high: 1.0}
  protect.split: {type: int, low: 1, high: 4}
  protect.operator: {type: categorical, choices: [noise, damp]}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    """``text`` (dedented) as ``tmp_path / name``."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path
