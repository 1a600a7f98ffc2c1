"""The Pareto front of a study, from Optuna's storage, as rows and as the table a person reads.

The front is Optuna's own ``study.best_trials`` (non-dominated feasible trials); nothing here
re-implements dominance. Rows carry what the trial recorded in its user attributes
(:data:`search.samplers.RECORDED`) and its sampled parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from search.space import Objective

FRONT_COLUMNS = (
    ("trial", "trial"),
    ("protected_groups", "protected groups"),
    ("operator", "operator"),
    ("strength", "strength"),
    ("defense", "defense"),
    ("test_acc", "accuracy"),
    ("attack_auc", "attack AUC"),
    ("attack_tpr@0.1%fpr", "TPR@0.1%FPR"),
)


def trial_rows(study: optuna.Study, objectives: Sequence[Objective]) -> list[dict[str, Any]]:
    """One row per finished trial (complete or failed), ``pareto`` marking ``best_trials``."""
    front = {t.number for t in study.best_trials}
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            "pareto": t.number in front,
            "run_id": t.user_attrs.get("mlflow_run_id"),
        }
        row.update({k: v for k, v in t.user_attrs.items() if k != "mlflow_run_id"})
        if t.values is not None:
            row.update({o.metric: v for o, v in zip(objectives, t.values, strict=True)})
        row.update({f"param.{k}": v for k, v in t.params.items()})
        rows.append(row)
    return rows


def format_front(rows: Sequence[dict[str, Any]], objectives: Sequence[Objective]) -> str:
    """The Pareto front as aligned columns, best first by the first objective."""
    front = [r for r in rows if r.get("pareto")]
    if not front:
        return "no trial is on the Pareto front (no trial completed, or none is feasible)"
    first = objectives[0]
    sign = -1.0 if first.direction == "maximize" else 1.0
    front.sort(key=lambda r: sign * float(r.get(first.metric, math.nan)))
    columns = list(FRONT_COLUMNS)
    columns += [(o.metric, o.metric) for o in objectives if o.metric not in dict(columns)]
    table = [[title for _, title in columns]]
    table += [[_cell(r.get(key)) for key, _ in columns] for r in front]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)
