"""The Pareto table a person reads: what each trial tried, and the columns the pool resolves."""

from __future__ import annotations

import math

from fixtures_trials import trial

from pptp.treatment import Treatment
from search.space import Objective
from search.study.pareto import format_front

OBJECTIVES = [Objective("test_acc", "maximize"), Objective("attack_auc", "minimize")]


def test_trials_are_named_by_what_they_tried_and_unresolved_columns_are_said() -> None:
    nan = math.nan
    unresolved = {"attack_tpr@0.1%fpr": nan}  # recorded, NaN: not resolved by the pool
    trials = [
        trial(0, {"test_acc": 0.8155, "attack_auc": 0.748, "attack_tpr@1%fpr": 0.128},
              attrs=unresolved),
        trial(24, {"test_acc": 0.7988, "attack_auc": 0.5819, "attack_tpr@1%fpr": 0.0209},
              attrs=unresolved,
              treatment=Treatment(defense="relaxloss", knobs=(("strength", 0.31),))),
        trial(6, {"test_acc": 0.809, "attack_auc": 0.6507, "attack_tpr@1%fpr": 0.068},
              attrs=unresolved,
              treatment=Treatment("noise", 0.5, ("block4", "head"), consecutive=True)),
    ]  # fmt: skip
    lines = format_front(trials, OBJECTIVES).splitlines()
    assert lines[0].split() == ["trial", "tried", "accuracy", "attack", "AUC", "TPR@1%FPR"]
    assert lines[2].split()[:2] == ["0", "undefended"]
    assert "noise s=0.50 block4+head" in lines[3]
    assert "baseline relaxloss strength=0.31" in lines[4]
    assert "block1" not in lines[4] and "max_grad_norm" not in lines[4]  # a baseline protects none
    assert lines[-1].startswith("TPR@0.1%FPR: not resolved")


def test_the_table_says_what_difference_is_beyond_seed_noise() -> None:
    seeds = {"test_acc": [0.80, 0.82], "attack_auc": [0.70, 0.71]}
    trials = [trial(i, {"test_acc": 0.81 - i / 100, "attack_auc": 0.705 - i / 50}, per_seed=seeds)
              for i in range(3)]  # fmt: skip
    last = format_front(trials, OBJECTIVES).splitlines()[-1]
    # pooled sd: accuracy sqrt(0.0002 * 3 / 3) = 0.01414, 3 df, t = 3.1824: 0.045 for 2 vs 2
    assert last.startswith("seed noise: two 2-seed trials differ beyond it (95%) by more than")
    assert "accuracy ±0.0450" in last and "3 trials, 3 degrees of freedom" in last


def test_the_auditors_epsilon_sits_beside_the_accountants_and_zero_reads_none_detected() -> None:
    dp = Treatment(defense="dpsgd", knobs=(("noise_multiplier", 1.0),))
    trials = [
        trial(0, {"test_acc": 0.81, "attack_auc": 0.70, "eps_lb": 1.234}),
        trial(1, {"test_acc": 0.60, "attack_auc": 0.52, "eps_lb": 0.0, "epsilon": 3.1},
              treatment=dp),
    ]  # fmt: skip
    lines = format_front(trials, OBJECTIVES).splitlines()
    header = lines[0]
    assert header.index("eps_lb") < header.index("epsilon")  # side by side, bound first
    assert "1.23" in lines[2] and "none detected" in lines[3] and "3.10" in lines[3]
    assert "private" not in "\n".join(lines)
