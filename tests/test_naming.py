"""Run names and descriptions (search/study/naming.py): pure strings, known answers."""

from __future__ import annotations

from pathlib import Path

from fixtures_trials import trial

from pptp.treatment import Treatment
from search.space import Objective, load_space
from search.study.naming import (
    objective_summary,
    planned_name,
    study_description,
    trial_description,
)

REPO = Path(__file__).resolve().parents[1]


def test_a_trial_is_named_before_it_trains_by_the_groups_it_will_protect() -> None:
    space = load_space(REPO / "spaces" / "quickstart.yaml")
    cfg = space.trial_config(
        {"protect.operator": "rewind", "protect.strength": 0.5, "protect.split": 2,
         "protect.direction": "suffix"}
    )  # fmt: skip
    assert planned_name(1, cfg, space) == "t01 rewind s=0.50 block4+head"
    # an operator at strength 0 is plain training: the config keeps no operator or selection
    plain = space.trial_config({"protect.operator": "damp", "protect.strength": 0.0})
    assert (plain.protect.operator, plain.protect.split) == ("none", None)
    assert planned_name(0, plain, space) == "t00 undefended"


def test_objective_summary_shows_the_seed_spread() -> None:
    three = trial(
        0,
        {"test_acc": 0.9, "attack_auc": 0.6},
        per_seed={"test_acc": [0.88, 0.90, 0.92], "attack_auc": [0.6, 0.6, 0.6]},
    )
    # sample sd of (0.88, 0.90, 0.92) is 0.02
    assert objective_summary(three, ["test_acc", "attack_auc"]) == (
        "acc 0.900±0.020 · AUC 0.600±0.000 · 3 seeds"
    )
    single = objective_summary(
        trial(1, {"test_acc": 0.9, "canary_auc": 0.7}), ["test_acc", "canary_auc"]
    )
    assert single == "acc 0.900 · canary AUC 0.700 · 1 seed"
    # what the runs table shows of a description: its first 50 characters
    assert len(objective_summary(three, ["test_acc", "attack_auc"])) <= 50


def test_trial_description_first_line_is_plain_text() -> None:
    noise = Treatment("noise", 0.46, ("block3", "head"))
    values = {"test_acc": 0.95, "attack_auc": 0.55, "attack_tpr@0.1%fpr": 0.01}
    text = trial_description(trial(7, values, treatment=noise), ["test_acc", "attack_auc"],
                             study_name="qs", parent_link="#/experiments/1/runs/abc")  # fmt: skip
    first, *rest = text.splitlines()
    assert first == "acc 0.950 · AUC 0.550 · 1 seed"
    body = "\n".join(rest)
    assert "On the Pareto front." in body
    assert "**noise** at strength 0.46 on block3, head" in body
    assert "TPR@0.1%FPR 0.0100" in body
    assert "[study run](#/experiments/1/runs/abc)" in body
    failed = trial_description(
        trial(2, {}, state="FAIL", attrs={"fail_reason": "ModelAtChance: accuracy 0.1"}),
        ["test_acc"], study_name="qs",
    )  # fmt: skip
    assert failed.splitlines()[0] == "FAILED: ModelAtChance: accuracy 0.1"
    assert "Pareto front" not in trial_description(  # not known while the study runs
        trial(1, {"test_acc": 0.9}), ["test_acc"], study_name="qs", known_front=False
    )
    undefended = trial_description(
        trial(0, {"test_acc": 0.9}, treatment=Treatment("damp", 0.0)), ["test_acc"],
        study_name="qs",
    )  # fmt: skip
    assert "No PPTP protection; no other defense." in undefended and "damp" not in undefended


def test_study_description_names_the_best_trials_and_links() -> None:
    trials = [
        trial(0, {"test_acc": 0.9, "attack_auc": 0.6}),
        trial(
            1, {"test_acc": 0.8, "attack_auc": 0.5}, treatment=Treatment("noise", 0.5, ("head",))
        ),
        trial(2, {}, state="FAIL", pareto=False),
    ]
    objectives = [Objective("test_acc", "maximize"), Objective("attack_auc", "minimize")]
    text = study_description(
        trials, objectives, study_name="qs",
        links={"pareto": "#/p", "report": "", "localization": "#/l"},
    )  # fmt: skip
    assert text.splitlines()[0] == "3 trials (1 failed), 2 on the Pareto front"
    assert "Study **qs**" in text
    assert "best test_acc (maximize): 0.9000, `t00 undefended`" in text
    assert "best attack_auc (minimize): 0.5000, `t01 noise s=0.50 head`" in text
    assert "(#/p)" in text and "(#/l)" in text and "report page" not in text
