"""Is a trained model clearly better than chance on its held-out test set?

A model that learned nothing (for example torchvision's MobileNet whose BatchNorm statistics are
broken in eval mode: 0.87-0.90 train accuracy, 0.10-0.12 test accuracy) has attack AUC near 0.5
and would enter the Pareto front as a "private" point. This project's rule (an interpretation, not
from the paper): with ``p`` the majority-class rate of the test set (the accuracy of always
predicting its most frequent label) and ``n`` its size, a model is **at chance** when

    test_acc <= p + max(3 * sqrt(p * (1 - p) / n), 0.05 * (1 - p))

The first term is a one-sided binomial margin: a classifier with true accuracy ``p`` scores above
``p + 3 se`` on ``n`` examples with probability about 0.1 %. The second term asks for at least 5 %
of the distance from chance to perfect accuracy, so that on a large test set (CIFAR-10, n = 10,000:
``3 se = 0.009``) a model at 0.11-0.12 still counts as at chance, not as a model that learned.
Such a target or reference raises :class:`~pptp.errors.ModelAtChance` and the search records a
failed trial with the message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pptp.errors import ModelAtChance

#: one-sided binomial margin, in standard errors of the majority-class rate
STANDARD_ERRORS = 3.0
#: smallest useful gain over chance, as a fraction of the distance from chance to accuracy 1
MIN_GAIN = 0.05


@dataclass(frozen=True)
class ChanceLevel:
    """The chance level of a test set: ``majority`` rate, ``n`` examples and the accuracy a model
    must exceed (``threshold``); rates are fractions in ``[0, 1]``."""

    majority: float
    n: int
    threshold: float


def chance_level(labels: np.ndarray) -> ChanceLevel:
    """The chance level of a test set with integer ``labels (n,)``, ``n >= 1`` (rule above)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    _, counts = np.unique(labels, return_counts=True)
    n = int(labels.size)
    p = float(counts.max() / n)
    margin = max(STANDARD_ERRORS * math.sqrt(p * (1 - p) / n), MIN_GAIN * (1 - p))
    return ChanceLevel(majority=p, n=n, threshold=min(p + margin, 1.0))


def require_above_chance(accuracy: float, labels: np.ndarray, *, what: str) -> ChanceLevel:
    """Raise :class:`~pptp.errors.ModelAtChance` naming ``what`` unless ``accuracy`` on the test
    set with ``labels (n,)`` is above its chance level; returns the level. An empty test set
    cannot be checked: the caller decides (a trial has no accuracy objective without one)."""
    level = chance_level(labels)
    if not accuracy > level.threshold:  # NaN fails too
        raise ModelAtChance(
            f"{what} at chance level: test accuracy {accuracy:.4f}, chance {level.majority:.4f} "
            f"(majority class of {level.n} test examples); a model must score above "
            f"{level.threshold:.4f} (pptp.chance). Its attack numbers would look private only "
            "because it learned nothing: check the recipe (lr, epochs, normalisation layers in "
            "eval mode)"
        )
    return level
