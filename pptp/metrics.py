"""How well membership scores separate members from non-members
(docs/design.md#metrics-and-fpr-resolution).

Scores follow the attacks' convention: higher = more likely a member. The ROC comes from
scikit-learn (``roc_curve`` with every threshold kept, ``roc_auc_score``); on top of it:

- TPR at a fixed low FPR (0.1 % and 1 %, the field's headline numbers since Carlini et al. 2022):
  the largest TPR among ROC points whose FPR is at most the target, as in the LiRA reference code
  (``tpr[np.where(fpr < target)[0][-1]]``, here with ``<=`` so a target hit exactly counts);
- balanced accuracy at the best threshold: ``max over thresholds of (TPR + 1 - FPR) / 2``, the
  membership advantage of Yeom et al. 2018 mapped to ``[0.5, 1]``.

**Resolution.** With ``N`` non-members the only false-positive rates a threshold can reach are
``0, 1/N, 2/N, ...``; ``fpr_resolution = 1 / N``. A target FPR below it (0.1 % with 700
non-members) can only be met with zero false positives, so "TPR at 0.1 % FPR" would really be "TPR
at no false positive", a different and noisier number. :func:`evaluate` reports such a TPR as NaN
and records ``fpr_resolution`` (:func:`resolvable` is the rule; the space validator applies it
before anything runs).

**Direction.** An attack whose scores are inverted (members score LOWER, as RelaxLoss' gradient
ascent on members can cause) leaks as much as one that is not: an attacker who knows the direction
flips it. :meth:`RocCurve.inverted` is the ROC of the negated scores, and
:meth:`AttackMetrics.value` gives every headline number in either direction; the trial's
worst case takes both (:meth:`pptp.result.TrialResult.metrics`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

logger = logging.getLogger(__name__)

HEADLINE_FPRS = (0.001, 0.01)

#: headline metric names (as in ``TrialResult.metrics()``) and the FPR each TPR is read at
TPR_METRICS: dict[str, float] = {"tpr@0.1%fpr": 0.001, "tpr@1%fpr": 0.01}
_TPR_FIELDS = {"tpr@0.1%fpr": "tpr_at_0_1pct_fpr", "tpr@1%fpr": "tpr_at_1pct_fpr"}

#: FPRs are multiples of 1/N; this absorbs the rounding of ``1 - fpr`` (inverted curves)
_FPR_TOLERANCE = 1e-12


@dataclass(frozen=True)
class RocCurve:
    """ROC points in order of decreasing threshold, each ``(n_points,)``; starts at (0, 0).

    ``thresholds[k]`` is the score at or above which examples are called members to get
    ``(fpr[k], tpr[k])``; ``thresholds[0]`` is ``inf`` (nobody called a member).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    def inverted(self) -> RocCurve:
        """The ROC of the negated scores, without recomputing it.

        Calling members the examples with ``-score >= t`` is calling them ``score < -t``, the
        complement of a threshold of this curve, so the operating points are exactly ``(1 - fpr,
        1 - tpr)`` of this curve's, in reverse order, ties included; ``thresholds`` are those of
        the negated scores (``inf``, then minus this curve's in reverse, without its ``inf``).
        """
        return RocCurve(
            fpr=1.0 - self.fpr[::-1],
            tpr=1.0 - self.tpr[::-1],
            thresholds=np.concatenate(([np.inf], -self.thresholds[:0:-1])),
        )


@dataclass(frozen=True)
class AttackMetrics:
    """Headline numbers of one attack on one target; rates are fractions in ``[0, 1]``.

    One-sided (the attack's own direction: higher score = member). A TPR whose FPR the scored set
    cannot resolve (below ``fpr_resolution = 1 / n_non_members``) is NaN. ``fpr_resolution`` is NaN
    only for metrics built by hand without it; then no TPR is treated as unresolved.
    """

    auc: float
    tpr_at_0_1pct_fpr: float
    tpr_at_1pct_fpr: float
    balanced_accuracy: float
    roc: RocCurve
    fpr_resolution: float = math.nan

    def value(self, metric: str, *, inverted: bool = False) -> float:
        """``auc``, ``tpr@0.1%fpr`` or ``tpr@1%fpr``, of the scores or (``inverted``) of their
        negation: AUC ``1 - auc`` (exact, ties count 1/2 either way), TPRs read off
        :meth:`RocCurve.inverted` under the same resolution rule."""
        if metric == "auc":
            return 1.0 - self.auc if inverted else self.auc
        if metric not in TPR_METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: auc, {', '.join(TPR_METRICS)}")
        if not inverted:
            return float(getattr(self, _TPR_FIELDS[metric]))
        fpr = TPR_METRICS[metric]
        if math.isfinite(self.fpr_resolution) and fpr < self.fpr_resolution * (1 - 1e-9):
            return math.nan
        return tpr_at_fpr(self.roc.inverted(), fpr)


