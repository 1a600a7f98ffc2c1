"""search.tracking.plots: the front's staircase and picture."""

from __future__ import annotations

import math
from pathlib import Path

from search.tracking.plots import plot_front, staircase


def test_staircase_bounds_the_dominated_region() -> None:
    # maximise x, minimise y, best x first: corners take the next x at the current y
    xs, ys = staircase([(0.9, 0.6), (0.8, 0.55), (0.5, 0.5)])
    assert list(zip(xs, ys, strict=True)) == [
        (0.9, 0.6),
        (0.8, 0.6),
        (0.8, 0.55),
        (0.5, 0.55),
        (0.5, 0.5),
    ]


def test_plot_front_skips_rows_without_values(tmp_path: Path) -> None:
    rows = [
        {"trial": 0, "pareto": True, "test_acc": 0.9, "attack_auc": 0.6},
        {"trial": 1, "pareto": False, "test_acc": 0.7, "attack_auc": 0.7},
        {"trial": 2, "pareto": False, "test_acc": math.nan, "attack_auc": None},  # failed
    ]
    objectives = [("test_acc", "maximize"), ("attack_auc", "minimize")]
    png = plot_front(rows, objectives, tmp_path / "front.png", title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    one = plot_front(rows, objectives[:1], tmp_path / "one.png")  # x: the trial number
    assert one.stat().st_size > 0
