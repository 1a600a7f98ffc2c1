from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from pptp.metrics import (
    TPR_METRICS,
    AttackMetrics,
    RocCurve,
    balanced_accuracy,
    evaluate,
    plot_roc,
    resolvable,
    roc_curve,
    tpr_at_fpr,
)

# 4 members and 4 non-members. In decreasing score order: M M N M N M N N, so the ROC walks
# (0,0) -> (0,.25) -> (0,.5) -> (.25,.5) -> (.25,.75) -> (.5,.75) -> (.5,1) -> (.75,1) -> (1,1).
HAND_SCORES = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.35, 0.2, 0.1])
HAND_MEMBERS = np.array([True, True, True, True, False, False, False, False])
HAND_FPR = [0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1]
HAND_TPR = [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1, 1]
# Pairs (member, non-member) ordered correctly: 4 + 4 + 3 + 2 of 16.
HAND_AUC = 13 / 16


def test_roc_by_hand() -> None:
    roc = roc_curve(HAND_SCORES, HAND_MEMBERS)
    np.testing.assert_allclose(roc.fpr, HAND_FPR)
    np.testing.assert_allclose(roc.tpr, HAND_TPR)
    assert roc.thresholds[0] == np.inf
    np.testing.assert_allclose(roc.thresholds[1:], np.sort(HAND_SCORES)[::-1])


def test_tpr_at_fpr_by_hand() -> None:
    roc = roc_curve(HAND_SCORES, HAND_MEMBERS)
    assert tpr_at_fpr(roc, 0.0) == 0.5
    assert tpr_at_fpr(roc, 0.1) == 0.5
    assert tpr_at_fpr(roc, 0.25) == 0.75  # a target hit exactly counts
    assert tpr_at_fpr(roc, 0.49) == 0.75
    assert tpr_at_fpr(roc, 0.5) == 1.0
    assert tpr_at_fpr(roc, 1.0) == 1.0


def test_evaluate_by_hand() -> None:
    result = evaluate(HAND_SCORES, HAND_MEMBERS)
    assert isinstance(result, AttackMetrics)
    assert result.auc == pytest.approx(HAND_AUC)
    # Best threshold: every point (0,.5), (.25,.75), (.5,1) gives (tpr + 1 - fpr) / 2 = 0.75.
    assert result.balanced_accuracy == pytest.approx(0.75)
    # 4 non-members: FPRs 0, 1/4, ...; neither 0.1% nor 1% can be resolved.
    assert result.fpr_resolution == 0.25
    assert math.isnan(result.tpr_at_0_1pct_fpr) and math.isnan(result.tpr_at_1pct_fpr)


def test_balanced_accuracy_by_hand() -> None:
    roc = RocCurve(
        fpr=np.array([0.0, 0.1, 0.4, 1.0]),
        tpr=np.array([0.0, 0.6, 0.8, 1.0]),
        thresholds=np.array([np.inf, 3.0, 2.0, 1.0]),
    )
    # (0.6 + 0.9) / 2 = 0.75 beats (0.8 + 0.6) / 2 = 0.7 and the trivial 0.5.
    assert balanced_accuracy(roc) == pytest.approx(0.75)


def test_matches_scikit_learn_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    members = rng.random(500) < 0.4
    scores = rng.normal(size=500) + 0.7 * members
    result = evaluate(scores, members)
    fpr, tpr, thresholds = skm.roc_curve(members, scores, drop_intermediate=False)
    np.testing.assert_array_equal(result.roc.fpr, fpr)
    np.testing.assert_array_equal(result.roc.tpr, tpr)
    np.testing.assert_array_equal(result.roc.thresholds, thresholds)
    assert result.auc == pytest.approx(skm.roc_auc_score(members, scores))
    assert result.auc == pytest.approx(skm.auc(fpr, tpr))
    # Brute force over every threshold t (member iff score >= t).
    best = max(
        (np.mean(scores[members] >= t) + np.mean(scores[~members] < t)) / 2
        for t in np.append(scores, np.inf)
    )
    assert result.balanced_accuracy == pytest.approx(best)


def test_perfect_separation() -> None:
    members = np.arange(2000) < 1000
    result = evaluate(members.astype(float) + np.linspace(0, 0.5, 2000), members)
    assert result.auc == 1.0
    assert result.tpr_at_0_1pct_fpr == 1.0
    assert result.tpr_at_1pct_fpr == 1.0
    assert result.balanced_accuracy == 1.0


