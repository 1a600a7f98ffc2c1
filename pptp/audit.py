"""An auditor's epsilon: a lower bound on epsilon from one training run and its canaries.

Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023). ``m``
canaries are each included in the target's training set independently with probability 1/2
(:func:`pptp.data.keep_row` draws the canaries' membership as independent coin flips). An auditor
who sees the trained model guesses "member" for ``k+`` canaries, "non-member" for ``k-`` and
abstains on the rest: ``r = k+ + k-`` guesses, ``v`` of them correct. If the training is
``(eps, delta)``-DP, ``v`` is stochastically dominated as the paper's Theorem 3 says, and
:func:`p_value` (their Algorithm 2, the p-value of ``v`` or more correct guesses) bounds the
chance of seeing what was seen; every ``eps`` whose p-value is below the significance
``beta = 1 - confidence`` is rejected, and :func:`eps_lower_bound` is the largest such ``eps``
(0 when not even ``eps = 0`` is rejected: nothing detected, which is not a proof of privacy).

**Guess counts without peeking.** The bound holds for guess counts fixed before the membership
is looked at. :func:`audit_canaries` tries a fixed family of guessing rules (every attack, both
score directions, ``k+ = k-`` at each of :data:`GUESS_FRACTIONS` of the canaries: the highest
scores guessed in, the lowest out) and reports the largest bound, each computed at significance
``beta / (number of rules)``: a Bonferroni correction, so the maximum is still a lower bound at
confidence ``1 - beta`` (the paper's Section 7 discusses this choice; a split of the canaries
would be the other).

Peer: ``jax_privacy.auditing`` (google-deepmind/jax_privacy, ``_epsilon_one_run``) implements the
same Algorithm 2; ``tests/test_audit.py`` holds its figures on the same counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from pptp.metric_catalogue import NONE_DETECTED

#: confidence of the bound when the config says nothing (``attack.audit_confidence``)
DEFAULT_CONFIDENCE = 0.95

#: guesses ``r`` as fractions of the canaries; half guessed in (highest scores), half out
GUESS_FRACTIONS = (0.1, 0.25, 0.5, 1.0)



def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[``v`` or more of ``r`` guesses correct] under ``(eps, delta)``-DP, ``m`` canaries.

    Steinke et al. 2023, Algorithm 2 (Theorem 3): with ``q = e^eps / (1 + e^eps)`` (the accuracy
    of eps-DP randomised response) ``p = P[Binomial(r, q) >= v] + 2 m delta *
    max_{1 <= i <= v} P[v - i <= Binomial(r, q) < v] / i``, capped at 1.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need eps >= 0 and 0 <= delta <= 1, got eps={eps}, delta={delta}")
    q = float(special.expit(eps))
    tail = float(stats.binom.sf(v - 1, r, q))  # P[B >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    between = stats.binom.sf(v - i - 1, r, q) - tail  # P[v - i <= B < v]
    alpha = float(np.max(between / i))
    return min(tail + alpha * delta * 2 * m, 1.0)


def eps_lower_bound(m: int, r: int, v: int, *, delta: float, significance: float) -> float:
    """The largest ``eps`` that ``v`` correct of ``r`` guesses on ``m`` canaries rejects at
    ``significance`` (the p-value of :func:`p_value` grows with ``eps``); 0 when ``eps = 0``
    itself is not rejected. Brent's method to 1e-6."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must lie in (0, 1), got {significance}")

    def margin(eps: float) -> float:
        return significance - p_value(m, r, v, eps, delta)

    if r == 0 or margin(0.0) <= 0:
        return 0.0
    high = 1.0
    while margin(high) > 0:  # terminates: the p-value tends to 1 as eps grows (q -> 1)
        high *= 2
    return float(optimize.brentq(margin, 0.0, high, xtol=1e-6))


@dataclass(frozen=True)
class Guess:
    """One guessing rule of the family: ``k`` highest scores of ``attack`` guessed in, ``k``
    lowest guessed out (swapped when ``inverted``); ``correct`` of the ``2 k`` guesses right."""

    attack: str
    inverted: bool
    k: int
    correct: int

    @property
    def guesses(self) -> int:
        return 2 * self.k

    def describe(self) -> str:
        side = f"{self.attack} (inverted)" if self.inverted else self.attack
        return f"{side}: {self.correct}/{self.guesses} guesses correct"


