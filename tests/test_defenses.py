"""Baseline defenses run in the same loop and do what their names say."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pptp.config import DefenseConfig, ModelConfig, TrainConfig
from pptp.data import Pool
from pptp.defenses import DEFENSES, RelaxLoss
from pptp.errors import ConfigError
from pptp.hooks import TrainContext
from pptp.train import TrainResult, build_model, train

MODEL = ModelConfig(name="small_cnn", width=4, norm="group")  # Opacus needs no BatchNorm
CFG = TrainConfig(epochs=2, batch_size=64, lr=0.05, warmup_epochs=1, crop_pad=1, seed=0)


def run(pool: Pool, defense: DefenseConfig, cfg: TrainConfig = CFG) -> TrainResult:
    model = build_model(MODEL, pool, seed=cfg.seed)
    members = np.flatnonzero(pool.keep(1)[0])[:256]
    return train(model, pool, members, cfg, defense=defense)


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_trains(digits_pool: Pool, name: str) -> None:
    result = run(digits_pool, DefenseConfig(name=name))
    assert 1 <= result.epochs_run <= CFG.epochs
    assert np.isfinite(result.test_acc)


def test_dpsgd_reports_epsilon_that_falls_with_more_noise(digits_pool: Pool) -> None:
    low = run(digits_pool, DefenseConfig(name="dpsgd", noise_multiplier=0.8)).extras["epsilon"]
    high = run(digits_pool, DefenseConfig(name="dpsgd", noise_multiplier=2.0)).extras["epsilon"]
    assert 0 < high < low


def test_dpsgd_refuses_batchnorm(digits_pool: Pool) -> None:
    model = build_model(dataclasses.replace(MODEL, norm="batch"), digits_pool, seed=0)
    with pytest.raises(ConfigError, match=r"model\.norm: group"):
        train(model, digits_pool, np.arange(64), CFG, defense=DefenseConfig(name="dpsgd"))


def test_early_stopping_stops_and_keeps_the_best_epoch(digits_pool: Pool) -> None:
    # lr 0 after the first step never improves validation accuracy: stop after `patience` epochs
    cfg = dataclasses.replace(CFG, epochs=8, lr=1e-9, schedule="constant")
    result = run(digits_pool, DefenseConfig(name="early_stopping", patience=2), cfg)
    assert result.epochs_run == 3
    assert result.extras["best_epoch"] == 1.0


def test_weight_decay_and_label_smoothing_change_training(digits_pool: Pool) -> None:
    plain = run(digits_pool, DefenseConfig()).history[-1].loss
    smooth = run(digits_pool, DefenseConfig(name="label_smoothing", label_smoothing=0.3))
    decayed = run(digits_pool, DefenseConfig(name="weight_decay", weight_decay=0.5))
    assert smooth.history[-1].loss != plain
    assert decayed.history[-1].loss != plain


def test_relaxloss_ascends_below_alpha_on_even_epochs() -> None:
    hooks = RelaxLoss(DefenseConfig(name="relaxloss", relaxloss_alpha=1.0))
    ctx = TrainContext.__new__(TrainContext)
    logits = torch.tensor([[4.0, 0.0], [3.0, 0.0]], requires_grad=True)  # CE ~ 0.03 < alpha
    y = torch.tensor([0, 0])
    ctx.epoch = 2
    loss = hooks.loss(ctx, logits, y)
    loss.backward()
    assert logits.grad is not None and logits.grad[0, 0] > 0  # gradient ascent on the true logit
    ctx.epoch = 1
    logits.grad = None
    hooks.loss(ctx, logits, y).backward()
    assert logits.grad[0, 0] > 0  # flattening also lowers the true-class confidence


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (DefenseConfig(name="weight_decay", weight_decay=-1.0), "defense.weight_decay"),
        (DefenseConfig(name="label_smoothing", label_smoothing=1.0), "defense.label_smoothing"),
        (DefenseConfig(name="early_stopping", patience=0), "defense.patience"),
        (DefenseConfig(name="relaxloss", relaxloss_alpha=0.0), "defense.relaxloss_alpha"),
        (DefenseConfig(name="dpsgd", max_grad_norm=0.0), "defense.max_grad_norm"),
        (DefenseConfig(name="mixup"), "known: dpsgd, early_stopping"),
    ],
)
def test_bad_defense_config(cfg: DefenseConfig, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        DEFENSES[cfg.name](cfg)
