"""The study's progress lines: a trial named by what it tries, a seed spread easy to read."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from search.running.progress import Progress
from search.running.samplers import TRIAL_NUMBER
from search.space import Objective, load_space
from search.study.naming import planned_name


def _trial(config: dict[str, Any]) -> Any:
    return SimpleNamespace(config=config)


def test_a_baseline_trial_is_named_by_its_defense_not_the_keys_it_ignores(
    capsys: pytest.CaptureFixture[str],
) -> None:
    space = load_space("spaces/fashion.yaml")
    sampled = {
        "defense.name": "weight_decay",
        "defense.strength": 0.5,
        "defense.max_grad_norm": 1.958,
        "protect.operator": "anchor",  # drawn, but study.combine: false drops it for a baseline
        "protect.strength": 0.5289,
        "protect.split": 3,
        "protect.direction": "prefix",
    }
    progress = Progress(
        total=36,
        objectives=space.study.objectives,
        describe=lambda n, params: planned_name(n, space.trial_config(params), space),
    )
    progress.on_trial_start(0, [], _trial({**sampled, TRIAL_NUMBER: 1}))
    line = capsys.readouterr().out
    assert "trial 1 started: t01 baseline weight_decay strength=0.50" in line
    assert "anchor" not in line and "max_grad_norm" not in line


def test_without_a_description_the_sampled_parameters_are_shown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = Progress(total=2, objectives=[Objective("test_acc", "maximize")])
    progress.on_trial_start(0, [], _trial({"protect.operator": "damp", TRIAL_NUMBER: 0}))
    assert "trial 0 started: operator=damp" in capsys.readouterr().out


def test_a_seed_spread_has_two_significant_digits(capsys: pytest.CaptureFixture[str]) -> None:
    objectives = [Objective("test_acc", "maximize"), Objective("attack_auc", "minimize")]
    progress = Progress(total=36, objectives=objectives)
    result = {
        "test_acc": 0.8345,
        "test_acc_sd": 0.009899,
        "attack_auc": 0.77,
        "attack_auc_sd": 0.0161,
        "seconds": 212.0,
    }
    progress.on_trial_result(0, [], _trial({TRIAL_NUMBER: 2}), result)
    line = capsys.readouterr().out
    assert "test_acc 0.8345 ± 0.0099, attack_auc 0.7700 ± 0.016, 212s" in line  # as the table


def test_a_broken_dp_claim_gets_its_own_line(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(total=4, objectives=[Objective("test_acc", "maximize")])
    base = {"test_acc": 0.67, "eps_lb": 0.83, "epsilon": 0.22, "seconds": 4.0}
    progress.on_trial_result(0, [], _trial({TRIAL_NUMBER: 3}), {**base, "dp_contradicted": 1.0})
    progress.on_trial_result(0, [], _trial({TRIAL_NUMBER: 4}), {**base, "dp_contradicted": 0.0})
    out = capsys.readouterr().out
    assert "trial 3: the audit contradicts the claimed epsilon: eps_lb 0.83 > epsilon 0.22" in out
    assert "trial 4:" not in out
