"""What a study optimises: objectives, constraints, resources, and the validated ``study`` section.

These are the frozen values the rest of ``search/`` reads (:class:`StudySpec` and its parts);
:mod:`search.space.study_section` builds them from a space file. Metric names are those of
:mod:`pptp.metric_catalogue` (:func:`known_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pptp.attacks import attack_names
from pptp.config import TrialConfig
from pptp.metric_catalogue import catalogue, lookup, metric_names
from pptp.rungs import rung_epochs
from pptp.treatment import Kind

Direction = Literal["maximize", "minimize"]

DIRECTION_ALIASES: dict[str, Direction] = {
    "maximize": "maximize",
    "max": "maximize",
    "minimize": "minimize",
    "min": "minimize",
}
"""Accepted spellings of an objective's direction -> Optuna's direction."""

INFEASIBLE = 1.0e9
"""Constraint value of a missing or NaN metric: above any real violation (Optuna forbids NaN)."""


def direction_sign(direction: str) -> float:
    """+1 for ``"maximize"``, -1 for ``"minimize"``: ``sign * value`` is larger when better.

    Sorting by ``-sign * value`` puts the best first, whatever the direction.
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"objective direction must be maximize or minimize: {direction!r}")
    return 1.0 if direction == "maximize" else -1.0


@dataclass(frozen=True)
class Objective:
    """One objective: a metric of :meth:`pptp.result.TrialResult.metrics` and its direction."""

    metric: str
    direction: Direction

    @property
    def mode(self) -> str:
        """Ray Tune's spelling of the direction: ``"max"`` or ``"min"``."""
        return "max" if self.direction == "maximize" else "min"

    @property
    def sign(self) -> float:
        """:func:`direction_sign` of the direction: +1 maximise, -1 minimise."""
        return direction_sign(self.direction)


@dataclass(frozen=True)
class Constraint:
    """A bound on a metric that the sampler must respect (Optuna's ``Trial.set_constraint``)."""

    metric: str
    min: float | None = None
    max: float | None = None

    @property
    def name(self) -> str:
        """A readable key for ``Trial.set_constraint``: ``"test_acc>=0.5"``, ``"epsilon<=8"``."""
        parts = []
        if self.min is not None:
            parts.append(f"{self.metric}>={self.min:g}")
        if self.max is not None:
            parts.append(f"{self.metric}<={self.max:g}")
        return ",".join(parts)

    def value(self, metrics: Mapping[str, float]) -> float:
        """Optuna's convention: <= 0 is feasible, the size of a positive value is the violation.

        ``min 0.9`` with ``test_acc = 0.95`` gives ``-0.05``; with both bounds it is the larger of
        ``min - v`` and ``v - max``. A missing or NaN metric gives :data:`INFEASIBLE`.
        """
        v = metrics.get(self.metric)
        if v is None or not math.isfinite(float(v)):
            return INFEASIBLE
        violations = []
        if self.min is not None:
            violations.append(self.min - float(v))
        if self.max is not None:
            violations.append(float(v) - self.max)
        return max(violations)


@dataclass(frozen=True)
class Resources:
    """What Ray reserves per trial; ``gpus`` may be fractional (4 trials share a GPU at 0.25)."""

    cpus: float = 1.0
    gpus: float = 0.0


DEFAULT_OBJECTIVES = (Objective("test_acc", "maximize"), Objective("attack_auc", "minimize"))

#: what multi-fidelity search never stops early by default: an operator or defense that changes
#: the end of training (rewind's interpolation and fine-tune, early stopping's best epoch), whose
#: early rungs say little of its end (bench/README.md, "Rung correlation")
NEVER_STOPPED = ("rewind", "early_stopping")


@dataclass(frozen=True)
class Fidelity:
    """``study.fidelity``: rungs as fractions of ``train.epochs`` (the end of training is the
    last rung), the reduction factor (the best 1 / ``reduction`` of a rung's trials go on, by
    non-dominated sorting), and the operators and defenses never stopped early."""

    rungs: tuple[float, ...] = (1 / 9, 1 / 3)
    reduction: int = 3
    never_stop: tuple[str, ...] = NEVER_STOPPED

    def epochs(self, total: int) -> tuple[int, ...]:
        """The rung epochs of a ``total``-epoch training, the end excluded (e.g. 3, 10 of 30:
        :func:`pptp.rungs.rung_epochs`)."""
        return rung_epochs(total, self.rungs)

    def to_data(self) -> dict[str, Any]:
        return {
            "rungs": list(self.rungs),
            "reduction": self.reduction,
            "never_stop": list(self.never_stop),
        }

