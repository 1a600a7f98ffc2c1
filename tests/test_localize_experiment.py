"""pptp.localize.experiment on the bundled digits: every group scored, finite, deterministic
under a seed; bad input is a clear error. Tiny recipes (200 members, a few epochs): the point is
the contract, not the figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fixtures_localize import MODELS, tiny_config

from pptp.config import TrialConfig
from pptp.data import build_pool
from pptp.errors import ConfigError
from pptp.layers import layer_groups
from pptp.localize import LocalizationResult, localize, log_ratio, split_members
from pptp.models import build_model


@pytest.fixture(scope="module", params=sorted(MODELS))
def two_seeds(request: pytest.FixtureRequest) -> tuple[TrialConfig, LocalizationResult]:
    cfg = tiny_config(request.param)
    return cfg, localize(cfg, seeds=(0, 1))


def test_every_group_scored_and_finite(two_seeds: tuple[TrialConfig, LocalizationResult]) -> None:
    cfg, result = two_seeds
    pool = build_pool(cfg.data)
    names = [g.name for g in layer_groups(build_model(cfg.model, pool, seed=0))]
    assert [g.group for g in result.groups] == names
    assert result.seeds == (0, 1)
    assert result.sizes["members"] == 200 and result.sizes["d1"] == result.sizes["d2"] == 100
    for g in result.groups:
        per_seed = (g.per_seed_privacy_risk, g.per_seed_generalization, g.per_seed_risk_at_output)
        values = [v for seq in per_seed for v in seq]
        values += [*g.distance_d1, *g.distance_d2, *g.distance_held_out]
        assert len(g.per_seed_privacy_risk) == 2
        assert all(math.isfinite(v) for v in values), g
        assert all(0.0 <= d <= 1.0 for d in (*g.distance_d1, *g.distance_d2))
        assert -1.0 <= min(g.per_seed_generalization) <= max(g.per_seed_generalization) <= 1.0
        # mean and sample std over seeds
        assert g.privacy_risk_mean == pytest.approx(np.mean(g.per_seed_privacy_risk))
        assert g.privacy_risk_std == pytest.approx(np.std(g.per_seed_privacy_risk, ddof=1))
        assert g.generalization_std == pytest.approx(np.std(g.per_seed_generalization, ddof=1))
        # the risk is the log-ratio of the distances it reports
        assert g.per_seed_privacy_risk[0] == pytest.approx(
            log_ratio(g.distance_d1[0], g.distance_d2[0], g.distance_held_out[0])
        )
    assert all(0.0 <= a <= 1.0 for a in (*result.test_acc_a, *result.test_acc_b))
    ranked = result.ranked()
    assert [r.privacy_risk_mean for r in ranked] == sorted(
        (g.privacy_risk_mean for g in result.groups), reverse=True
    )
    assert result.rank(ranked[0].group) == 1 and len(result.ranked(2)) == 2


def test_deterministic_under_a_seed(two_seeds: tuple[TrialConfig, LocalizationResult]) -> None:
    """Seed 1 alone gives exactly what seed 1 gave next to seed 0."""
    cfg, result = two_seeds
    again = localize(cfg, seeds=(1,))
    for g, h in zip(result.groups, again.groups, strict=True):
        assert h.per_seed_privacy_risk == (g.per_seed_privacy_risk[1],)
        assert h.per_seed_generalization == (g.per_seed_generalization[1],)
        assert h.distance_d2 == (g.distance_d2[1],)
        assert h.privacy_risk_std == 0.0
    assert again.test_acc_a == (result.test_acc_a[1],)


def test_member_set_too_small_to_halve_is_an_error() -> None:
    cfg = tiny_config("mlp", **{"data.pool_size": 6})  # 3 members
    with pytest.raises(ConfigError, match=r"3 examples.*at least 4"):
        localize(cfg, seeds=(0,))
    with pytest.raises(ConfigError, match="at least 4"):
        split_members(np.arange(3), 0)


def test_bad_seeds_are_errors() -> None:
    cfg = tiny_config("mlp")
    with pytest.raises(ConfigError, match="at least one seed"):
        localize(cfg, seeds=())
    with pytest.raises(ConfigError, match="repeat"):
        localize(cfg, seeds=(1, 1))


def test_split_members_halves_and_covers() -> None:
    members = np.arange(10, 31)
    d1, d2 = split_members(members, 3)
    assert len(d1) == 10 and len(d2) == 11
    assert sorted([*d1, *d2]) == list(members)
    assert np.array_equal(d1, split_members(members, 3)[0])
    assert not np.array_equal(d1, split_members(members, 4)[0])
