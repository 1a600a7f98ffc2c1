"""How well membership scores separate members from non-members (DESIGN.md §3, "Metrics").

Scores follow the attacks' convention: higher = more likely a member. The ROC comes from
scikit-learn (``roc_curve`` with every threshold kept, ``roc_auc_score``); on top of it:

- TPR at a fixed low FPR (0.1 % and 1 %, the field's headline numbers since Carlini et al. 2022):
  the largest TPR among ROC points whose FPR is at most the target, as in the LiRA reference code
  (``tpr[np.where(fpr < target)[0][-1]]``, here with ``<=`` so a target hit exactly counts);
- balanced accuracy at the best threshold: ``max over thresholds of (TPR + 1 - FPR) / 2``, the
  membership advantage of Yeom et al. 2018 mapped to ``[0.5, 1]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

logger = logging.getLogger(__name__)

HEADLINE_FPRS = (0.001, 0.01)


@dataclass(frozen=True)
class RocCurve:
    """ROC points in order of decreasing threshold, each ``(n_points,)``; starts at (0, 0).

    ``thresholds[k]`` is the score at or above which examples are called members to get
    ``(fpr[k], tpr[k])``; ``thresholds[0]`` is ``inf`` (nobody called a member).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class AttackMetrics:
    """Headline numbers of one attack on one target; rates are fractions in ``[0, 1]``."""

    auc: float
    tpr_at_0_1pct_fpr: float
    tpr_at_1pct_fpr: float
    balanced_accuracy: float
    roc: RocCurve


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
    """Largest TPR among ROC points with ``FPR <= fpr_target``."""
    if not 0 <= fpr_target <= 1:
        raise ValueError(f"fpr_target must lie in [0, 1], got {fpr_target}")
    reachable = roc.fpr <= fpr_target
    return float(roc.tpr[reachable].max()) if reachable.any() else 0.0


def balanced_accuracy(roc: RocCurve) -> float:
    """``max_k (tpr[k] + 1 - fpr[k]) / 2``: accuracy at the best threshold on a balanced set."""
    return float(np.max((roc.tpr + 1.0 - roc.fpr) / 2.0))


def evaluate(scores: np.ndarray, is_member: np.ndarray) -> AttackMetrics:
    """All headline metrics of ``scores (n,)`` (higher = member) against ``is_member (n,)``."""
    scores, members = _checked(scores, is_member)
    roc = roc_curve(scores, members)
    low, high = HEADLINE_FPRS
    return AttackMetrics(
        auc=float(skm.roc_auc_score(members, scores)),
        tpr_at_0_1pct_fpr=tpr_at_fpr(roc, low),
        tpr_at_1pct_fpr=tpr_at_fpr(roc, high),
        balanced_accuracy=balanced_accuracy(roc),
        roc=roc,
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
