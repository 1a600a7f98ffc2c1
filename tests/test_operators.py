"""Protection operators: strength 0 is plain training bit for bit; free parameters are untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pptp.config import ModelConfig, ProtectConfig, TrainConfig
from pptp.data import Pool
from pptp.errors import ConfigError
from pptp.layers import Selection, partition
from pptp.operators import OPERATORS, build_operator
from pptp.train import build_model, train

MODEL = ModelConfig(name="small_cnn", width=4, norm="group")
SELECTION = {"split": 2, "direction": "prefix"}  # block1, block2 protected


def recipe(**changes: object) -> TrainConfig:
    base = TrainConfig(epochs=2, batch_size=64, lr=0.05, warmup_epochs=1, crop_pad=1, seed=3)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def members(pool: Pool, n: int = 128) -> np.ndarray:
    return np.flatnonzero(pool.keep(1)[0])[:n]


def trained(
    pool: Pool, cfg: TrainConfig, protect: ProtectConfig | None = None, n: int = 128
) -> dict[str, torch.Tensor]:
    model = build_model(MODEL, pool, seed=cfg.seed)
    train(model, pool, members(pool, n), cfg, protect=protect)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def protected_names(pool: Pool) -> set[str]:
    model = build_model(MODEL, pool, seed=0)
    return set(partition(model, Selection.from_config(**SELECTION)).protected)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_strength_zero_is_plain_training_bit_for_bit(digits_pool: Pool, name: str) -> None:
    cfg = recipe()
    plain = trained(digits_pool, cfg)
    zero = trained(digits_pool, cfg, ProtectConfig(operator=name, strength=0.0, **SELECTION))
    assert plain.keys() == zero.keys()
    for key in plain:
        assert torch.equal(plain[key], zero[key]), key


@pytest.mark.parametrize("name", sorted(set(OPERATORS) - {"none"}))
def test_positive_strength_changes_the_protected_groups(digits_pool: Pool, name: str) -> None:
    cfg = recipe(epochs=3)
    plain = trained(digits_pool, cfg)
    protected = trained(digits_pool, cfg, ProtectConfig(operator=name, strength=0.8, **SELECTION))
    changed = [k for k in protected_names(digits_pool) if not torch.equal(plain[k], protected[k])]
    assert changed, f"operator {name} at strength 0.8 changed no protected parameter"


# Each operator first acts at a known step; run until exactly that step so that the state before
# it is identical to plain training's. At that step the free parameters must get plain training's
# update exactly, while the protected ones differ.
FIRST_ACTIVE_STEP = {
    "noise": recipe(epochs=1, warmup_epochs=0, batch_size=128),  # acts from the first step
    "damp": recipe(epochs=2, warmup_epochs=1, batch_size=128),  # first step after warm-up
    # anchor's pull is 0 at the warm-up weights: it first acts at the second step after warm-up
    "anchor": recipe(epochs=2, warmup_epochs=1, batch_size=64),
}


@pytest.mark.parametrize("name", sorted(FIRST_ACTIVE_STEP))
def test_free_parameters_get_plain_training_updates(digits_pool: Pool, name: str) -> None:
    cfg = FIRST_ACTIVE_STEP[name]
    plain = trained(digits_pool, cfg)
    op = trained(digits_pool, cfg, ProtectConfig(operator=name, strength=0.7, **SELECTION))
    protected = protected_names(digits_pool)
    params = {n for n, _ in build_model(MODEL, digits_pool, seed=0).named_parameters()}
    for key in params - protected:
        assert torch.equal(plain[key], op[key]), f"{name} changed free parameter {key}"
    assert any(not torch.equal(plain[k], op[k]) for k in protected)


def test_rewind_resets_protected_groups_and_leaves_the_main_phase_alone(digits_pool: Pool) -> None:
    # constant schedule: the first epoch of a 3-epoch run equals a 1-epoch run
    cfg = recipe(epochs=3, warmup_epochs=1, schedule="constant")
    protect = ProtectConfig(operator="rewind", strength=1.0, finetune_epochs=0, **SELECTION)
    rewound = trained(digits_pool, cfg, protect)
    plain_full = trained(digits_pool, cfg)
    plain_warmup = trained(digits_pool, dataclasses.replace(cfg, epochs=1))
    protected = protected_names(digits_pool)
    for key in protected:
        assert torch.equal(rewound[key], plain_warmup[key]), key
    params = {n for n, _ in build_model(MODEL, digits_pool, seed=0).named_parameters()}
    for key in params - protected:
        assert torch.equal(rewound[key], plain_full[key]), key

    finetuned = trained(digits_pool, cfg, dataclasses.replace(protect, finetune_epochs=1))
    for key in protected:  # frozen while the free groups are fine-tuned
        assert torch.equal(finetuned[key], plain_warmup[key]), key
    assert any(not torch.equal(finetuned[k], plain_full[k]) for k in params - protected)


def test_feature_noise_only_in_training_and_hooks_removed(digits_pool: Pool) -> None:
    cfg = recipe()
    model = build_model(MODEL, digits_pool, seed=0)
    protect = ProtectConfig(operator="feature_noise", strength=1.0, **SELECTION)
    train(model, digits_pool, members(digits_pool), cfg, protect=protect)
    assert all(not m._forward_hooks for m in model.modules())
    x = digits_pool.x[:16]
    model.eval()
    assert torch.equal(model(x), model(x))


def test_noise_refuses_batchnorm(digits_pool: Pool) -> None:
    model = build_model(dataclasses.replace(MODEL, norm="batch"), digits_pool, seed=0)
    protect = ProtectConfig(operator="noise", strength=0.5, **SELECTION)
    with pytest.raises(ConfigError, match=r"model\.norm: group"):
        train(model, digits_pool, members(digits_pool), recipe(epochs=1), protect=protect)


def test_noise_per_example_gradients_are_clipped(digits_pool: Pool) -> None:
    # with a tiny clip norm and no noise the protected update is bounded by lr * clip
    cfg = recipe(
        epochs=1,
        warmup_epochs=0,
        batch_size=128,
        momentum=0.0,
        weight_decay=0.0,
        schedule="constant",
        augment=False,
    )
    protect = ProtectConfig(operator="noise", strength=1e-9, clip_norm=1e-3, **SELECTION)
    model = build_model(MODEL, digits_pool, seed=cfg.seed)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    train(model, digits_pool, members(digits_pool), cfg, protect=protect)
    protected = protected_names(digits_pool)
    step = torch.sqrt(
        sum(((p - before[n]) ** 2).sum() for n, p in model.named_parameters() if n in protected)
    )
    assert 0 < step.item() <= cfg.lr * 1e-3 * 1.01


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_strength_outside_unit_interval_is_an_error(strength: float) -> None:
    with pytest.raises(ConfigError, match=r"protect.strength"):
        build_operator(ProtectConfig(operator="damp", strength=strength))


def test_unknown_operator_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: anchor, damp, feature_noise, noise, none"):
        build_operator(ProtectConfig(operator="blur", strength=0.5))
