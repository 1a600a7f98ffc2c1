"""Seed noise: how far apart two trials' means must be before the difference is real.

A trial over ``study.repeats`` training seeds records each metric per seed. With 2 or 3 seeds a
trial's own standard deviation is a poor estimate (two seeds can agree to three decimals by
chance, and a 2-sample sd then calls a 0.005 difference real). Trials of one study share the
recipe, so their seed-to-seed spread estimates one noise level: the **pooled** within-trial
variance

    s_p^2 = sum_i (n_i - 1) s_i^2 / sum_i (n_i - 1),        df = sum_i (n_i - 1)

over the trials with two or more seeds (of one family, where the caller passes one family:
DP-SGD's noise is not early stopping's). The difference of two trials' means with ``n1`` and
``n2`` seeds is beyond seed noise at 95% when it exceeds the t-interval's half-width
``t_{0.975, df} * s_p * sqrt(1/n1 + 1/n2)`` (Welch would use each trial's own variance with 1
degree of freedom each; pooling buys the many degrees of freedom a study has). This assumes the
seed spread is about the same across the trials pooled; it says nothing about other sources of
variation (the data split: ``data.seed``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from search.study.trials import FinishedTrial

CONFIDENCE = 0.95


@dataclass(frozen=True)
class SeedNoise:
    """The pooled seed spread of one metric: ``sd`` (pooled sample standard deviation), ``df``
    (its degrees of freedom) and how many trials (``trials``) and seeds (``seeds``) it pooled."""

    metric: str
    sd: float
    df: int
    trials: int
    seeds: int

    def half_width(self, n1: int, n2: int, *, confidence: float = CONFIDENCE) -> float:
        """Half-width of the ``confidence`` t-interval of the difference of two trials' means
        over ``n1`` and ``n2`` seeds."""
        from scipy import stats  # 0.5-1 s to import: pick's and compare's --help do not pay it

        t = float(stats.t.ppf(0.5 + confidence / 2, self.df))
        return t * self.sd * math.sqrt(1 / n1 + 1 / n2)

    def beyond(self, a: FinishedTrial, b: FinishedTrial, *, confidence: float = CONFIDENCE) -> bool:
        """Whether ``a`` and ``b`` differ in this metric beyond seed noise."""
        diff = abs(a.mean(self.metric) - b.mean(self.metric))
        n1, n2 = len(a.seeds(self.metric)), len(b.seeds(self.metric))
        return math.isfinite(diff) and diff > self.half_width(n1, n2, confidence=confidence)


def pooled_noise(trials: Iterable[FinishedTrial], metric: str) -> SeedNoise | None:
    """The pooled seed noise of ``metric`` over ``trials`` (complete trials with two or more
    finite seed values), or None when no trial has two."""
    total = 0.0
    df = n_trials = n_seeds = 0
    for trial in trials:
        values = [v for v in trial.seeds(metric) if math.isfinite(v)]
        if not trial.complete or len(values) < 2:
            continue
        mean = sum(values) / len(values)
        total += sum((v - mean) ** 2 for v in values)
        df += len(values) - 1
        n_trials += 1
        n_seeds += len(values)
    if df == 0:
        return None
    return SeedNoise(metric, math.sqrt(total / df), df, n_trials, n_seeds)
