"""The one-run epsilon audit (pptp/audit.py): the paper's formulas on constructed counts, a peer
implementation's figures, the guessing family on constructed scores, the canaries' independent
coins, and eps_lb in the metric catalogue and a space."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

from pptp.audit import (
    NONE_DETECTED,
    audit_canaries,
    eps_lower_bound,
    format_eps_lb,
    guess_counts,
    p_value,
)
from pptp.data import keep_matrix
from pptp.metric_catalogue import format_value, lookup, metric_names

# --- the paper's formulas (Steinke, Nasr & Jagielski 2023, Algorithm 2) on constructed counts ----


def test_without_delta_the_p_value_is_the_binomial_tail() -> None:
    # eps = 0: a coin; P[Binomial(10, 1/2) >= 8] = (45 + 10 + 1) / 1024
    assert p_value(100, 10, 8, 0.0, 0.0) == pytest.approx(56 / 1024)
    q = math.exp(1.0) / (1 + math.exp(1.0))
    assert p_value(100, 20, 15, 1.0, 0.0) == pytest.approx(stats.binom.sf(14, 20, q))


def test_the_delta_term_by_hand() -> None:
    # m 10, r 2, v 2, eps 0: tail P[B >= 2] = 1/4; alpha = max(P[B = 1] / 1, P[B <= 1] / 2)
    # = max(1/2, 3/8) = 1/2; p = 1/4 + 1/2 * delta * 2 m = 0.25 + 0.5 * 0.01 * 20 = 0.35
    assert p_value(10, 2, 2, 0.0, 0.01) == pytest.approx(0.35)
    assert p_value(10, 2, 2, 0.0, 0.5) == 1.0  # capped


def test_all_guesses_right_has_a_closed_form() -> None:
    # v = r, delta 0: p = q^r, so the bound is logit(beta^(1/r)): 100 of 100 at 95% -> 3.493
    for r, beta in [(100, 0.05), (20, 0.05), (50, 0.01)]:
        expected = float(special.logit(beta ** (1 / r)))
        assert eps_lower_bound(r, r, r, delta=0.0, significance=beta) == pytest.approx(
            expected, abs=1e-5
        )
    perfect = eps_lower_bound(100, 100, 100, delta=0.0, significance=0.05)
    assert perfect == pytest.approx(3.493, abs=1e-3)


def test_nothing_detected_is_zero() -> None:
    assert eps_lower_bound(100, 20, 12, delta=1e-5, significance=0.05) == 0.0  # 60%: chance
    assert eps_lower_bound(100, 0, 0, delta=1e-5, significance=0.05) == 0.0
    with pytest.raises(ValueError, match="v <= r <= m"):
        p_value(10, 20, 5, 1.0, 0.0)


#: figures of google-deepmind/jax_privacy, ``jax_privacy/auditing.py`` (release 2.0.0 on PyPI),
#: ``_epsilon_one_run(0, m, n_guess, n_correct, significance, delta)``: its implementation of the
#: same Algorithm 2, run once on these counts (it needs jax and dp_accounting, which this project
#: does not install; bench/README.md says how they were made)
JAX_PRIVACY = [
    # (m, r, v, delta, significance, eps)
    (100, 100, 100, 0.0, 0.05, 3.492965),
    (100, 100, 100, 1e-5, 0.05, 3.490216),
    (1000, 200, 190, 1e-5, 0.05, 2.393618),
    (1000, 1000, 700, 1e-5, 0.05, 0.731741),
    (200, 50, 45, 1e-5, 0.003125, 0.989576),
    (1000, 100, 99, 0.0, 0.01, 2.673708),
    (200, 20, 12, 1e-5, 0.05, 0.0),
    (10000, 1000, 900, 1e-6, 0.05, 2.020646),
]


@pytest.mark.parametrize(("m", "r", "v", "delta", "significance", "eps"), JAX_PRIVACY)
def test_agrees_with_jax_privacy(
    m: int, r: int, v: int, delta: float, significance: float, eps: float
) -> None:
    assert eps_lower_bound(m, r, v, delta=delta, significance=significance) == pytest.approx(
        eps, abs=1e-5
    )


# --- the guessing family on constructed scores ------------------------------------------------


def _canaries(m: int) -> tuple[np.ndarray, np.ndarray]:
    """``m`` canaries, half of them members, then 50 population examples."""
    is_member = np.r_[np.ones(m // 2, bool), np.zeros(m - m // 2, bool), np.ones(50, bool)]
    canary = np.r_[np.ones(m, bool), np.zeros(50, bool)]
    return is_member, canary


def test_perfect_scores_give_the_bonferroni_corrected_bound() -> None:
    is_member, canary = _canaries(100)
    audit = audit_canaries({"a": is_member.astype(float)}, is_member, canary, delta=1e-5)
    assert guess_counts(100) == (5, 12, 25, 50)
    assert audit.rules == 8  # 1 attack x 2 directions x 4 guess counts
    assert audit.best is not None and audit.best.k == 50 and audit.best.correct == 100
    assert audit.eps_lb == pytest.approx(
        eps_lower_bound(100, 100, 100, delta=1e-5, significance=0.05 / 8), abs=1e-6
    )
    # a second attack doubles the family, so the same evidence gives a smaller bound
    both = audit_canaries(
        {"a": is_member.astype(float), "b": np.zeros(150)}, is_member, canary, delta=1e-5
    )
    assert both.rules == 16 and 0 < both.eps_lb < audit.eps_lb
    assert "100/100 guesses correct" in audit.describe()


def test_inverted_scores_count_and_noise_detects_nothing() -> None:
    is_member, canary = _canaries(100)
    inverted = audit_canaries({"relax": -is_member.astype(float)}, is_member, canary, delta=1e-5)
    assert inverted.best is not None and inverted.best.inverted and inverted.eps_lb > 2
    noise = np.random.default_rng(3).random(150)
    nothing = audit_canaries({"a": noise}, is_member, canary, delta=1e-5)
    assert nothing.eps_lb == 0.0 and nothing.best is None
    assert f"eps_lb {NONE_DETECTED}" in nothing.describe() and "private" not in nothing.describe()


def test_scores_unrelated_to_membership_seldom_give_a_bound() -> None:
    # the bound's promise at 95%: under eps = 0 (scores independent of membership) a positive
    # bound appears in at most 5% of runs; 200 runs, binomial(200, 0.05) exceeds 20 w.p. < 0.2%
    rng = np.random.default_rng(7)
    canary = np.ones(60, bool)
    positive = 0
    for _ in range(200):
        member = rng.random(60) < 0.5
        scores = {"a": rng.random(60), "b": rng.random(60)}
        positive += audit_canaries(scores, member, canary, delta=1e-5).eps_lb > 0
    assert positive <= 20


def test_canaries_are_independent_coins_in_every_row() -> None:
    # 100 canaries in a pool of 200: a random half would give a hypergeometric count of
    # canary members per row (variance 25 * 100 / 199 = 12.6); independent coins give
    # binomial(100, 1/2), variance 25
    canary = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    keep = keep_matrix(200, 5, 600, canary=canary)
    counts = keep[:, canary].sum(axis=1)
    assert abs(counts.mean() - 50) < 1.0
    assert counts.var() > 20
    # the rest of the pool is as without canaries, so banks without canaries are unchanged
    assert np.array_equal(keep[:, ~canary], keep_matrix(200, 5, 600)[:, ~canary])


# --- eps_lb in the catalogue and a space --------------------------------------------------------


def test_eps_lb_is_a_catalogued_objective_that_never_reads_private() -> None:
    metric = lookup("eps_lb")
    assert metric.objective and metric.recorded and metric.shown
    assert format_value("eps_lb", 0.0) == NONE_DETECTED == format_eps_lb(0.0)
    assert format_value("eps_lb", 1.234) == "1.23"
    assert format_eps_lb(0.002) == "<0.01" == format_value("eps_lb", 0.002)  # never "0.00"
    assert "eps_lb" in metric_names(["loss"], canaries=True)
    assert "eps_lb" not in metric_names(["loss"], canaries=False)


def test_a_space_may_constrain_eps_lb(tmp_path: Path) -> None:
    from search.space import load_space

    path = tmp_path / "s.yaml"
    path.write_text(
        "study: {name: c, objectives: {test_acc: max, eps_lb: min},"
        " constraints: [{metric: eps_lb, max: 2.0}]}\n"
        "fixed: {data.canaries: 100}\n"
    )
    study = load_space(path).study
    assert study.metrics == ["test_acc", "eps_lb"]
    assert [(c.metric, c.max) for c in study.constraints] == [("eps_lb", 2.0)]
