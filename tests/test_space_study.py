"""search.space.study: objective directions, constraint values (Optuna's sign convention), metric
names, and the section written back as data."""

from __future__ import annotations

import math

import pytest

from pptp.config import TrialConfig
from search.space import (
    DEFAULT_OBJECTIVES,
    INFEASIBLE,
    METRIC_NAMES,
    Constraint,
    Objective,
    Resources,
    StudySpec,
    direction_sign,
    known_metrics,
)


def test_direction_sign_and_objective() -> None:
    assert direction_sign("maximize") == 1.0 and direction_sign("minimize") == -1.0
    acc, auc = DEFAULT_OBJECTIVES
    assert (acc.sign, acc.mode, auc.sign, auc.mode) == (1.0, "max", -1.0, "min")
    values = [0.7, 0.5, 0.9]
    assert sorted(values, key=lambda v: -auc.sign * v) == [0.5, 0.7, 0.9]  # best first
    with pytest.raises(ValueError, match="maximize or minimize"):
        direction_sign("max")


def test_to_data_is_what_a_space_file_writes() -> None:
    spec = StudySpec(
        name="s",
        objectives=(Objective("test_acc", "maximize"),),
        resources=Resources(cpus=2.0, gpus=0.5),
        constraints=(Constraint("epsilon", max=8.0),),
        enqueue=({"protect.split": 1},),
    )
    data = spec.to_data()
    assert data["objectives"] == {"test_acc": "maximize"}
    assert data["resources"] == {"cpus": 2.0, "gpus": 0.5}
    assert data["constraints"] == [{"metric": "epsilon", "max": 8.0}]
    assert "localization" not in data
    assert StudySpec(name="s", localization={"run": "x"}).to_data()["localization"] == {"run": "x"}


def test_known_metrics_follow_the_attacks() -> None:
    cfg = TrialConfig.from_flat({"attack.attacks": ["loss", "rmia_online"]})
    metrics = known_metrics(cfg)
    assert set(METRIC_NAMES) <= metrics
    assert {"auc/loss", "tpr@0.1%fpr/rmia_online", "tpr@1%fpr/loss"} <= metrics
    assert "auc/lira_offline" not in metrics


@pytest.mark.parametrize(
    ("constraint", "value", "expected"),
    [
        (Constraint("test_acc", min=0.9), 0.95, -0.05),
        (Constraint("test_acc", min=0.9), 0.85, 0.05),
        (Constraint("epsilon", max=8.0), 10.0, 2.0),
        (Constraint("epsilon", max=8.0), 2.0, -6.0),
        (Constraint("auc/loss", min=0.4, max=0.6), 0.5, -0.1),
        (Constraint("auc/loss", min=0.4, max=0.6), 0.7, 0.1),
        (Constraint("auc/loss", min=0.4, max=0.6), 0.3, 0.1),
        (Constraint("test_acc", min=0.9), math.nan, INFEASIBLE),
    ],
)
def test_constraint_value(constraint: Constraint, value: float, expected: float) -> None:
    assert constraint.value({constraint.metric: value}) == pytest.approx(expected)


def test_constraint_missing_metric_is_infeasible() -> None:
    c = Constraint("epsilon", max=8.0)
    assert c.value({"test_acc": 0.9}) == INFEASIBLE > 0
    assert c.name == "epsilon<=8"
    assert Constraint("test_acc", min=0.5, max=0.9).name == "test_acc>=0.5,test_acc<=0.9"


def test_known_metrics_of_the_default_attack_set() -> None:
    """attack.attacks: null runs the default set for attack.n_references (pptp.attacks)."""
    from pptp.attacks import default_attacks

    for k in (0, 4, 16):
        cfg = TrialConfig.from_flat({"attack.attacks": None, "attack.n_references": k})
        expected = {f"auc/{a}" for a in default_attacks(k)}
        assert {m for m in known_metrics(cfg) if m.startswith("auc/")} == expected

