"""A trial over several training seeds (``study.repeats``): means for the sampler, spreads beside.

A trial's accuracy and attack AUC vary with the training seed, so a front built from one seed per
trial is partly luck. With ``study.repeats: R`` a trial trains its target with
``train.seed = s + r`` for ``r < R`` (``s`` its own ``train.seed``) on the **same pool and
membership**: the reference models do not depend on ``train.seed`` (:mod:`pptp.bank`), so the one
bank serves every repeat. A new *data* seed (``data.seed``) is another pool and needs another bank.

:func:`aggregate` turns the R metric dicts into what the trial reports:

- every metric: the mean over seeds under its own name (what the sampler sees for objectives;
  NaN when a seed has NaN, e.g. a TPR the pool cannot resolve);
- the spread metrics (:func:`spread_metrics`: objectives, constraints, the headline metrics and
  any ``canary_*``): ``<metric>_sd``, the sample standard deviation (n - 1; 0 with one seed), and
  their per-seed values, which the driver stores as the Optuna user attribute
  ``per_seed = {metric: [v_seed0, v_seed1, ...]}`` (:mod:`search.study.trials` reads exactly
  this).

How many seeds a difference needs is in ``spaces/README.md`` (``study.repeats``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

from pptp.metric_catalogue import find_metric

SD_SUFFIX = "_sd"


def repeat_seeds(base: int, repeats: int) -> list[int]:
    """``[base, base + 1, ..., base + repeats - 1]``: the ``train.seed`` of each repeat."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    return [base + r for r in range(repeats)]


def spread_metrics(metrics: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """Of ``metrics`` (names a trial measured), those whose spread is reported: ``wanted``
    (objectives and constraints), the headline metrics of every trial (the catalogue's metrics
    with a direction, not per attack: :mod:`pptp.metric_catalogue`) and every canary metric."""
    keep = set(wanted)
    out = []
    for name in dict.fromkeys(metrics):
        metric = find_metric(name)
        headline = metric is not None and metric.objective and not metric.per_attack
        if name in keep or headline or (metric is not None and metric.when == "canaries"):
            out.append(name)
    return out


def sample_sd(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for one value; NaN when a value is NaN."""
    if any(not math.isfinite(v) for v in values):
        return math.nan
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(
    per_seed: Sequence[Mapping[str, float]], *, wanted: Iterable[str] = ()
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``(metrics, per_seed_values)`` of a trial over its seeds (module docstring).

    ``per_seed``: one ``TrialResult.metrics()`` dict per seed, in seed order. Metrics missing from
    some seed are left out. With one seed the metrics come back unchanged and no ``_sd`` or
    per-seed values are added (a single seed has no spread to report).
    """
    if not per_seed:
        raise ValueError("aggregate needs the metrics of at least one seed")
    common = [k for k in per_seed[0] if all(k in m for m in per_seed[1:])]
    if len(per_seed) == 1:
        return {k: float(per_seed[0][k]) for k in common}, {}
    means: dict[str, float] = {}
    for key in common:
        values = [float(m[key]) for m in per_seed]
        means[key] = statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.nan
    values_by_metric: dict[str, list[float]] = {}
    for key in spread_metrics(common, wanted):
        values = [float(m[key]) for m in per_seed]
        values_by_metric[key] = values
        means[key + SD_SUFFIX] = sample_sd(values)
    return means, values_by_metric
