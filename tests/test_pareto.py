"""The Pareto table a person reads: what each trial tried, and the columns the pool resolves."""

from __future__ import annotations

import math

from search.space import Objective
from search.study.pareto import format_front

OBJECTIVES = [Objective("test_acc", "maximize"), Objective("attack_auc", "minimize")]


def test_trials_are_named_by_what_they_tried_and_unresolved_columns_are_said() -> None:
    rows = [
        {"trial": 0, "pareto": True, "test_acc": 0.8155, "attack_auc": 0.748,
         "attack_tpr@1%fpr": 0.128, "attack_tpr@0.1%fpr": math.nan, "operator": "none",
         "strength": 0.0, "defense": "none", "protected_groups": "block1,block2",
         "param.protect.split": 2},
        {"trial": 24, "pareto": True, "test_acc": 0.7988, "attack_auc": 0.5819,
         "attack_tpr@1%fpr": 0.0209, "attack_tpr@0.1%fpr": math.nan, "operator": "none",
         "strength": 0.0, "defense": "relaxloss", "protected_groups": "block1",
         "param.defense.name": "relaxloss", "param.defense.strength": 0.31,
         "param.defense.max_grad_norm": 2.2, "param.protect.split": 1},
        {"trial": 6, "pareto": True, "test_acc": 0.809, "attack_auc": 0.6507,
         "attack_tpr@1%fpr": 0.068, "attack_tpr@0.1%fpr": math.nan, "operator": "noise",
         "strength": 0.5, "defense": "none", "protected_groups": "block4,head",
         "param.protect.split": 2},
    ]  # fmt: skip
    lines = format_front(rows, OBJECTIVES).splitlines()
    assert lines[0].split() == ["trial", "tried", "accuracy", "attack", "AUC", "TPR@1%FPR"]
    assert lines[2].split()[:2] == ["0", "undefended"]
    assert "noise s=0.50 block4+head" in lines[3]
    assert "baseline relaxloss strength=0.31" in lines[4]
    assert "block1" not in lines[4] and "max_grad_norm" not in lines[4]  # a baseline protects none
    assert lines[-1].startswith("TPR@0.1%FPR: not resolved")