FAMILY_KINDS: dict[str, Kind] = {"pptp": "pptp", "baselines": "baseline"}
"""The families ``study.budget`` may name -> the treatment kind whose trainings count toward it
(:mod:`pptp.treatment`)."""


@dataclass(frozen=True)
class StudySpec:
    """The ``study`` section, validated.

    ``enqueue`` holds the first trials to run, as ``{searched key: value}`` dicts (keys of an
    entry that were fixed are checked to equal the fixed value and dropped): pass them to
    Optuna's ``enqueue_trial`` or Ray's ``points_to_evaluate`` as they are.
    ``repeats``: training seeds per trial (``train.seed + r`` for ``r < repeats``, same pool and
    membership); the sampler sees the means (:mod:`search.running.repeats`).
    ``localization`` is read by :mod:`search.running.steering`: kept as given, only checked to be a
    mapping here.
    ``combine``: whether a trial may apply a protection operator and a baseline defense together.
    With ``False`` every trial is either PPTP (``defense.name: none``) or a baseline: a trial
    whose defense is not ``none`` trains with ``protect.operator: none`` (what a sampler proposed
    for the protect keys is ignored, and recorded as such), so PPTP and the baselines meet on one
    front with no mixed points (:meth:`search.space.Space.trial_config`).
    ``budget``: shares of the study's trainings per family (:data:`FAMILY_KINDS`), e.g.
    ``{"pptp": 0.5, "baselines": 0.5}``; empty: the sampler alone decides
    (:mod:`search.running.budget` enforces it).
    ``fidelity``: multi-fidelity search (:mod:`search.running.scheduler`); None (the default):
    every trial trains to the end.
    """

    name: str
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES
    sampler: str = "nsga2"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    n_trials: int = 12
    max_concurrent: int = 2
    resources: Resources = field(default_factory=Resources)
    constraints: tuple[Constraint, ...] = ()
    enqueue: tuple[dict[str, Any], ...] = ()
    localization: dict[str, Any] | None = None
    repeats: int = 1
    combine: bool = True
    budget: dict[str, float] = field(default_factory=dict)
    fidelity: Fidelity | None = None

    @property
    def metrics(self) -> list[str]:
        """Objective metric names, in order (Ray's ``OptunaSearch(metric=...)``)."""
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[Direction]:
        """Optuna directions, in order (``optuna.create_study(directions=...)``)."""
        return [o.direction for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        """Ray modes ``"max"``/``"min"``, in order (Ray's ``OptunaSearch(mode=...)``)."""
        return [o.mode for o in self.objectives]

    def to_data(self) -> dict[str, Any]:
        """The section as a space file writes it (plain data; loads back as an equal spec)."""
        out: dict[str, Any] = {
            "name": self.name,
            "objectives": {o.metric: o.direction for o in self.objectives},
            "sampler": self.sampler,
            "sampler_options": dict(self.sampler_options),
            "seed": self.seed,
            "n_trials": self.n_trials,
            "max_concurrent": self.max_concurrent,
            "resources": {"cpus": self.resources.cpus, "gpus": self.resources.gpus},
            "constraints": [
                {
                    k: v
                    for k, v in (("metric", c.metric), ("min", c.min), ("max", c.max))
                    if v is not None
                }
                for c in self.constraints
            ],
            "enqueue": [dict(e) for e in self.enqueue],
            "repeats": self.repeats,
            "combine": self.combine,
        }
        if self.localization is not None:
            out["localization"] = self.localization
        if self.budget:
            out["budget"] = dict(self.budget)
        if self.fidelity is not None:
            out["fidelity"] = self.fidelity.to_data()
        return out


# ============================================================================================
# Metrics a study may optimise or constrain: those of pptp's metric catalogue with a direction


METRIC_NAMES = tuple(
    m.key for m in catalogue() if m.objective and not m.per_attack and m.when != "canaries"
)
"""Metrics of every trial (``epsilon`` only with ``defense.name: dpsgd``)."""


def known_metrics(cfg: TrialConfig) -> set[str]:
    """Every metric name :meth:`pptp.result.TrialResult.metrics` reports for ``cfg``'s attacks
    that a space may optimise or constrain (``attack.attacks: null`` means the default set for
    ``attack.n_references``: :func:`pptp.attacks.attack_names`), the canary metrics when
    ``data.canaries`` > 0 (:mod:`pptp.metric_catalogue`)."""
    names = metric_names(attack_names(cfg.attack), canaries=cfg.data.canaries > 0)
    return {n for n in names if lookup(n).objective}