def resolvable(fpr: float, n_non_members: int) -> bool:
    """Whether a TPR at ``fpr`` means what it says with ``n_non_members`` non-members: at least
    one false positive is allowed, ``fpr >= 1 / n_non_members``."""
    if n_non_members < 1:
        raise ValueError(f"n_non_members must be >= 1, got {n_non_members}")
    return fpr * n_non_members >= 1 - 1e-9


def _checked(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    members = np.asarray(is_member)
    if scores.ndim != 1 or members.ndim != 1:
        raise ValueError(
            f"scores and is_member must be 1-D, got shapes {scores.shape} and {members.shape}"
        )
    if scores.shape != members.shape:
        raise ValueError(
            f"scores has {scores.size} entries but is_member has {members.size}; one per example"
        )
    if not np.isfinite(scores).all():
        raise ValueError(
            f"scores hold {np.count_nonzero(~np.isfinite(scores))} NaN or infinite "
            "values; attack scores must be finite"
        )
    if members.dtype != np.bool_:
        if not np.isin(members, (0, 1)).all():
            raise ValueError(f"is_member must be boolean (or 0/1), got dtype {members.dtype}")
        members = members.astype(bool)
    n_members = int(members.sum())
    if n_members in (0, members.size):
        raise ValueError(
            f"is_member must contain both members and non-members, got {n_members} members "
            f"of {members.size} examples"
        )
    return scores, members


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> RocCurve:
    """Full ROC of ``scores (n,)`` against ``is_member (n,)`` bool, every threshold kept."""
    scores, members = _checked(scores, is_member)
    fpr, tpr, thresholds = skm.roc_curve(members, scores, drop_intermediate=False)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds)


def tpr_at_fpr(roc: RocCurve, fpr_target: float) -> float:
    """Largest TPR among ROC points with ``FPR <= fpr_target`` (no resolution rule: see
    :func:`evaluate`)."""
    if not 0 <= fpr_target <= 1:
        raise ValueError(f"fpr_target must lie in [0, 1], got {fpr_target}")
    reachable = roc.fpr <= fpr_target + _FPR_TOLERANCE
    return float(roc.tpr[reachable].max()) if reachable.any() else 0.0


def balanced_accuracy(roc: RocCurve) -> float:
    """``max_k (tpr[k] + 1 - fpr[k]) / 2``: accuracy at the best threshold on a balanced set."""
    return float(np.max((roc.tpr + 1.0 - roc.fpr) / 2.0))


def evaluate(scores: np.ndarray, is_member: np.ndarray) -> AttackMetrics:
    """All headline metrics of ``scores (n,)`` (higher = member) against ``is_member (n,)``.

    A TPR at an FPR below ``1 / (number of non-members)`` is NaN (see :func:`resolvable`).
    """
    scores, members = _checked(scores, is_member)
    roc = roc_curve(scores, members)
    n_non_members = int((~members).sum())
    low, high = HEADLINE_FPRS

    def tpr(fpr: float) -> float:
        return tpr_at_fpr(roc, fpr) if resolvable(fpr, n_non_members) else math.nan

    return AttackMetrics(
        auc=float(skm.roc_auc_score(members, scores)),
        tpr_at_0_1pct_fpr=tpr(low),
        tpr_at_1pct_fpr=tpr(high),
        balanced_accuracy=balanced_accuracy(roc),
        roc=roc,
        fpr_resolution=1.0 / n_non_members,
    )


def plot_roc(curves: Mapping[str, RocCurve], path: str | Path, *, title: str = "") -> Path:
    """Write a log-log ROC plot (one line per named curve, AUC in the legend) as a PNG at ``path``.

    Log axes show the low-FPR region the headline numbers come from; points at FPR or TPR 0 cannot
    appear on them, so the axes start at ``1 / (number of negatives)`` of the finest curve, floored
    at ``1e-5``. The dashed diagonal is a random guess.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    smallest = min(
        (c.fpr[c.fpr > 0].min() for c in curves.values() if (c.fpr > 0).any()), default=1e-5
    )
    low = max(min(smallest, 1e-3), 1e-5)
    fig, ax = plt.subplots(figsize=(5, 5))
    try:
        for name, roc in curves.items():
            ax.plot(roc.fpr, roc.tpr, label=f"{name} (AUC {skm.auc(roc.fpr, roc.tpr):.3f})")
        ax.plot([low, 1], [low, 1], "k--", linewidth=0.8, label="chance")
        ax.set(
            xscale="log",
            yscale="log",
            xlim=(low, 1),
            ylim=(low, 1),
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=title,
        )
        ax.legend(loc="lower right", fontsize="small")
        ax.grid(True, which="major", alpha=0.3)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    logger.info("ROC plot written to %s", path)
    return path
