"""defense.strength: one knob in [0, 1] per defense, mapped to the defense's own key, so a study can
tune the baselines as seriously as PPTP (pptp.defenses.resolve_strength)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pptp.config import DefenseConfig, ModelConfig, TrainConfig
from pptp.data import Pool
from pptp.defenses import (
    DEFENSES,
    MAX_NOISE_MULTIPLIER,
    STRENGTH_KNOBS,
    STRONG_WEIGHT_DECAY,
    resolve_strength,
)
from pptp.errors import ConfigError
from pptp.models import build_model
from pptp.train import train

TRAIN = TrainConfig(epochs=10, weight_decay=5.0e-4)


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_has_a_knob_and_null_leaves_the_config_alone(name: str) -> None:
    assert name in STRENGTH_KNOBS  # a new defense must say what its strength means
    cfg = DefenseConfig(name=name)
    assert resolve_strength(cfg, TRAIN) is cfg
    for s in (0.0, 0.5, 1.0):
        resolved = resolve_strength(dataclasses.replace(cfg, strength=s), TRAIN)
        DEFENSES[name](resolved)  # the mapped knob is a value the defense accepts


def test_the_mapping_runs_from_weak_to_strong() -> None:
    def knob(name: str, s: float, field: str) -> float:
        value = getattr(resolve_strength(DefenseConfig(name=name, strength=s), TRAIN), field)
        return float(value)

    assert knob("weight_decay", 0.0, "weight_decay") == TRAIN.weight_decay  # the recipe's own
    assert knob("weight_decay", 1.0, "weight_decay") == pytest.approx(STRONG_WEIGHT_DECAY)
    middle = knob("weight_decay", 0.5, "weight_decay")
    assert middle == pytest.approx((TRAIN.weight_decay * STRONG_WEIGHT_DECAY) ** 0.5)  # log scale
    assert knob("label_smoothing", 0.0, "label_smoothing") == 0.0
    assert knob("label_smoothing", 1.0, "label_smoothing") == 0.5
    assert knob("early_stopping", 0.0, "patience") == TRAIN.epochs  # never stops early
    assert knob("early_stopping", 1.0, "patience") == 1
    assert knob("dpsgd", 1.0, "noise_multiplier") == MAX_NOISE_MULTIPLIER
    assert knob("dpsgd", 0.25, "noise_multiplier") == MAX_NOISE_MULTIPLIER / 4
    assert knob("relaxloss", 0.0, "relaxloss_alpha") == 0.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_strength_outside_zero_one_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"defense\.strength"):
        resolve_strength(DefenseConfig(name="label_smoothing", strength=bad), TRAIN)


def trained(pool: Pool, defense: DefenseConfig) -> dict[str, torch.Tensor]:
    cfg = TrainConfig(epochs=2, batch_size=64, warmup_epochs=1, crop_pad=1, seed=4)
    model = build_model(ModelConfig(name="small_cnn", width=4, norm="group"), pool, seed=cfg.seed)
    train(model, pool, np.flatnonzero(pool.keep(1)[0])[:128], cfg, defense=defense)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_loop_trains_with_the_mapped_knob(digits_pool: Pool) -> None:
    by_strength = trained(digits_pool, DefenseConfig(name="label_smoothing", strength=0.6))
    by_knob = trained(digits_pool, DefenseConfig(name="label_smoothing", label_smoothing=0.3))
    default = trained(digits_pool, DefenseConfig(name="label_smoothing"))  # knob 0.1
    assert all(torch.equal(by_strength[k], by_knob[k]) for k in by_knob)
    assert any(not torch.equal(by_strength[k], default[k]) for k in default)
