"""Attack metrics on the planted canaries alone (``data.canaries``, :mod:`pptp.data`).

Aerni et al. 2024 ("Evaluations of Machine Learning Privacy Defenses are Misleading", CCS 2024)
show that population-level TPR at low FPR understates the leakage of the most vulnerable records
by 10-30x, and audit defenses on planted mislabeled canaries instead. A trial with canaries scores
every attack on two disjoint sets of pool examples: the **population** (every example that is not
a canary: the headline ``attack_*`` metrics) and the **canaries** (``canary_*`` metrics, below).

Resolution is honest here too: with ``c`` canaries about ``c / 2`` are non-members of the target,
so the smallest non-zero FPR is ``2 / c``: a few hundred canaries resolve TPR at a few percent FPR,
not at 0.1 %. A TPR at an FPR the canaries cannot resolve is NaN, and the resolution is reported as
``canary_fpr_resolution``. Like the population's, the canary worst case is two-sided (an attack's
negated scores count).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from pptp.metrics import AttackMetrics, evaluate, resolvable, tpr_at_fpr

#: canary TPR metrics and their FPRs: coarser than the population's 0.1 % / 1 %, because a few
#: hundred canaries cannot resolve finer ones
CANARY_TPR_METRICS: dict[str, float] = {"tpr@1%fpr": 0.01, "tpr@5%fpr": 0.05}

#: every metric name a trial with canaries reports (the worst case over attacks)
CANARY_METRICS = (
    "canary_auc",
    *(f"canary_{m}" for m in CANARY_TPR_METRICS),
    "canary_fpr_resolution",
    "canary_count",
)


def split_scores(
    scores: Mapping[str, np.ndarray], is_member: np.ndarray, canary: np.ndarray | None
) -> tuple[dict[str, AttackMetrics], dict[str, AttackMetrics]]:
    """``(population, canaries)``: each attack's metrics on the non-canaries and on the canaries.

    ``scores[attack]: (n_pool,)`` (higher = member), ``is_member: (n_pool,)`` bool (the target's
    keep row), ``canary: (n_pool,)`` bool or None. Without canaries the second dict is empty.
    """
    if canary is None or not canary.any():
        return {name: evaluate(s, is_member) for name, s in scores.items()}, {}
    rest = ~canary
    population = {name: evaluate(s[rest], is_member[rest]) for name, s in scores.items()}
    if is_member[canary].all() or not is_member[canary].any():
        raise ValueError(
            f"the {int(canary.sum())} canaries are all members or all non-members of the target; "
            "plant more canaries (data.canaries)"
        )
    return population, {name: evaluate(s[canary], is_member[canary]) for name, s in scores.items()}


def _tpr(m: AttackMetrics, fpr: float, *, inverted: bool) -> float:
    n_non_members = round(1.0 / m.fpr_resolution)
    if not resolvable(fpr, n_non_members):
        return math.nan
    return tpr_at_fpr(m.roc.inverted() if inverted else m.roc, fpr)


def canary_metrics(canaries: Mapping[str, AttackMetrics], n_canaries: int) -> dict[str, float]:
    """The worst case over attacks and both score directions, on the canaries alone.

    ``canary_auc`` = max over attacks of max(auc, 1 - auc); ``canary_tpr@1%fpr`` and
    ``canary_tpr@5%fpr`` likewise (NaN when the canaries cannot resolve the FPR);
    ``canary_fpr_resolution`` = 1 / (canaries that are non-members of the target);
    ``canary_count`` = number of canaries. Per attack, one-sided: ``canary_auc/<attack>``.
    Empty without canaries.
    """
    if not canaries:
        return {}
    out: dict[str, float] = {}
    for name, m in canaries.items():
        out[f"canary_auc/{name}"] = m.auc
    out["canary_auc"] = max(max(m.auc, 1.0 - m.auc) for m in canaries.values())
    for metric, fpr in CANARY_TPR_METRICS.items():
        values = [_tpr(m, fpr, inverted=inv) for m in canaries.values() for inv in (False, True)]
        out[f"canary_{metric}"] = math.nan if any(math.isnan(v) for v in values) else max(values)
    out["canary_fpr_resolution"] = next(iter(canaries.values())).fpr_resolution
    out["canary_count"] = float(n_canaries)
    return out
