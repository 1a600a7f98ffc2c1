"""A broken DP claim is caught: a DP-SGD whose noise is switched off while its accountant still
counts the configured noise claims a small epsilon that the canary audit (pptp/audit.py)
contradicts; a correctly noised DP-SGD trial is not flagged."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from pptp.audit import claim_check, contradicts
from pptp.bank import ReferenceBank
from pptp.config import TrialConfig
from pptp.defenses import DPSGD
from pptp.hooks import TrainContext
from pptp.trial import run_trial


def _config(tmp_path: Path, noise_multiplier: float) -> TrialConfig:
    """Digits, 300-example pool with 100 out-of-distribution canaries, an MLP, 8 epochs of
    DP-SGD, the loss attack (no reference models): a few seconds on one core."""
    return TrialConfig.from_flat(
        {
            "data.pool_size": 300,
            "data.test_size": 300,
            "data.val_size": 0,
            "data.canaries": 100,
            "data.canary_kind": "ood",
            "model.name": "mlp",
            "model.width": 128,
            "model.norm": "none",
            "train.epochs": 8,
            "train.batch_size": 32,
            "train.lr": 2.0,
            "train.momentum": 0.0,
            "train.weight_decay": 0.0,
            "train.augment": False,
            "train.warmup_epochs": 0,
            "train.device": "cpu",
            "defense.name": "dpsgd",
            "defense.noise_multiplier": noise_multiplier,
            "attack.attacks": ["loss"],
            "attack.bank_dir": str(tmp_path),
        }
    )


def _switch_the_noise_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug under test: Opacus adds no noise, while the accountant's step hook still counts
    every step at the configured noise multiplier."""
    original = DPSGD.wrap_optimizer

    def noiseless(self: DPSGD, ctx: TrainContext, optimizer: Any) -> torch.optim.Optimizer:
        private = original(self, ctx, optimizer)
        claimed = private.noise_multiplier
        rate = 1 / math.ceil(ctx.n_members / ctx.cfg.batch_size)  # Opacus' sample rate
        private.noise_multiplier = 0.0
        private.attach_step_hook(
            lambda _: self.engine.accountant.step(noise_multiplier=claimed, sample_rate=rate)
        )
        return private  # type: ignore[no-any-return]

    monkeypatch.setattr(DPSGD, "wrap_optimizer", noiseless)


def test_claims_below_the_bound_are_contradicted() -> None:
    assert contradicts(0.83, 0.22) and not contradicts(0.2, 0.22)
    assert not contradicts(5.0, math.inf)  # no noise, honestly accounted: no claim
    assert not contradicts(0.0, None)


@pytest.mark.slow
def test_noise_switched_off_is_flagged_and_honest_noise_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with monkeypatch.context() as patch:
        _switch_the_noise_off(patch)
        broken = run_trial(_config(tmp_path, 20.0), bank=ReferenceBank(tmp_path))
    assert broken.epsilon is not None and broken.epsilon < 0.5  # what the accountant claims
    assert broken.audit is not None and broken.audit.eps_lb > 2 * broken.epsilon
    assert broken.metrics()["dp_contradicted"] == 1.0
    assert broken.tags()["dp_claim"].startswith(
        "contradicted: the audit contradicts the claimed epsilon: eps_lb"
    )
    assert "the audit contradicts the claimed epsilon" in caplog.text

    caplog.clear()
    honest = run_trial(_config(tmp_path, 1.0), bank=ReferenceBank(tmp_path))
    assert honest.epsilon is not None and honest.audit is not None
    assert honest.audit.eps_lb <= honest.epsilon
    assert honest.metrics()["dp_contradicted"] == 0.0
    assert honest.tags()["dp_claim"] == claim_check(honest.audit, honest.epsilon)
    assert honest.tags()["dp_claim"].startswith("consistent:")
    assert "contradicts" not in caplog.text
