"""Ray Tune's ``OptunaSearch`` with what a multi-objective privacy search needs on top.

``OptunaSearch`` (ray.tune.search.optuna) asks Optuna for each trial's parameters and tells it the
final objective values. It does not pass constraints to Optuna, does not record why a trial
failed, and does not tell the trial its Optuna number. :class:`StudySearch` adds exactly that:

- the trial's config carries ``trial_number`` (the Optuna trial number: MLflow names runs by it);
- on completion, each constraint of the space reaches Optuna through ``Trial.set_constraint``
  (Optuna 5.0's per-trial route; samplers' ``constraints_func`` is deprecated), so NSGA-II, TPE
  and GP sample with feasibility in mind and ``best_trials`` ranks feasible trials first;
- a trial that reported ``failed`` (it caught its own exception, NaN or out-of-memory), or that
  crashed in Ray, or whose objective is NaN, is told as FAIL with a ``fail_reason`` user attribute;
- a few result fields (MLflow run id, protected groups, headline metrics) are stored as user
  attributes, so the Pareto table can be built from the Optuna storage alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from search.space import Constraint

logger = logging.getLogger(__name__)

#: result fields copied to the Optuna trial's user attributes
RECORDED = (
    "mlflow_run_id",
    "protected_groups",
    "operator",
    "strength",
    "defense",
    "test_acc",
    "attack_auc",
    "attack_tpr@0.1%fpr",
    "attack_tpr@1%fpr",
    "epsilon",
    "seconds",
)
TRIAL_NUMBER = "trial_number"


class StudySearch(OptunaSearch):
    """``OptunaSearch`` plus constraints, failure reasons and trial numbers (see module doc)."""

    def __init__(self, *args: Any, constraints: Sequence[Constraint] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._constraints = tuple(constraints)
        self._told: set[str] = set()  # Tune trial ids already told to Optuna

    def _optuna_trial(self, trial_id: str) -> optuna.Trial | None:
        """The Optuna trial ``super().suggest`` asked for ``trial_id``.

        ``OptunaSearch._ot_trials`` is private: Ray has no public route from a Tune trial to its
        Optuna trial. ``pyproject.toml`` pins the Ray versions this was checked against and
        ``tests/test_private_apis.py`` fails, naming it, when it changes.
        """
        trials: dict[str, optuna.Trial] = self._ot_trials
        return trials.get(trial_id)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        ot_trial = self._optuna_trial(trial_id)
        if params is None or ot_trial is None:
            return params
        return {**params, TRIAL_NUMBER: ot_trial.number}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        ot_trial = self._optuna_trial(trial_id)
        if trial_id in self._told or ot_trial is None:
            return super().on_trial_complete(trial_id, result, error)  # Ray warns or refuses
        self._told.add(trial_id)
        result = result or {}
        reason = failure_reason(result, self.metric, error=error)
        for key in RECORDED:
            if result.get(key) is not None:
                ot_trial.set_user_attr(key, result[key])
        if reason is not None:
            ot_trial.set_user_attr("fail_reason", reason)
            logger.info("trial %d failed: %s", ot_trial.number, reason)
            # no objective values with error=True: OptunaSearch tells Optuna FAIL
            return super().on_trial_complete(trial_id, None, error=True)
        for constraint in self._constraints:
            ot_trial.set_constraint(constraint.name, constraint.value(result))
        return super().on_trial_complete(trial_id, result, error)


def failure_reason(result: dict[str, Any], metrics: Any, *, error: bool) -> str | None:
    """Why a trial counts as failed, or None when it completed with finite objectives."""
    if result.get("failed"):
        return str(result.get("fail_reason") or "the trial reported a failure")
    if error:
        return "the trial's process crashed (killed for memory, or an error outside the trial)"
    for metric in metrics if isinstance(metrics, list) else [metrics]:
        value = result.get(metric)
        if value is None:
            return f"objective {metric!r} was not reported"
        if not math.isfinite(float(value)):
            return f"objective {metric!r} is {value}"
    return None
