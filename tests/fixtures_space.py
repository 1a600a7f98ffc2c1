"""Helpers shared by the space tests: the shipped spaces, a minimal space file, a writer; and the
fixed keys of the tiny study the end-to-end tests run (:data:`TINY_STUDY_FIXED`)."""

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

TINY_STUDY_FIXED = """\
fixed:
  data: {{name: digits, pool_size: 200, test_size: 100, val_size: 0}}
  model: {{name: mlp, width: 32, norm: none}}
  # learns above chance (a model at chance fails its trial: pptp/chance.py)
  train: {{epochs: 10, batch_size: 10, lr: 0.1, augment: false, warmup_epochs: 0, device: cpu}}
  attack: {{attacks: [loss, lira_offline], n_references: 2, bank_dir: {bank}}}
"""
"""The ``fixed:`` section of a study small enough for an end-to-end test on two CPU cores (digits,
an MLP, 10 short epochs, loss and LiRA-offline with 2 references), as a ``str.format`` template:
``{bank}`` is the reference bank's folder, literal braces are doubled. Concatenate it between a
test's ``study:`` and ``params:`` sections, then format the whole."""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    """``text`` (dedented) as ``tmp_path / name``."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path
