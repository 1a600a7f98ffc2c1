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
import optuna
from optuna._hypervolume import compute_hypervolume

from pptp.errors import ConfigError
from pptp.treatment import KINDS
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


#: fewest completed trials of a family (besides the undefended model) for a verdict: a front of
#: fewer says more about the search effort than about the method
MIN_TRIALS = 3
#: fewest degrees of freedom of a family's pooled seed noise for a verdict
MIN_DF = 2


@dataclasses.dataclass(frozen=True)
class Noise:
    """A family's pooled seed noise on both axes: ``cov`` (2, 2) the pooled within-trial
    covariance of (axis 0, axis 1) over seeds, ``df`` its degrees of freedom, ``trials`` how many
    trials had two seeds or more (:mod:`search.study.noise` does the same for one metric)."""

    cov: np.ndarray
    df: int
    trials: int


def pooled_covariance(points: Sequence[FinishedTrial], metrics: Sequence[str]) -> Noise | None:
    """The pooled within-trial covariance of ``metrics`` over the trials with two or more seeds,
    ``sum_i sum_seeds (x - mean_i)(x - mean_i)^T / sum_i (n_i - 1)``; None when no trial has two.
    Accuracy and attack value of one seed come from one model, so their covariance is kept."""
    scatter = np.zeros((len(metrics), len(metrics)))
    df = trials = 0
    for p in points:
        x = _paired(p, metrics)  # (n_seeds, 2)
        if len(x) < 2 or not np.isfinite(x).all() or not p.per_seed:
            continue
        d = x - x.mean(axis=0)
        scatter += d.T @ d
        df += len(x) - 1
        trials += 1
    return Noise(scatter / df, df, trials) if df else None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """PPTP's front against the baselines' on one study's two objectives.

    ``pptp``/``baselines``/``difference``: hypervolumes with 95% intervals (None for a family
    with no completed trial); ``noise``: each family's pooled seed noise; ``missing``: why the
    runs do not support a verdict (empty when they do)."""

    axes: tuple[Objective, Objective]
    points: tuple[FinishedTrial, ...]
    reference: tuple[float, float]
    pptp: Interval | None
    baselines: Interval | None
    difference: Interval | None  # pptp - baselines, paired over resamples
    share_pptp_better: float  # fraction of resamples where the PPTP hypervolume is larger
    n_bootstrap: int
    noise: dict[str, Noise | None] = dataclasses.field(default_factory=dict)
    missing: tuple[str, ...] = ()

    def counts(self) -> dict[str, int]:
        """Trainings compared per kind (``pptp``, ``baseline``, ``undefended``, ``combined``)."""
        return {k: sum(p.kind == k for p in self.points) for k in dict.fromkeys(KINDS)}

    def family(self, name: str) -> list[FinishedTrial]:
        """The points of a front's family: PPTP or baseline trials, plus the undefended."""
        kind = "pptp" if name == "pptp" else "baseline"
        return [p for p in self.points if p.kind in (kind, "undefended")]

    @property
    def decided(self) -> bool:
        """Whether the runs support a verdict (enough trials and seeds in both families)."""
        return not self.missing and self.difference is not None

    @property
    def verdict(self) -> str:
        """The plain-words answer from the paired interval of the hypervolume difference, or
        why there is none."""
        if not self.decided:
            return "no verdict: " + "; ".join(self.missing)
        assert self.difference is not None
        if self.difference.low > 0:
            return "yes: the PPTP front dominates more than the baselines' beyond seed noise"
        if self.difference.high < 0:
            return "no: the baselines' front dominates more than PPTP's beyond seed noise"
        return "no clear winner: the hypervolume difference is within seed noise"


def _paired(point: FinishedTrial, metrics: Sequence[str]) -> np.ndarray:
    """``(n_seeds, len(metrics))``: a metric recorded only as a mean is repeated for each seed."""
    n = point.n_seeds
    columns = [
        point.seeds(m) if len(point.seeds(m)) == n else (point.mean(m),) * n for m in metrics
    ]
    return np.array(columns, dtype=float).T


