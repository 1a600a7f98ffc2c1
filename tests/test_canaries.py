"""Canaries: attack metrics on the planted canaries alone, beside the population's; the honest
resolution of a few hundred canaries; and a trial on digits that reports both."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pptp.bank import ReferenceBank
from pptp.canaries import CANARY_METRICS, canary_metrics, split_scores
from pptp.config import TrialConfig
from pptp.data import build_pool
from pptp.trial import run_trial, unresolvable_metrics


def test_population_and_canary_metrics_use_disjoint_examples() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    is_member = rng.random(n) < 0.5
    canary = np.zeros(n, bool)
    canary[:100] = True
    # canaries leak perfectly (members score high), the population not at all
    scores = np.where(canary, is_member.astype(float) + 0.01 * rng.random(n), rng.random(n))
    population, canaries = split_scores({"a": scores}, is_member, canary)
    assert canaries["a"].auc == 1.0
    assert abs(population["a"].auc - 0.5) < 0.06
    assert population["a"].fpr_resolution == 1 / int((~is_member[~canary]).sum())
    assert canaries["a"].fpr_resolution == 1 / int((~is_member[canary]).sum())
    assert split_scores({"a": scores}, is_member, None)[1] == {}


def test_canary_metrics_are_two_sided_and_say_what_they_resolve() -> None:
    rng = np.random.default_rng(1)
    # 80 canaries (40 of them non-members), then 40 population examples
    is_member = np.r_[np.ones(40, bool), np.zeros(40, bool), np.ones(20, bool), np.zeros(20, bool)]
    canary = np.r_[np.ones(80, bool), np.zeros(40, bool)]
    inverted = -(is_member + 0.1 * rng.random(120))  # members score LOWER: inverted scores
    _, canaries = split_scores({"relax": inverted}, is_member, canary)
    out = canary_metrics(canaries, 80)
    assert canaries["relax"].auc == 0.0 and out["canary_auc"] == 1.0  # the flip counts
    assert out["canary_auc/relax"] == 0.0  # per attack: one-sided
    assert out["canary_fpr_resolution"] == 1 / 40
    assert math.isnan(out["canary_tpr@1%fpr"])  # 1% < 1/40: not resolved
    assert out["canary_tpr@5%fpr"] == 1.0  # 5% >= 1/40: resolved, and perfect when flipped
    assert out["canary_count"] == 80
    assert set(CANARY_METRICS) <= set(out)
    assert canary_metrics({}, 0) == {}


def test_unresolvable_canary_metrics_are_named_before_anything_runs() -> None:
    cfg = TrialConfig.from_flat({"data.canaries": 60})
    problems = unresolvable_metrics(cfg, ["canary_tpr@1%fpr", "canary_tpr@5%fpr", "canary_auc"])
    assert set(problems) == {"canary_tpr@1%fpr"}  # ~30 non-member canaries: 1/30 > 1%
    assert "200 canaries" in problems["canary_tpr@1%fpr"]
    none = unresolvable_metrics(TrialConfig(), ["canary_auc"])
    assert "needs canaries" in none["canary_auc"]


def test_a_trial_with_canaries_reports_both(tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat(
        {
            "data.pool_size": 300,
            "data.test_size": 200,
            "data.val_size": 0,
            "data.canaries": 60,
            "model.name": "mlp",
            "model.width": 64,
            "model.norm": "none",
            "train.epochs": 15,
            "train.batch_size": 16,
            "train.lr": 0.1,
            "train.augment": False,
            "train.warmup_epochs": 0,
            "attack.attacks": ["loss", "lira_fixed_variance"],
            "attack.n_references": 2,
            "attack.bank_dir": str(tmp_path),
        }
    )
    result = run_trial(cfg, bank=ReferenceBank(str(tmp_path)))
    metrics = result.metrics()
    assert result.n_canaries == 60 and metrics["canary_count"] == 60
    assert 0.0 <= metrics["canary_auc"] <= 1.0 and metrics["canary_auc"] >= 0.5
    # the population metrics leave the canaries out: 240 population examples, ~120 non-members
    assert 1 / 140 < metrics["fpr_resolution"] < 1 / 100
    assert 1 / 45 < metrics["canary_fpr_resolution"] < 1 / 15
    # the one-run audit: a bound (0 when nothing is detected) and how it was made
    assert metrics["eps_lb"] >= 0.0 and result.audit is not None and result.audit.m == 60
    assert result.tags()["eps_lb"].startswith("eps_lb ")
    # who leaks: the population's most exposed members, with digits thumbnails (8x8)
    assert result.exposure is not None and len(result.exposure.records) == 32
    exposed = [r.pool_index for r in result.exposure.records]
    pool = build_pool(cfg.data)
    assert pool.canary is not None and not pool.canary[exposed].any()
    assert pool.keep(1)[0][exposed].all()
    assert result.exposure.thumbnails is not None
    assert result.exposure.thumbnails.shape[1:] == (1, 8, 8)


def test_a_space_may_optimise_a_canary_metric_only_with_canaries(tmp_path: Path) -> None:
    from search.space import SpaceError, load_space

    def space(canaries: int, objective: str) -> Path:
        path = tmp_path / f"c{canaries}-{objective.replace('@', '').replace('%', '')}.yaml"
        path.write_text(
            f"study: {{name: c, objectives: {{test_acc: max, '{objective}': min}}}}\n"
            f"fixed: {{data.canaries: {canaries}}}\n"
        )
        return path

    assert load_space(space(200, "canary_auc")).study.metrics == ["test_acc", "canary_auc"]
    with pytest.raises(SpaceError, match="unknown metric 'canary_auc'"):
        load_space(space(0, "canary_auc"))
    with pytest.raises(SpaceError, match="canary_tpr@1%fpr cannot be resolved"):
        load_space(space(60, "canary_tpr@1%fpr"))
