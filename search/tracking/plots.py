"""The Pareto-front picture logged on the study's parent run (``pareto_front.png``).

Drawn with matplotlib from the rows :meth:`StudyTracker.log_front` receives, rather than with
Optuna's ``plot_pareto_front``: the rows are what the driver already has (no study object needed,
so a front recomputed elsewhere plots the same way), each front point is labelled with its trial
number (how the table and MLflow name trials), and the staircase shows the region the front
dominates. Optuna's matplotlib backend is experimental and draws neither.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search.space import direction_sign
from search.tracking.store import as_float


def plot_front(
    rows: Sequence[Mapping[str, Any]],
    objectives: Sequence[tuple[str, str]],
    path: Path,
    *,
    title: str = "",
) -> Path:
    """PNG of the first two objectives: every trial grey, the Pareto rows in colour, joined by
    the staircase that bounds the region they dominate, each labelled with its trial number.

    With one objective the x axis is the trial number. Rows without finite values are skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(objectives) >= 2:
        (x_name, x_dir), (y_name, y_dir) = objectives[0], objectives[1]
    else:
        (x_name, x_dir), (y_name, y_dir) = ("trial", "maximize"), objectives[0]

    def point(row: Mapping[str, Any]) -> tuple[float, float] | None:
        x, y = as_float(row.get(x_name)), as_float(row.get(y_name))
        return None if x is None or y is None else (x, y)

    every = [p for p in map(point, rows) if p is not None]
    front = [(p, r["trial"]) for r in rows if r.get("pareto") and (p := point(r)) is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    try:
        if every:
            ax.scatter(
                [p[0] for p in every], [p[1] for p in every], color="0.7", s=18, label="trials"
            )
        if front:
            sign_x, sign_y = direction_sign(x_dir), direction_sign(y_dir)
            ordered = sorted(front, key=lambda f: (-sign_x * f[0][0], -sign_y * f[0][1]))
            xs, ys = staircase([p for p, _ in ordered])
            ax.plot(xs, ys, color="tab:red", linewidth=1.2, zorder=2)
            ax.scatter(
                [p[0] for p, _ in ordered],
                [p[1] for p, _ in ordered],
                color="tab:red",
                s=30,
                zorder=3,
                label="Pareto front",
            )
            for (x, y), trial in ordered:
                ax.annotate(
                    f"#{trial}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
                )
        ax.set_xlabel(f"{x_name} ({x_dir})")
        ax.set_ylabel(f"{y_name} ({y_dir})")
        ax.set_title(title or "Pareto front")
        ax.grid(True, alpha=0.3)
        if every:
            ax.legend(loc="best", fontsize="small")
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def staircase(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Vertices of the attainment boundary through ``points`` ordered best-first on x.

    Between consecutive front points the corner ``(x_next, y_this)`` lies on the dominated side,
    so the line never cuts into the region the front does not reach.
    """
    xs, ys = [points[0][0]], [points[0][1]]
    for (_, y_prev), (x, y) in itertools.pairwise(points):
        xs += [x, x]
        ys += [y_prev, y]
    return xs, ys
