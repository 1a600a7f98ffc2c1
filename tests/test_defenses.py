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
from pptp.models import build_model
from pptp.train import TrainResult, train

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
    low = run(digits_pool, DefenseConfig(name="dpsgd", noise_multiplier=0.8))
    high = run(digits_pool, DefenseConfig(name="dpsgd", noise_multiplier=2.0))
    assert 0 < high.extras["epsilon"] < low.extras["epsilon"]
    assert low.extras["dp_steps"] == CFG.epochs * 4  # 256 members, batch 64: every step counted


def test_dpsgd_without_noise_or_clipping_is_plain_training(digits_pool: Pool) -> None:
    # Opacus' invariant: no noise and no clipping equals vanilla training. Regression: with
    # channels_last activations Opacus' conv per-sample gradients were zeros, so every conv but
    # the first trained on noise alone; the loop now trains DP-SGD in NCHW.
    cfg = dataclasses.replace(CFG, momentum=0.0)
    open_dp = DefenseConfig(name="dpsgd", noise_multiplier=0.0, max_grad_norm=1e6)
    members = np.flatnonzero(digits_pool.keep(1)[0])[:256]
    models = []
    for defense in (DefenseConfig(), open_dp):
        model = build_model(MODEL, digits_pool, seed=cfg.seed)
        train(model, digits_pool, members, cfg, defense=defense)
        models.append(model.state_dict())
    plain, private = models
    for key in plain:
        assert torch.allclose(plain[key], private[key], atol=1e-5), key


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


def test_early_stopping_ends_with_the_best_epochs_weights(digits_pool: Pool) -> None:
    cfg = dataclasses.replace(CFG, epochs=6, lr=0.3)
    model = build_model(MODEL, digits_pool, seed=cfg.seed)
    after: dict[int, dict[str, torch.Tensor]] = {}
    members = np.flatnonzero(digits_pool.keep(1)[0])[:256]
    result = train(
        model,
        digits_pool,
        members,
        cfg,
        defense=DefenseConfig(name="early_stopping", patience=2),
        on_epoch=lambda log: after.__setitem__(
            log.epoch, {k: v.detach().clone() for k, v in model.state_dict().items()}
        ),
    )
    best = int(result.extras["best_epoch"])
    vals = [log.val_acc for log in result.history]
    assert vals[best - 1] == max(v for v in vals if v is not None)
    final = model.state_dict()
    assert all(torch.equal(final[k], after[best][k]) for k in final)


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
        (DefenseConfig(name="relaxloss", relaxloss_alpha=-0.5), "defense.relaxloss_alpha"),
        (DefenseConfig(name="dpsgd", max_grad_norm=0.0), "defense.max_grad_norm"),
        (DefenseConfig(name="mixup"), "known: dpsgd, early_stopping"),
    ],
)
def test_bad_defense_config(cfg: DefenseConfig, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        DEFENSES[cfg.name](cfg)
