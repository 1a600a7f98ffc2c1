"""study.repeats: means for the sampler, sample spreads and per-seed values beside; the Pareto
table shows the spread."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fixtures_trials import trial

from pptp.treatment import Treatment
from search.running.repeats import aggregate, repeat_seeds, spread_metrics
from search.space import Objective, SpaceError, load_space
from search.study.pareto import format_front

OBJECTIVES = [Objective("test_acc", "maximize"), Objective("attack_auc", "minimize")]


def test_one_seed_is_reported_as_it_is() -> None:
    metrics, per_seed = aggregate([{"test_acc": 0.9, "attack_auc": 0.6}])
    assert metrics == {"test_acc": 0.9, "attack_auc": 0.6} and per_seed == {}


def test_several_seeds_give_mean_sample_sd_and_per_seed_values() -> None:
    seeds = [
        {"test_acc": 0.80, "attack_auc": 0.70, "auc/loss": 0.6, "canary_auc": 0.9},
        {"test_acc": 0.84, "attack_auc": 0.74, "auc/loss": 0.7, "canary_auc": 0.8},
        {"test_acc": 0.82, "attack_auc": math.nan, "auc/loss": 0.5},
    ]
    metrics, per_seed = aggregate(seeds, wanted=["auc/loss"])
    assert metrics["test_acc"] == pytest.approx(0.82)
    assert metrics["test_acc_sd"] == pytest.approx(0.02)  # n - 1: sqrt((4 + 0 + 4) e-4 / 2)
    assert math.isnan(metrics["attack_auc"]) and math.isnan(metrics["attack_auc_sd"])
    assert metrics["auc/loss_sd"] == pytest.approx(0.1)  # wanted (an objective or constraint)
    assert "canary_auc" not in metrics  # not measured on every seed
    assert per_seed["test_acc"] == [0.80, 0.84, 0.82]
    assert set(per_seed) == {"test_acc", "attack_auc", "auc/loss"}


def test_spread_metrics_and_seeds() -> None:
    names = ["test_acc", "auc/loss", "canary_tpr@5%fpr", "seconds/train", "epsilon"]
    assert spread_metrics(names, []) == ["test_acc", "canary_tpr@5%fpr", "epsilon"]
    assert repeat_seeds(3, 3) == [3, 4, 5]
    with pytest.raises(ValueError):
        repeat_seeds(0, 0)


def test_pareto_table_shows_the_spread_next_to_each_objective() -> None:
    rows = [
        trial(1, {"test_acc": 0.831, "test_acc_sd": 0.004, "attack_auc": 0.735,
                  "attack_auc_sd": 0.0125}),
        trial(2, {"test_acc": 0.9, "attack_auc": 0.8},
              treatment=Treatment("noise", 0.5, ("head",))),
        trial(3, {"test_acc": 0.5, "attack_auc": 0.9}, pareto=False),
    ]  # fmt: skip
    table = format_front(rows, OBJECTIVES)
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, the two front rows
    assert lines[2].split()[0] == "2"  # best accuracy first
    assert "0.8310 ± 0.0040" in lines[3] and "0.7350 ± 0.0125" in lines[3]
    assert "±" not in lines[2]


def test_repeats_is_a_study_key(tmp_path: Path) -> None:
    text = "study: {name: s, repeats: %s}\nfixed: {data.name: digits}\n"
    good = tmp_path / "good.yaml"
    good.write_text(text % 3)
    assert load_space(good).study.repeats == 3
    assert load_space(good).resolved()["study"]["repeats"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(text % 0)
    with pytest.raises(SpaceError, match=r"study\.repeats"):
        load_space(bad)
