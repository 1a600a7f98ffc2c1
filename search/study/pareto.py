"""The Pareto front of a study, from Optuna's storage, as rows and as the table a person reads.

The front is Optuna's own ``study.best_trials`` (non-dominated feasible trials); nothing here
re-implements dominance. Rows carry what the trial recorded in its user attributes
(:data:`search.running.samplers.RECORDED`, with ``<metric>_sd`` when the trial trained several
seeds)
and its sampled parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from pptp.tables import format_cell, format_table
from search.space import Objective

#: the table's columns: key -> title. ``tried`` is what the trial trained with, as its run is named
#: (:func:`search.study.naming.row_run_name` without the trial number): ``undefended``, ``noise
#: s=0.50
#: last2``, ``baseline relaxloss strength=0.31``; a baseline shows no protected groups
FRONT_COLUMNS = (
    ("trial", "trial"),
    ("tried", "tried"),
    ("test_acc", "accuracy"),
    ("attack_auc", "attack AUC"),
    ("attack_tpr@1%fpr", "TPR@1%FPR"),
    ("attack_tpr@0.1%fpr", "TPR@0.1%FPR"),
    ("canary_tpr@5%fpr", "canary TPR@5%FPR"),
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
    """The Pareto front as aligned columns, best first by the first objective.

    A trial over several seeds (``study.repeats``) shows each metric with its spread over seeds,
    ``0.8310 ± 0.0040`` (mean ± sample standard deviation, from ``<metric>_sd``). A metric column
    that no front trial resolves (a TPR at an FPR below ``1 / non-members``, canaries the space
    does not plant) is left out, and a line under the table says why.
    """
    from search.study.naming import row_run_name

    front = [r for r in rows if r.get("pareto")]
    if not front:
        return "no trial is on the Pareto front (no trial completed, or none is feasible)"
    first = objectives[0]
    front.sort(key=lambda r: -first.sign * _number(r.get(first.metric)))
    front = [{**r, "tried": row_run_name(r).split(" ", 1)[-1]} for r in front]
    columns = list(FRONT_COLUMNS)
    columns += [(o.metric, o.metric) for o in objectives if o.metric not in dict(columns)]
    shown = [(k, t) for k, t in columns if k in ("trial", "tried") or _any_number(front, k)]
    body = [[_cell(r, key) for key, _ in shown] for r in front]
    table = format_table(body, [title for _, title in shown])
    unresolved = [t for k, t in columns if k.startswith(("attack_tpr", "canary_tpr"))
                  and (k, t) not in shown and any(k in r for r in front)]  # fmt: skip
    if unresolved:
        table += (
            f"\n{', '.join(unresolved)}: not resolved by the pool's non-members "
            "(fpr_resolution), so not shown"
        )
    return table


def _any_number(rows: Sequence[dict[str, Any]], key: str) -> bool:
    return any(math.isfinite(_number(r.get(key))) for r in rows)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.inf
    return number if math.isfinite(number) else math.inf


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    text = format_cell(value)
    sd = row.get(f"{key}_sd")
    if isinstance(value, float) and isinstance(sd, float) and math.isfinite(sd):
        text += f" ± {format_cell(sd)}"
    return text