def _missing(usable: Sequence[FinishedTrial], noise: dict[str, Noise | None]) -> list[str]:
    """Why these trials support no verdict (empty when they do)."""
    names = {"pptp": "PPTP", "baseline": "baseline"}
    counts = {kind: sum(p.kind == kind for p in usable) for kind in names}
    out = [
        f"the runs hold no {names[kind]} trial (give a study that ran them, or a second --run)"
        for kind, n in counts.items()
        if n == 0
    ]
    few = [f"{n} {names[kind]}" for kind, n in counts.items() if 0 < n < MIN_TRIALS]
    if few:
        out.append(
            f"only {' and '.join(few)} trial(s) completed; each front needs at least "
            f"{MIN_TRIALS} for a verdict (extend the study: search/run.py --resume --n-trials N)"
        )
    unseeded = [
        names[kind]
        for kind, n in counts.items()
        if n >= MIN_TRIALS and ((fam := noise.get(kind)) is None or fam.df < MIN_DF)
    ]
    if unseeded:
        out.append(
            f"the {' and '.join(unseeded)} trials trained one seed each, so their seed noise is "
            "unknown (set study.repeats: 2 or more)"
        )
    return out


def compare(
    points: Sequence[FinishedTrial],
    axes: tuple[Objective, Objective],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Hypervolumes of the PPTP and baseline families, with bootstrap intervals from each
    family's pooled seed noise.

    Each resample draws every trial's mean on both axes from a bivariate t around its observed
    mean with its family's pooled covariance over ``n_i`` seeds (a parametric bootstrap:
    ``mean_i + L z sqrt(df / chi2_df) / sqrt(n_i)``, ``L L^T`` the pooled covariance). Pooling
    gives many degrees of freedom where a trial's own two seeds give one (a 2-seed sd of 0 would
    otherwise make a trial exact), and trials of one seed get the family's noise too. The
    undefended model takes the pooled noise of every trial with seeds.
    """
    metrics = [a.metric for a in axes]
    # a repeated proposal reused a trial's results: the same training, counted once
    usable = [
        p for p in points if not p.repeat and all(math.isfinite(p.mean(m)) for m in metrics)
    ]
    if not usable:
        raise ConfigError("no completed trial has both objectives; nothing to compare")
    means = np.array([[p.mean(m) for m in metrics] for p in usable])
    worst = _signed(means, axes).min(axis=0) * np.array([a.sign for a in axes])
    reference = (float(worst[0]), float(worst[1]))
    masks = {
        name: np.array([p.kind in (name, "undefended") for p in usable])
        for name in ("pptp", "baseline")
    }
    noise: dict[str, Noise | None] = {
        kind: pooled_covariance([p for p in usable if p.kind == kind], metrics)
        for kind in ("pptp", "baseline", "combined")
    }
    noise["undefended"] = pooled_covariance(usable, metrics)
    present = {name: any(p.kind == name for p in usable) for name in masks}

    def volumes(values: np.ndarray) -> tuple[float, float]:
        return (
            hypervolume(values[masks["pptp"]], np.array(reference), axes),
            hypervolume(values[masks["baseline"]], np.array(reference), axes),
        )

    observed = volumes(means)
    rng = np.random.default_rng(seed)
    samples = np.empty((n_bootstrap, 2))
    for b in range(n_bootstrap):
        samples[b] = volumes(_resample(usable, means, noise, rng))
    diff = samples[:, 0] - samples[:, 1]

    def interval(value: float, draws: np.ndarray) -> Interval:
        low, high = np.percentile(draws, [2.5, 97.5])
        return Interval(value, float(low), float(high))

    both = present["pptp"] and present["baseline"]
    return Comparison(
        axes=axes,
        points=tuple(usable),
        reference=reference,
        pptp=interval(observed[0], samples[:, 0]) if present["pptp"] else None,
        baselines=interval(observed[1], samples[:, 1]) if present["baseline"] else None,
        difference=interval(observed[0] - observed[1], diff) if both else None,
        share_pptp_better=float((diff > 0).mean()),
        n_bootstrap=n_bootstrap,
        noise=noise,
        missing=tuple(_missing(usable, noise)),
    )


def _resample(
    points: Sequence[FinishedTrial],
    means: np.ndarray,
    noise: dict[str, Noise | None],
    rng: np.random.Generator,
) -> np.ndarray:
    """One parametric resample of every trial's mean (see :func:`compare`); a trial whose family
    has no seed noise keeps its mean."""
    out = means.copy()
    for i, p in enumerate(points):
        fam = noise.get(p.kind)
        if fam is None:
            continue
        chol = np.linalg.cholesky(fam.cov + 1e-12 * np.eye(len(fam.cov)))
        scale = math.sqrt(fam.df / rng.chisquare(fam.df)) / math.sqrt(max(p.n_seeds, 1))
        out[i] = means[i] + scale * (chol @ rng.standard_normal(len(fam.cov)))
    return out
