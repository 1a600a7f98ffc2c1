"""search.picking.rules: bounds, the knee and max-acc rules, the candidates table (pure)."""

from __future__ import annotations

import math

import pytest
from fixtures_pick import FRONT, OBJECTIVES
from fixtures_trials import trial

from pptp.errors import ConfigError
from search.picking.rules import (
    Bound,
    candidates_table,
    choose,
    knee,
    knee_scores,
    max_acc,
    parse_bound,
)
from search.space import Objective
from search.study.trials import FinishedTrial


def test_knee_scores_known_answer() -> None:
    """Scaled test_acc over [0.70, 0.95] and attack_auc over [0.51, 0.80] (lower is better)."""
    cands = [
        trial(i, {"test_acc": a, "attack_auc": u}, pareto=True)
        for i, (a, u, _) in enumerate(FRONT[:4])
    ]
    scores = knee_scores(cands, OBJECTIVES)
    assert scores[0] == pytest.approx(1.0)  # best accuracy, worst AUC
    assert scores[3] == pytest.approx(1.0)  # the other extreme
    assert scores[1] == pytest.approx(math.hypot(1 - 0.92, 1 - 0.18 / 0.29))
    assert scores[2] == pytest.approx(math.hypot(1 - 0.80, 1 - 0.25 / 0.29))
    assert knee(cands, OBJECTIVES).candidate.number == 2
    # one candidate, or objectives without spread: distance 0, still a pick
    one = knee(cands[:1], OBJECTIVES)
    assert one.candidate.number == 0
    assert knee_scores(cands[:1], OBJECTIVES) == {0: 0.0}


def test_knee_is_invariant_to_direction_and_scale() -> None:
    """Flipping a minimised objective into a maximised one (negated values), or rescaling an
    objective, does not change the knee."""
    base = [trial(i, {"a": a, "u": u}, pareto=True) for i, (a, u, _) in enumerate(FRONT)]
    objs = (Objective("a", "maximize"), Objective("u", "minimize"))
    flipped = [
        trial(c.number, {"a": 100 * c.values["a"], "u": -c.values["u"]}, pareto=True)
        for c in base
    ]
    flipped_objs = (Objective("a", "maximize"), Objective("u", "maximize"))
    assert knee_scores(base, objs) == pytest.approx(knee_scores(flipped, flipped_objs))


def test_max_acc_breaks_ties_by_the_other_objective() -> None:
    cands = [
        trial(0, {"test_acc": 0.9, "attack_auc": 0.7}, pareto=True),
        trial(1, {"test_acc": 0.9, "attack_auc": 0.6}, pareto=True),
        trial(2, {"test_acc": 0.8, "attack_auc": 0.5}, pareto=True),
    ]
    assert max_acc(cands, OBJECTIVES).candidate.number == 1


def front() -> list[FinishedTrial]:
    return [
        trial(i, {"test_acc": a, "attack_auc": u, "attack_tpr@0.1%fpr": t}, pareto=i != 4)
        for i, (a, u, t) in enumerate(FRONT)
    ]


def test_parse_bound_and_violation() -> None:
    bound = parse_bound("attack_tpr@0.1%fpr=0.01", "max")
    assert bound == Bound("attack_tpr@0.1%fpr", "max", 0.01)
    assert str(bound) == "attack_tpr@0.1%fpr <= 0.01"
    cands = front()
    assert bound.violation(cands[2]) == 0.0
    assert bound.violation(cands[0]) == pytest.approx(0.04)
    assert Bound("epsilon", "min", 1.0).violation(cands[0]) == math.inf  # not recorded
    with pytest.raises(ConfigError, match="write METRIC=NUMBER"):
        parse_bound("test_acc=nan", "min")


def test_choose_applies_bounds_then_the_rule() -> None:
    pick = choose(
        front(), OBJECTIVES, rule="max-acc", bounds=[parse_bound("attack_auc=0.6", "max")]
    )
    assert pick.candidate.number == 2
    assert "attack_auc <= 0.6" in pick.reason and "2 of 5 Pareto-front trials" in pick.reason
    with pytest.raises(ConfigError, match="closest: trial 3"):
        choose(front(), OBJECTIVES, rule="knee", bounds=[parse_bound("attack_auc=0.5", "max")])
    with pytest.raises(ConfigError, match="unknown rule"):
        choose(front(), OBJECTIVES, rule="best")
    with pytest.raises(ConfigError, match="at least 2 objectives"):
        knee(front(), (Objective("test_acc", "maximize"),))


def test_candidates_table_marks_the_pick_and_bound_misses() -> None:
    table = candidates_table(
        front(), OBJECTIVES, picked=2, bounds=[parse_bound("attack_auc=0.6", "max")]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["trial", "tried", "accuracy", "attack", "AUC", "note"]
    assert set(lines[1]) <= {"-", " "}
    assert [line.split()[0] for line in lines[2:]] == ["0", "1", "2", "4", "3"]  # best acc first
    assert lines[4].endswith("picked") and lines[2].endswith("breaks a bound")
    assert "undefended" in lines[2]  # what each candidate tried
