"""Completed trials as points with their values per training seed, and their kind.

A trial's kind comes from what it trained with (:func:`classify`): ``undefended`` (no protection
and no defense), ``baseline`` (a classic defense only), ``pptp`` (a protection operator at
strength > 0 only), ``combined`` (both). The report page and the run names
(:mod:`search.study.naming`) sort trials the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pptp.errors import ConfigError

if TYPE_CHECKING:
    from search.space import Objective


KINDS = ("undefended", "baseline", "pptp", "combined")


PER_SEED = "per_seed"  # trial user attribute: {metric: [value per training seed]}


@dataclasses.dataclass(frozen=True)
class Point:
    """One completed trial. ``seeds[metric]`` holds the metric per training seed, in seed order
    (one value when the trial trained one seed); seed ``i`` of every metric is the same model."""

    study: str
    trial: int
    kind: str
    label: str
    seeds: dict[str, tuple[float, ...]]

    def mean(self, metric: str) -> float:
        values = self.seeds.get(metric)
        return float(np.mean(values)) if values else math.nan

    def sd(self, metric: str) -> float:
        """Sample standard deviation over seeds; 0 with one seed, NaN when not recorded."""
        values = self.seeds.get(metric)
        if not values:
            return math.nan
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    @property
    def n_seeds(self) -> int:
        return max((len(v) for v in self.seeds.values()), default=0)


def classify(attrs: dict[str, Any], params: dict[str, Any]) -> tuple[str, str]:
    """``(kind, label)`` of a trial from what it recorded (operator, strength, defense, groups)."""
    operator = str(attrs.get("operator", params.get("protect.operator", "none")))
    strength = float(attrs.get("strength", params.get("protect.strength", 0.0)) or 0.0)
    defense = str(attrs.get("defense", params.get("defense.name", "none")))
    defense_strength = attrs.get("defense_strength", params.get("defense.strength"))
    knob = f" {float(defense_strength):.2f}" if defense_strength is not None else ""
    protected = operator != "none" and strength > 0
    pptp = f"{operator} {strength:.2f} [{attrs.get('protected_groups', '-')}]"
    if not protected and defense == "none":
        return "undefended", "undefended"
    if not protected:
        return "baseline", f"{defense}{knob}"
    if defense == "none":
        return "pptp", pptp
    return "combined", f"{pptp} + {defense}{knob}"


def points_from_trials(
    trials: Sequence[Any], objective_names: Sequence[str], study: str
) -> list[Point]:
    """:class:`Point` per completed Optuna trial (``FrozenTrial``), from its values and attrs."""
    out = []
    for t in trials:
        if t.values is None:
            continue
        attrs = dict(t.user_attrs)
        recorded = {m: v for m, v in attrs.items() if isinstance(v, int | float)}
        recorded.update(dict(zip(objective_names, t.values, strict=True)))
        per_seed = attrs.get(PER_SEED) or {}
        seeds: dict[str, tuple[float, ...]] = {}
        for metric, value in recorded.items():
            listed = per_seed.get(metric)
            seeds[metric] = tuple(float(v) for v in listed) if listed else (float(value),)
        kind, label = classify(attrs, dict(t.params))
        out.append(Point(study, t.number, kind, label, seeds))
    return out


def load_points(run_dirs: Sequence[Path]) -> tuple[list[Point], tuple[Objective, Objective]]:
    """Every completed trial of the runs, and the two objectives (the first run's)."""
    from optuna.trial import TrialState

    from search.study.reader import open_run

    points: list[Point] = []
    axes: tuple[Objective, Objective] | None = None
    for run_dir in run_dirs:
        run = open_run(run_dir)
        objectives = tuple(run.objectives)
        if len(objectives) != 2:
            raise ConfigError(
                f"--run {run_dir}: the study has {len(objectives)} objectives; the comparison "
                "draws two (accuracy and an attack metric)"
            )
        if axes is not None and objectives != axes:
            raise ConfigError(
                f"--run {run_dir}: objectives {[o.metric for o in objectives]} differ from the "
                f"first run's {[o.metric for o in axes]}; compare studies with the same objectives"
            )
        axes = (objectives[0], objectives[1])
        trials = run.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        points += points_from_trials(trials, [o.metric for o in objectives], run.state.study_name)
    if axes is None:
        raise ConfigError("give at least one --run")
    return points, axes
