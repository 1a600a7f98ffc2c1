"""Run names and descriptions (search/study/naming.py): pure strings, known answers."""

from __future__ import annotations

import pytest

from pptp.config import TrialConfig
from search.study.naming import (
    config_run_name,
    groups_label,
    objective_summary,
    row_run_name,
    study_description,
    trial_description,
    trial_digits,
    trial_run_name,
)


@pytest.mark.parametrize(
    ("groups", "consecutive", "label"),
    [
        ([], True, "-"),
        (["head"], True, "head"),
        (["block4", "head"], True, "block4+head"),
        (["block3", "block4", "head"], True, "block3-head"),
        (["block1", "block3", "head"], False, "block1+block3+head"),
    ],
)
def test_groups_label(groups: list[str], consecutive: bool, label: str) -> None:
    assert groups_label(groups, consecutive=consecutive) == label


def test_names_say_what_each_kind_of_trial_tried() -> None:
    pptp = trial_run_name(
        7, operator="noise", strength=0.4562, groups="block3,block4,head", consecutive=True
    )
    assert pptp == "t07 noise s=0.46 block3-head"
    # strength 0 is plain training whatever the operator: the undefended model
    assert trial_run_name(0, operator="damp", strength=0.0, groups="block1") == "t00 undefended"
    assert trial_run_name(3, operator="none", strength=0.7) == "t03 undefended"
    baseline = trial_run_name(2, operator="noise", strength=0.0, defense="dpsgd")
    assert baseline == "t02 baseline dpsgd"
    knob = trial_run_name(
        4, operator="none", strength=0.0, defense="dpsgd",
        defense_knobs={"defense.noise_multiplier": 0.8},
    )  # fmt: skip
    assert knob == "t04 baseline dpsgd noise_multiplier=0.80"
    both = trial_run_name(5, operator="anchor", strength=1.0, defense="relaxloss", groups=["head"])
    assert both == "t05 anchor s=1 head + relaxloss"
    assert trial_run_name(123, operator="damp", strength=0.5, groups="head", digits=3) == (
        "t123 damp s=0.50 head"
    )


def test_a_baseline_shows_only_its_own_searched_knobs() -> None:
    # a space that searches DP-SGD's clipping norm: a weight-decay trial does not read it
    searched = {"defense.strength": 0.3, "defense.max_grad_norm": 2.5}
    name = trial_run_name(
        7, operator="none", strength=0.0, defense="weight_decay", defense_knobs=searched
    )
    assert name == "t07 baseline weight_decay strength=0.30"
    name = trial_run_name(7, operator="none", strength=0.0, defense="dpsgd", defense_knobs=searched)
    assert name == "t07 baseline dpsgd max_grad_norm=2.50 strength=0.30"


def test_every_defense_declares_the_keys_it_reads() -> None:
    import dataclasses

    from pptp.config import DEFENSE_KEYS, DefenseConfig
    from pptp.defenses import DEFENSES

    assert set(DEFENSE_KEYS) == set(DEFENSES)
    fields = {f.name for f in dataclasses.fields(DefenseConfig)} - {"name", "strength"}
    assert {k for keys in DEFENSE_KEYS.values() for k in keys} == fields


def test_before_the_model_exists_the_name_describes_the_selection() -> None:
    cfg = TrialConfig().replace(
        **{"protect.operator": "rewind", "protect.strength": 0.5, "protect.split": 2,
           "protect.direction": "suffix"}
    )  # fmt: skip
    assert config_run_name(1, cfg) == "t01 rewind s=0.50 last2"
    assert config_run_name(1, cfg, protected_groups=("block4", "head")) == (
        "t01 rewind s=0.50 block4+head"
    )
    masked = TrialConfig().replace(
        **{"protect.operator": "damp", "protect.strength": 0.3, "protect.groups": ["block1"]}
    )
    assert config_run_name(9, masked) == "t09 damp s=0.30 block1"