@dataclass(frozen=True)
class CanaryAudit:
    """The one-run audit of a target: ``eps_lb`` at ``confidence`` and ``delta`` from ``m``
    canaries; ``best`` is the rule that gave it (None when nothing was detected); ``rules`` the
    size of the family the Bonferroni correction divides the significance by."""

    eps_lb: float
    confidence: float
    delta: float
    m: int
    rules: int
    best: Guess | None

    def describe(self) -> str:
        """``eps_lb 1.23 (95%, delta 1e-05; lira_offline: 40/40 guesses correct)`` or
        ``eps_lb none detected (95%, ...)``."""
        value = NONE_DETECTED if self.eps_lb <= 0 else f"{self.eps_lb:.2f}"
        how = f"; {self.best.describe()}" if self.best is not None and self.eps_lb > 0 else ""
        return (
            f"eps_lb {value} ({self.confidence:.0%} confidence, delta {self.delta:g}, "
            f"{self.m} canaries{how})"
        )


def guess_counts(m: int) -> tuple[int, ...]:
    """``k`` (guesses per side) for each of :data:`GUESS_FRACTIONS` of ``m`` canaries, distinct,
    at least 1: e.g. 100 canaries -> (5, 12, 25, 50)."""
    return tuple(sorted({max(1, int(f * m) // 2) for f in GUESS_FRACTIONS}))


def _correct(order: np.ndarray, member: np.ndarray, k: int) -> int:
    """Correct guesses when the last ``k`` of ``order`` are guessed in and the first ``k`` out."""
    return int(member[order[-k:]].sum()) + int((~member[order[:k]]).sum())


def audit_canaries(
    scores: Mapping[str, np.ndarray],
    is_member: np.ndarray,
    canary: np.ndarray,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    delta: float,
) -> CanaryAudit:
    """Audit the target on its canaries: the largest Bonferroni-corrected bound over the family.

    ``scores[attack]: (n_pool,)`` (higher = member), ``is_member: (n_pool,)`` bool (the target's
    keep row), ``canary: (n_pool,)`` bool. Scores are ranked with a stable sort in pool order, so
    ties are broken by position, never by membership.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    index = np.flatnonzero(canary)
    m = len(index)
    member = np.asarray(is_member, dtype=bool)[index]
    counts = guess_counts(m) if m >= 2 else ()
    counts = tuple(k for k in counts if 2 * k <= m)
    rules = len(scores) * 2 * len(counts)
    if rules == 0:
        return CanaryAudit(0.0, confidence, delta, m, 0, None)
    significance = (1 - confidence) / rules
    best: Guess | None = None
    bound = 0.0
    for attack, attack_scores in scores.items():
        values = np.asarray(attack_scores, dtype=np.float64)[index]
        for inverted in (False, True):
            order = np.argsort(-values if inverted else values, kind="stable")
            for k in counts:
                correct = _correct(order, member, k)
                eps = eps_lower_bound(m, 2 * k, correct, delta=delta, significance=significance)
                if eps > bound:
                    bound, best = eps, Guess(attack, inverted, k, correct)
    return CanaryAudit(bound, confidence, delta, m, rules, best)


def contradicts(eps_lb: float, epsilon: float | None) -> bool:
    """Whether an audit's bound contradicts a claimed epsilon (at the same delta): ``eps_lb >
    epsilon``. A claim of infinity (DP-SGD without noise, honestly accounted) claims nothing."""
    return epsilon is not None and math.isfinite(epsilon) and eps_lb > epsilon


def claim_check(audit: CanaryAudit, epsilon: float) -> str:
    """One line on a claimed epsilon against the audit's bound, for the output and a tag:
    ``contradicted: ...`` when :func:`contradicts`, else ``consistent: ...``."""
    bound = f"eps_lb {format_eps_lb(audit.eps_lb)}"
    claim = f"claimed epsilon {epsilon:.2f}"
    where = f"({audit.confidence:.0%} confidence, delta {audit.delta:g})"
    if contradicts(audit.eps_lb, epsilon):
        return f"contradicted: the audit contradicts the claimed epsilon: {bound} > {claim} {where}"
    return f"consistent: {bound} <= {claim} {where}"


def format_eps_lb(value: float) -> str:
    """An ``eps_lb`` as the output reads it: ``1.23``, ``<0.01`` (detected, but barely), or
    :data:`NONE_DETECTED` for 0."""
    if not math.isfinite(value):
        return "-" if math.isnan(value) else "inf"
    if value <= 0:
        return NONE_DETECTED
    return "<0.01" if value < 0.005 else f"{value:.2f}"  # as the catalogue's eps_lb column