def test_reversed_scores() -> None:
    members = np.arange(200) < 100
    result = evaluate(-members.astype(float), members)
    assert result.auc == 0.0
    assert result.tpr_at_1pct_fpr == 0.0
    assert result.balanced_accuracy == 0.5  # the threshold that calls nobody a member
    # an attacker who knows the direction flips the scores: perfect separation
    assert result.value("auc", inverted=True) == 1.0
    assert result.value("tpr@1%fpr", inverted=True) == 1.0
    assert math.isnan(result.value("tpr@0.1%fpr", inverted=True))  # 100 non-members


def test_random_scores_are_at_chance() -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    members = rng.random(n) < 0.5
    result = evaluate(rng.random(n), members)
    # AUC standard error for n/2 vs n/2 is sqrt((n + 1) / (3 n^2 / 4)) / 2 ~ 0.004.
    assert abs(result.auc - 0.5) < 0.02
    assert result.tpr_at_1pct_fpr < 0.03
    assert result.balanced_accuracy < 0.52


def test_integer_membership_is_accepted() -> None:
    assert evaluate(HAND_SCORES, HAND_MEMBERS.astype(int)).auc == pytest.approx(HAND_AUC)


@pytest.mark.parametrize(
    ("scores", "members", "message"),
    [
        ([0.1, np.nan, 0.3], [True, False, True], "NaN or infinite"),
        ([0.1, np.inf, 0.3], [True, False, True], "NaN or infinite"),
        ([0.1, 0.2, 0.3], [True, False], "3 entries but is_member has 2"),
        ([0.1, 0.2, 0.3], [True, True, True], "both members and non-members"),
        ([0.1, 0.2, 0.3], [False, False, False], "both members and non-members"),
        ([0.1, 0.2, 0.3], [0, 2, 1], "boolean"),
        ([[0.1, 0.2]], [[True, False]], "1-D"),
    ],
)
def test_bad_input_is_refused(scores: list, members: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(np.array(scores), np.array(members))
    with pytest.raises(ValueError, match=message):
        roc_curve(np.array(scores), np.array(members))


def test_tpr_at_fpr_refuses_bad_target() -> None:
    roc = roc_curve(HAND_SCORES, HAND_MEMBERS)
    with pytest.raises(ValueError, match="fpr_target"):
        tpr_at_fpr(roc, 1.5)


def test_plot_roc_writes_png(tmp_path) -> None:
    rng = np.random.default_rng(2)
    members = rng.random(1000) < 0.5
    curves = {
        "strong": roc_curve(rng.normal(size=1000) + 2 * members, members),
        "weak": roc_curve(rng.normal(size=1000) + 0.2 * members, members),
    }
    path = plot_roc(curves, tmp_path / "sub" / "roc.png", title="test")
    assert path == tmp_path / "sub" / "roc.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_plot_roc_closes_its_figure(tmp_path) -> None:
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plot_roc({"hand": roc_curve(HAND_SCORES, HAND_MEMBERS)}, tmp_path / "roc.png")
    assert len(plt.get_fignums()) == before


def test_plot_roc_needs_a_curve(tmp_path) -> None:
    with pytest.raises(ValueError, match="at least one curve"):
        plot_roc({}, tmp_path / "roc.png")


def test_headline_constants() -> None:
    rng = np.random.default_rng(3)
    members = rng.random(4000) < 0.5
    scores = rng.normal(size=4000) + members
    result = evaluate(scores, members)
    roc = roc_curve(scores, members)
    assert result.tpr_at_1pct_fpr == tpr_at_fpr(roc, 0.01) == result.value("tpr@1%fpr")
    assert result.tpr_at_0_1pct_fpr == tpr_at_fpr(roc, 0.001) == result.value("tpr@0.1%fpr")
    assert TPR_METRICS == {"tpr@0.1%fpr": 0.001, "tpr@1%fpr": 0.01}
    with pytest.raises(ValueError, match="unknown metric 'tpr@5%fpr'"):
        result.value("tpr@5%fpr")


# --- TPR at FPR against a brute-force count, with tied scores ---------------------------------


def brute_force_tpr_at_fpr(scores: np.ndarray, members: np.ndarray, fpr: float) -> float:
    """Try every threshold t (member iff score >= t, t = +inf calls nobody) and count: the largest
    TPR whose false positives are at most fpr * (number of non-members)."""
    pos, neg = scores[members], scores[~members]
    best = 0.0
    for t in [np.inf, *np.unique(scores)]:
        false_positives = int(np.sum(neg >= t))
        if false_positives <= fpr * len(neg) + 1e-9:
            best = max(best, float(np.sum(pos >= t)) / len(pos))
    return best


def tied_scores(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores on a coarse grid (many ties, including across members and non-members)."""
    rng = np.random.default_rng(seed)
    members = rng.random(n) < 0.45
    scores = np.round(rng.normal(size=n) + 0.8 * members, 1)
    return scores, members


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpr_at_fpr_matches_brute_force_with_ties(seed: int) -> None:
    scores, members = tied_scores(seed, 2600)  # about 1,430 non-members: both FPRs resolvable
    assert len(np.unique(scores)) < 100  # ties everywhere
    result = evaluate(scores, members)
    for metric, fpr in TPR_METRICS.items():
        expected = brute_force_tpr_at_fpr(scores, members, fpr)
        assert result.value(metric) == pytest.approx(expected, abs=1e-12), metric
        # the inverted direction: the brute force on the negated scores
        inverted = brute_force_tpr_at_fpr(-scores, members, fpr)
        assert result.value(metric, inverted=True) == pytest.approx(inverted, abs=1e-12), metric


def test_a_target_hit_exactly_counts_in_both_directions() -> None:
    # 1,000 non-members: 1% FPR allows exactly 10 false positives, 0.1% exactly 1.
    # Non-members take the 1,000 grid values k / 1000 (every count of false positives is reachable
    # from either side). Members sit on the same grid, some tied with the non-member whose
    # inclusion makes exactly 1 or 10 false positives, from above (0.999, 0.990) and from below
    # (0.000, 0.009): they count only if a target hit exactly counts.
    rng = np.random.default_rng(4)
    ties = np.repeat([999, 990, 0, 9], [20, 30, 40, 50])
    member_scores = np.concatenate([ties, rng.integers(0, 1000, size=360)])
    scores = np.concatenate([member_scores, rng.permutation(1000)]) / 1000
    members = np.arange(scores.size) < member_scores.size
    result = evaluate(scores, members)
    assert result.value("tpr@0.1%fpr") >= 20 / 500 and result.value("tpr@1%fpr") >= 50 / 500
    for metric, fpr in TPR_METRICS.items():
        assert result.value(metric) == brute_force_tpr_at_fpr(scores, members, fpr)
        assert result.value(metric, inverted=True) == pytest.approx(
            brute_force_tpr_at_fpr(-scores, members, fpr), abs=1e-12
        )


def test_inverted_roc_is_the_roc_of_negated_scores() -> None:
    scores, members = tied_scores(5, 400)
    roc = roc_curve(scores, members)
    fpr, tpr, thresholds = skm.roc_curve(members, -scores, drop_intermediate=False)
    inverted = roc.inverted()
    np.testing.assert_allclose(inverted.fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(inverted.tpr, tpr, atol=1e-12)
    np.testing.assert_array_equal(inverted.thresholds, thresholds)
    result = evaluate(scores, members)
    assert result.value("auc", inverted=True) == pytest.approx(
        skm.roc_auc_score(members, -scores), abs=1e-12
    )


# --- resolution ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fpr", "n_non_members", "expected"),
    [
        (0.001, 1000, True),  # one false positive allowed
        (0.001, 999, False),
        (0.001, 700, False),  # digits: the TPR at zero false positives
        (0.01, 100, True),
        (0.01, 99, False),
        (0.01, 700, True),
        (1.0, 1, True),
    ],
)
def test_resolvable(fpr: float, n_non_members: int, expected: bool) -> None:
    assert resolvable(fpr, n_non_members) is expected


def test_resolvable_refuses_an_empty_set() -> None:
    with pytest.raises(ValueError, match="n_non_members"):
        resolvable(0.01, 0)


@pytest.mark.parametrize(("n_non", "low_is_nan"), [(999, True), (1000, False)])
def test_unresolved_tpr_is_nan_and_resolution_recorded(n_non: int, low_is_nan: bool) -> None:
    rng = np.random.default_rng(6)
    members = np.arange(n_non + 300) < 300
    scores = rng.normal(size=members.size) + 2 * members
    result = evaluate(scores, members)
    assert result.fpr_resolution == 1 / n_non
    assert math.isnan(result.tpr_at_0_1pct_fpr) is low_is_nan
    assert math.isnan(result.value("tpr@0.1%fpr", inverted=True)) is low_is_nan
    assert result.tpr_at_1pct_fpr == brute_force_tpr_at_fpr(scores, members, 0.01)
