"""Fronts, hypervolumes and the bootstrap over training seeds (pure numpy, Optuna's geometry).

The hypervolume of a front is the area it dominates up to a reference point shared by both
fronts (the worst value of each objective among the trials shown), so it compares the PPTP and
baseline fronts of one study and means nothing across studies. Each of ``n_bootstrap`` resamples
draws, for every trial, its seeds with replacement (the objectives of one seed stay paired) and
recomputes the means and both hypervolumes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pptp.errors import ConfigError
from search.study.trials import FinishedTrial

if TYPE_CHECKING:
    from search.space import Objective


def _signed(values: np.ndarray, axes: tuple[Objective, Objective]) -> np.ndarray:
    """``(n, 2)`` objective values -> values where larger is better on both axes."""
    return values * np.array([a.sign for a in axes])


def hypervolume(
    values: np.ndarray, reference: np.ndarray, axes: tuple[Objective, Objective]
) -> float:
    """Area dominated by ``values (n, 2)`` up to ``reference (2,)``, both in objective units.

    Points no better than the reference on both axes add nothing. Optuna's
    ``compute_hypervolume`` (its WFG implementation, used by its own samplers) does the
    geometry, on values turned into losses.
    """
    from optuna._hypervolume import compute_hypervolume

    if len(values) == 0:
        return 0.0
    losses = -_signed(np.asarray(values, dtype=float), axes)
    ref = -_signed(np.asarray(reference, dtype=float)[None, :], axes)[0]
    inside = losses[(losses < ref).all(axis=1)]
    return float(compute_hypervolume(inside, ref)) if len(inside) else 0.0


def front(
    points: Sequence[FinishedTrial], axes: tuple[Objective, Objective]
) -> list[FinishedTrial]:
    """The non-dominated points (Optuna's ``best_trials`` of an in-memory study of them)."""
    import optuna

    if not points:
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory" lines
    study = optuna.create_study(directions=[a.direction for a in axes])
    for i, p in enumerate(points):
        study.add_trial(
            optuna.trial.create_trial(
                values=[p.mean(a.metric) for a in axes], user_attrs={"index": i}
            )
        )
    best = [points[t.user_attrs["index"]] for t in study.best_trials]
    return sorted(best, key=lambda p: -axes[0].sign * p.mean(axes[0].metric))


@dataclasses.dataclass(frozen=True)
class Interval:
    value: float  # on the trials' mean values
    low: float  # 2.5th percentile of the bootstrap
    high: float  # 97.5th percentile

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclasses.dataclass(frozen=True)
class Comparison:
    axes: tuple[Objective, Objective]
    points: tuple[FinishedTrial, ...]
    reference: tuple[float, float]
    pptp: Interval
    baselines: Interval
    difference: Interval  # pptp - baselines, paired over resamples
    share_pptp_better: float  # fraction of resamples where the PPTP hypervolume is larger
    n_bootstrap: int

    def family(self, name: str) -> list[FinishedTrial]:
        """The points of a front's family: PPTP or baseline trials, plus the undefended."""
        kind = "pptp" if name == "pptp" else "baseline"
        return [p for p in self.points if p.kind in (kind, "undefended")]

    @property
    def verdict(self) -> str:
        """The plain-words answer, from the paired interval of the hypervolume difference."""
        if not self.family("pptp") or not self.family("baseline"):
            return "one family has no completed trial: nothing to compare"
        single = all(p.n_seeds <= 1 for p in self.points)
        caveat = (
            " (every trial trained one seed, so the interval shows no seed noise: rerun with "
            "study.repeats >= 2 before trusting it)"
            if single
            else ""
        )
        if self.difference.low > 0:
            return (
                f"yes: the PPTP front dominates more than the baselines' beyond seed noise{caveat}"
            )
        if self.difference.high < 0:
            return f"no: the baselines' front dominates more than PPTP's beyond seed noise{caveat}"
        return f"no clear winner: the hypervolume difference is within seed noise{caveat}"


def _paired(point: FinishedTrial, metrics: Sequence[str]) -> np.ndarray:
    """``(n_seeds, len(metrics))``: a metric recorded only as a mean is repeated for each seed."""
    n = point.n_seeds
    columns = [
        point.seeds(m) if len(point.seeds(m)) == n else (point.mean(m),) * n for m in metrics
    ]
    return np.array(columns, dtype=float).T


def compare(
    points: Sequence[FinishedTrial],
    axes: tuple[Objective, Objective],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Hypervolumes of the PPTP and baseline families, with bootstrap intervals over seeds."""
    metrics = [a.metric for a in axes]
    usable = [p for p in points if all(math.isfinite(p.mean(m)) for m in metrics)]
    if not usable:
        raise ConfigError("no completed trial has both objectives; nothing to compare")
    means = np.array([[p.mean(m) for m in metrics] for p in usable])
    worst = _signed(means, axes).min(axis=0) * np.array([a.sign for a in axes])
    reference = (float(worst[0]), float(worst[1]))
    masks = {
        name: np.array([p.kind in (kind, "undefended") for p in usable])
        for name, kind in (("pptp", "pptp"), ("baseline", "baseline"))
    }

    def volumes(values: np.ndarray) -> tuple[float, float]:
        return (
            hypervolume(values[masks["pptp"]], np.array(reference), axes),
            hypervolume(values[masks["baseline"]], np.array(reference), axes),
        )

    observed = volumes(means)
    rng = np.random.default_rng(seed)
    samples = np.empty((n_bootstrap, 2))
    seeds = [_paired(p, metrics) for p in usable]  # (n_seeds, 2) each
    for b in range(n_bootstrap):
        resampled = np.array([s[rng.integers(0, len(s), len(s))].mean(axis=0) for s in seeds])
        samples[b] = volumes(resampled)
    diff = samples[:, 0] - samples[:, 1]

    def interval(value: float, draws: np.ndarray) -> Interval:
        low, high = np.percentile(draws, [2.5, 97.5])
        return Interval(value, float(low), float(high))

    return Comparison(
        axes=axes,
        points=tuple(usable),
        reference=reference,
        pptp=interval(observed[0], samples[:, 0]),
        baselines=interval(observed[1], samples[:, 1]),
        difference=interval(observed[0] - observed[1], diff),
        share_pptp_better=float((diff > 0).mean()),
        n_bootstrap=n_bootstrap,
    )
