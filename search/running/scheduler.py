"""Multi-objective successive halving (MO-ASHA): stop trials dominated at a rung of training.

With ``study.fidelity`` a trial reports its objectives at each rung (:mod:`pptp.fidelity`: epochs
of one training, attacked with the references' signals at the same epoch), then once more at the
end. Tune's own schedulers rank trials by one metric; :class:`MultiObjectiveASHA` is a Ray Tune
``TrialScheduler`` that ranks them on all objectives, as MO-ASHA does (Schmucker et al. 2021):

- every rung result is recorded with the results of the trials that reached that rung before it
  (asynchronous successive halving: no trial waits for others);
- the rung's results are ordered by **constrained non-dominated sorting**: feasible results
  first (a study's constraints, as Optuna's samplers treat them), by Pareto rank, ties within a
  rank by crowding distance (NSGA-II's order; MO-ASHA's epsilon-net differs only in that tie);
  infeasible results after, by their total violation;
- the trial goes on when it is among the best ``ceil(n / reduction)`` of the ``n`` results at
  that rung, or when no feasible result of the rung dominates it (a search for a front keeps its
  non-dominated points: cutting inside the first front would stop a trial for arriving late),
  and is stopped otherwise. While a rung holds fewer than ``reduction`` results, every trial goes
  on (there is nothing yet to compare with);
- a trial whose result says :data:`STOPPABLE` ``= 0`` (an operator or defense of
  ``study.fidelity.never_stop``, whose end of training its early rungs do not predict) is
  recorded but never stopped.

A stopped trial ends as Optuna PRUNED with its last rung's values as user attributes
(:meth:`search.running.samplers.StudySearch.on_trial_complete`). On resume the scheduler starts
from the rung results the study recorded (:func:`rung_history`), so the rungs keep their ranking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.space import Constraint, Objective

#: result keys of a rung report: the epoch, whether it is the end of training, whether the
#: scheduler may stop the trial
RUNG, FINAL, STOPPABLE = "rung", "final", "stoppable"
#: Optuna user attribute: ``{epoch: {metric: value}}`` of every rung a trial reported
RUNG_VALUES = "rung_values"
#: Optuna user attribute of a PRUNED trial: the epoch it was stopped at
STOPPED_AT = "stopped_at_epoch"


def pareto_ranks(points: np.ndarray) -> np.ndarray:
    """Non-dominated sorting of ``points: (n, m)``, larger better on every axis: rank 0 for the
    Pareto front, 1 for the front of the rest, ...; ``(n,)`` int."""
    n = len(points)
    ranks = np.full(n, -1)
    left = np.arange(n)
    rank = 0
    while len(left):
        sub = points[left]
        ge = (sub[:, None, :] >= sub[None, :, :]).all(axis=2)
        gt = (sub[:, None, :] > sub[None, :, :]).any(axis=2)
        dominated = (ge & gt).any(axis=0)  # dominated[j]: some i dominates j
        ranks[left[~dominated]] = rank
        left = left[dominated]
        rank += 1
    return ranks


def crowding(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of ``points: (n, m)`` (one front); extremes are infinite."""
    n, m = points.shape
    out = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for k in range(m):
        order = np.argsort(points[:, k])
        span = points[order[-1], k] - points[order[0], k]
        out[order[0]] = out[order[-1]] = math.inf
        if span > 0:
            out[order[1:-1]] += (points[order[2:], k] - points[order[:-2], k]) / span
    return out


def best_first(points: np.ndarray, violations: np.ndarray) -> list[int]:
    """Indices of ``points`` (larger better) best first: constrained non-dominated sorting
    (module docstring); ``violations (n,)``: 0 when feasible."""
    feasible = np.flatnonzero(violations <= 0)
    order: list[int] = []
    if len(feasible):
        ranks = pareto_ranks(points[feasible])
        for rank in range(int(ranks.max()) + 1):
            front = feasible[ranks == rank]
            distance = crowding(points[front])
            order += [int(front[i]) for i in np.argsort(-distance, kind="stable")]
    infeasible = np.flatnonzero(violations > 0)
    order += [int(infeasible[i]) for i in np.argsort(violations[infeasible], kind="stable")]
    return order


