"""Choosing a Pareto config: candidates, bounds and the rules (pure: no training, no I/O).

Rules (:data:`RULES`, ``--rule``; bounds filter the candidates first, for either rule):

- ``max-acc``: the highest value of the study's first maximised objective (``test_acc`` when no
  objective is maximised); ties go to the better values of the other objectives in order, then to
  the lower trial number.
- ``knee`` (default): every objective is scaled to [0, 1] over the candidates, 1 = best of them
  (direction aware; an objective with no spread scales to 1); the pick is the candidate closest
  (Euclidean) to the ideal corner (1, ..., 1). Closest-to-utopia rather than farthest from the
  chord between the extremes: it is defined for any number of objectives and for fronts of one or
  two points.

A rule is a function ``(candidates, objectives) -> Pick`` registered in :data:`RULES`; the pick
carries a sentence saying why it was chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pptp.errors import ConfigError
from pptp.metric_catalogue import format_value, title
from pptp.registry import Registry
from pptp.tables import format_cell, format_table
from search.study.trials import FinishedTrial as Candidate

if TYPE_CHECKING:
    from search.space import Objective

#: the metric ``max-acc`` maximises when no objective is maximised
DEFAULT_ACCURACY = "test_acc"
#: how many near-misses an infeasible-bound error lists
CLOSEST_SHOWN = 3


@dataclass(frozen=True)
class Bound:
    """``metric <= limit`` (``kind="max"``) or ``metric >= limit`` (``kind="min"``)."""

    metric: str
    kind: Literal["max", "min"]
    limit: float

    def violation(self, candidate: Candidate) -> float:
        """0 when satisfied, else how far off (``inf`` when the trial lacks the metric)."""
        v = candidate.value(self.metric)
        if not math.isfinite(v):
            return math.inf
        return max(0.0, v - self.limit if self.kind == "max" else self.limit - v)

    def __str__(self) -> str:
        return f"{self.metric} {'<=' if self.kind == 'max' else '>='} {self.limit:g}"


def parse_bound(text: str, kind: Literal["max", "min"]) -> Bound:
    """``"attack_tpr@0.1%fpr=0.01"`` -> ``Bound("attack_tpr@0.1%fpr", kind, 0.01)``."""
    metric, sep, raw = text.partition("=")
    metric = metric.strip()
    try:
        limit = float(raw)
    except ValueError:
        limit = math.nan
    if not sep or not metric or not math.isfinite(limit):
        raise ConfigError(
            f"--{kind} {text!r}: write METRIC=NUMBER, e.g. --{kind} attack_tpr@0.1%fpr=0.01"
        )
    return Bound(metric, kind, limit)


@dataclass(frozen=True)
class Pick:
    """What a rule chose, and a sentence saying why."""

    candidate: Candidate
    reason: str


Rule = Callable[[Sequence[Candidate], Sequence["Objective"]], Pick]
RULES: Registry[Rule] = Registry("rule")


@RULES.register("max-acc")
def max_acc(candidates: Sequence[Candidate], objectives: Sequence[Objective]) -> Pick:
    """The most accurate candidate: the best value of the first maximised objective (test
    accuracy when none is maximised)."""
    metric = next((o.metric for o in objectives if o.direction == "maximize"), DEFAULT_ACCURACY)
    usable = [c for c in candidates if math.isfinite(c.value(metric))]
    if not usable:
        raise ConfigError(f"rule max-acc: no candidate trial recorded {metric}")
    others = [o for o in objectives if o.metric != metric]

    def key(c: Candidate) -> tuple[float, ...]:
        rest = [-o.sign * c.value(o.metric) for o in others]
        return (-c.value(metric), *[r if math.isfinite(r) else math.inf for r in rest], c.number)

    best = min(usable, key=key)
    return Pick(
        best, f"the highest {metric} ({best.value(metric):.4f}) of {len(usable)} candidates"
    )


def knee_scores(
    candidates: Sequence[Candidate], objectives: Sequence[Objective]
) -> dict[int, float]:
    """Distance of each candidate (by trial number) to the ideal corner of the scaled front.

    Each objective is scaled to [0, 1] over ``candidates`` with 1 = the best value among them
    (for a minimised objective, the lowest); an objective without spread scales to 1. The score is
    the Euclidean distance to (1, ..., 1): 0 for a candidate that is best in everything,
    ``sqrt(n_objectives)`` at most.
    """
    scaled: dict[int, list[float]] = {c.number: [] for c in candidates}
    for o in objectives:
        values = [c.value(o.metric) for c in candidates]
        low, high = min(values), max(values)
        for c, v in zip(candidates, values, strict=True):
            if high == low:
                goodness = 1.0
            elif o.direction == "maximize":
                goodness = (v - low) / (high - low)
            else:
                goodness = (high - v) / (high - low)
            scaled[c.number].append(goodness)
    return {n: math.sqrt(sum((1.0 - g) ** 2 for g in gs)) for n, gs in scaled.items()}


@RULES.register("knee")
def knee(candidates: Sequence[Candidate], objectives: Sequence[Objective]) -> Pick:
    """The knee of the front: the candidate closest to the ideal corner once each objective is
    scaled to [0, 1] over the candidates."""
    if len(objectives) < 2:
        raise ConfigError("rule knee needs a study with at least 2 objectives; use max-acc")
    usable = [c for c in candidates if all(math.isfinite(c.value(o.metric)) for o in objectives)]
    if not usable:
        raise ConfigError("rule knee: no candidate trial recorded every objective")
    scores = knee_scores(usable, objectives)
    best = min(usable, key=lambda c: (scores[c.number], c.number))
    shown = ", ".join(f"{o.metric} {best.value(o.metric):.4f}" for o in objectives)
    return Pick(
        best,
        f"the knee: closest to the ideal corner of {len(usable)} candidates with each objective "
        f"scaled to [0, 1] (distance {scores[best.number]:.3f}; {shown})",
    )


def choose(
    candidates: Sequence[Candidate],
    objectives: Sequence[Objective],
    *,
    rule: str,
    bounds: Sequence[Bound] = (),
    where: str = "Pareto-front",
) -> Pick:
    """Apply ``bounds``, then ``RULES[rule]``; ConfigError when no candidate meets the bounds."""
    chosen = RULES[rule]
    check_metrics(candidates, objectives, [b.metric for b in bounds])
    kept = [c for c in candidates if all(b.violation(c) == 0.0 for b in bounds)]
    if not kept:
        raise ConfigError(_no_candidate_message(candidates, bounds, where=where))
    pick = chosen(kept, objectives)
    if bounds:
        limits = " and ".join(str(b) for b in bounds)
        reason = f"{pick.reason}; {len(kept)} of {len(candidates)} {where} trials have {limits}"
    else:
        reason = f"{pick.reason} ({where} trials)"
    return Pick(pick.candidate, reason)


def check_metrics(
    candidates: Sequence[Candidate], objectives: Sequence[Objective], metrics: Sequence[str]
) -> None:
    """ConfigError naming the valid metrics when one of ``metrics`` no candidate recorded."""
    known = {o.metric for o in objectives}.union(*(c.values for c in candidates))
    for metric in metrics:
        if metric not in known:
            raise ConfigError(
                f"unknown metric {metric!r}; the trials recorded: {', '.join(sorted(known))}"
            )


def _no_candidate_message(
    candidates: Sequence[Candidate], bounds: Sequence[Bound], *, where: str
) -> str:
    def miss(c: Candidate) -> float:
        return sum(b.violation(c) / (abs(b.limit) or 1.0) for b in bounds)

    closest = sorted(candidates, key=lambda c: (miss(c), c.number))[:CLOSEST_SHOWN]
    metrics = list(dict.fromkeys([*(b.metric for b in bounds), DEFAULT_ACCURACY]))
    shown = "; ".join(
        f"trial {c.number} ("
        + ", ".join(f"{m} {format_cell(c.value(m))}" for m in metrics if m in c.values)
        + ")"
        for c in closest
    )
    limits = " and ".join(str(b) for b in bounds)
    return (
        f"no {where} trial has {limits} ({len(candidates)} candidates); closest: {shown}. "
        "Loosen the bound, try --among all, or extend the study (search/run.py --resume "
        "--n-trials N)"
    )


def candidates_table(
    cands: Sequence[Candidate],
    objectives: Sequence[Objective],
    *,
    picked: int,
    bounds: Sequence[Bound] = (),
) -> str:
    """The candidates, best first by the first objective: what each tried, its values (with
    their spread over seeds), and a ``note`` column marking the pick and bound misses."""
    first = objectives[0]
    ordered = sorted(cands, key=lambda c: (-first.sign * c.value(first.metric), c.number))
    metrics = list(dict.fromkeys([*(o.metric for o in objectives), *(b.metric for b in bounds)]))
    rows = []
    for c in ordered:
        note = (
            "picked"
            if c.number == picked
            else ("breaks a bound" if any(b.violation(c) > 0 for b in bounds) else "")
        )
        values = [
            format_value(m, c.value(m))
            + (
                f" ± {format_value(m, c.sd(m), spread=True)}"
                if c.n_seeds > 1 and m in c.per_seed
                else ""
            )
            for m in metrics
        ]
        rows.append([str(c.number), c.label, *values, note])
    headers = ["trial", "tried", *(title(m) for m in metrics), "note"]
    return format_table(rows, headers, align="ll" + "r" * len(metrics) + "l")