def test_row_names_follow_what_optuna_recorded() -> None:
    row = {
        "trial": 6,
        "operator": "noise",
        "strength": 0.4562,
        "defense": "none",
        "protected_groups": "block3,block4,head",
        "param.protect.split": 3,
    }
    assert row_run_name(row) == "t06 noise s=0.46 block3-head"
    # a space that fixes the split: the caller says the groups are consecutive
    del row["param.protect.split"]
    assert row_run_name(row) == "t06 noise s=0.46 block3+block4+head"
    assert row_run_name(row, consecutive=True) == "t06 noise s=0.46 block3-head"


def test_trial_digits() -> None:
    assert trial_digits(12) == 2 and trial_digits(100) == 2 and trial_digits(101) == 3


def test_objective_summary_shows_the_seed_spread() -> None:
    row = {
        "test_acc": 0.9,
        "attack_auc": 0.6,
        "per_seed": {"test_acc": [0.88, 0.90, 0.92], "attack_auc": [0.6, 0.6, 0.6]},
    }
    # sample sd of (0.88, 0.90, 0.92) is 0.02
    assert objective_summary(row, ["test_acc", "attack_auc"]) == (
        "acc 0.900±0.020 · AUC 0.600±0.000 · 3 seeds"
    )
    single = objective_summary({"test_acc": 0.9, "canary_auc": 0.7}, ["test_acc", "canary_auc"])
    assert single == "acc 0.900 · canary_auc 0.700 · 1 seed"
    # what the runs table shows of a description: its first 50 characters
    assert len(objective_summary(row, ["test_acc", "attack_auc"])) <= 50


def test_trial_description_first_line_is_plain_text() -> None:
    row = {
        "trial": 7, "state": "COMPLETE", "pareto": True, "test_acc": 0.95,
        "attack_auc": 0.55, "attack_tpr@0.1%fpr": 0.01, "operator": "noise",
        "strength": 0.46, "defense": "none", "protected_groups": "block3,head",
    }  # fmt: skip
    text = trial_description(row, ["test_acc", "attack_auc"], study_name="qs",
                             parent_link="#/experiments/1/runs/abc")  # fmt: skip
    first, *rest = text.splitlines()
    assert first == "acc 0.950 · AUC 0.550 · 1 seed"
    body = "\n".join(rest)
    assert "On the Pareto front." in body
    assert "**noise** at strength 0.46 on block3, head" in body
    assert "TPR at 0.1% FPR 0.01" in body
    assert "[study run](#/experiments/1/runs/abc)" in body
    failed = trial_description(
        {"trial": 2, "state": "FAIL", "fail_reason": "ModelAtChance: accuracy 0.1"},
        ["test_acc"], study_name="qs",
    )  # fmt: skip
    assert failed.splitlines()[0] == "FAILED: ModelAtChance: accuracy 0.1"
    assert "Pareto front" not in trial_description(  # not known while the study runs
        {"trial": 1, "test_acc": 0.9}, ["test_acc"], study_name="qs"
    )
    undefended = trial_description(
        {"trial": 0, "operator": "damp", "strength": 0.0, "defense": "none", "test_acc": 0.9},
        ["test_acc"], study_name="qs",
    )  # fmt: skip
    assert "damp at strength 0 is plain training" in undefended


def test_study_description_names_the_best_trials_and_links() -> None:
    rows = [
        {"trial": 0, "state": "COMPLETE", "test_acc": 0.9, "attack_auc": 0.6, "pareto": True},
        {"trial": 1, "state": "COMPLETE", "test_acc": 0.8, "attack_auc": 0.5, "pareto": True},
        {"trial": 2, "state": "FAIL"},
    ]
    text = study_description(
        rows, [("test_acc", "maximize"), ("attack_auc", "minimize")], study_name="qs",
        names={0: "t00 undefended", 1: "t01 noise s=0.50 head"},
        links={"pareto": "#/p", "report": "", "localization": "#/l"},
    )  # fmt: skip
    assert text.splitlines()[0] == "3 trials (1 failed), 2 on the Pareto front"
    assert "Study **qs**" in text
    assert "best test_acc (maximize): 0.9000, `t00 undefended`" in text
    assert "best attack_auc (minimize): 0.5000, `t01 noise s=0.50 head`" in text
    assert "(#/p)" in text and "(#/l)" in text and "report page" not in text