def rung_point(
    result: Mapping[str, Any], objectives: Sequence[Objective], constraints: Sequence[Constraint]
) -> tuple[np.ndarray, float]:
    """``(signed objective values (m,), total violation)`` of a rung result, larger better; a
    missing or NaN objective counts as the worst possible value."""
    values = []
    for o in objectives:
        v = result.get(o.metric)
        finite = v is not None and math.isfinite(float(v))
        values.append(o.sign * float(v) if v is not None and finite else -math.inf)
    violation = sum(max(0.0, c.value(result)) for c in constraints)
    return np.array(values), violation


class MultiObjectiveASHA(FIFOScheduler):
    """MO-ASHA as a Ray Tune scheduler (module docstring). ``history``: rung results recorded
    before this session, ``{epoch: [(signed values, violation), ...]}`` (:func:`rung_history`)."""

    def __init__(
        self,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        *,
        reduction: int = 3,
        history: Mapping[int, Sequence[tuple[np.ndarray, float]]] | None = None,
    ) -> None:
        super().__init__()
        self.objectives = tuple(objectives)
        self.constraints = tuple(constraints)
        self.reduction = reduction
        self._rungs: dict[int, dict[str, tuple[np.ndarray, float]]] = {}
        for epoch, past in (history or {}).items():
            self._rungs[int(epoch)] = {f"past-{i}": p for i, p in enumerate(past)}
        self.stopped: dict[str, int] = {}  # Tune trial id -> the epoch it was stopped at

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        epoch = result.get(RUNG)
        if epoch is None or result.get(FINAL, 1) or result.get("failed"):
            return TrialScheduler.CONTINUE
        recorded = self._rungs.setdefault(int(epoch), {})
        recorded[trial.trial_id] = rung_point(result, self.objectives, self.constraints)
        if not result.get(STOPPABLE, 1) or self.promoted(int(epoch), trial.trial_id):
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = int(epoch)
        return TrialScheduler.STOP

    def promoted(self, epoch: int, trial_id: str) -> bool:
        """Whether ``trial_id`` is among the best ``ceil(n / reduction)`` at rung ``epoch``."""
        recorded = self._rungs[epoch]
        if len(recorded) < self.reduction:
            return True
        ids = list(recorded)
        points = np.stack([recorded[i][0] for i in ids])
        violations = np.array([recorded[i][1] for i in ids])
        keep = math.ceil(len(ids) / self.reduction)
        if trial_id in {ids[i] for i in best_first(points, violations)[:keep]}:
            return True
        feasible = np.flatnonzero(violations <= 0)
        first = feasible[pareto_ranks(points[feasible]) == 0] if len(feasible) else feasible
        return trial_id in {ids[i] for i in first}

    def debug_string(self) -> str:
        counts = ", ".join(f"epoch {e}: {len(r)}" for e, r in sorted(self._rungs.items()))
        return f"MultiObjectiveASHA(reduction {self.reduction}; results {counts or 'none'})"


def rung_history(
    trials: Iterable[optuna.trial.FrozenTrial],
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint] = (),
) -> dict[int, list[tuple[np.ndarray, float]]]:
    """The rung results a study recorded (:data:`RUNG_VALUES`), as ``history`` for a new
    scheduler on resume."""
    out: dict[int, list[tuple[np.ndarray, float]]] = {}
    for t in trials:
        for epoch, values in (t.user_attrs.get(RUNG_VALUES) or {}).items():
            out.setdefault(int(epoch), []).append(rung_point(values, objectives, constraints))
    return out


def stopped_line(trials: Sequence[optuna.trial.FrozenTrial], epochs: int) -> str | None:
    """``stopped early: 7 of 20 trainings (at epoch 3: 5, at epoch 10: 2); 412 of 600 epochs
    trained`` (per seed), or None when no trial was stopped."""
    trained = [t for t in trials if t.state.is_finished() and not t.user_attrs.get("duplicate_of")]
    at = [int(t.user_attrs[STOPPED_AT]) for t in trained if t.user_attrs.get(STOPPED_AT)]
    if not at:
        return None
    where = ", ".join(f"at epoch {e}: {at.count(e)}" for e in sorted(set(at)))
    spent = sum(at) + epochs * (len(trained) - len(at))
    return (
        f"stopped early: {len(at)} of {len(trained)} trainings ({where}); {spent} of "
        f"{epochs * len(trained)} epochs trained per seed"
    )
