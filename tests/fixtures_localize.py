"""Helpers shared by the localisation tests: a tiny digits recipe and hand-made results."""

from __future__ import annotations

import math

from pptp.config import TrialConfig
from pptp.localize import GroupScore, LocalizationResult, recipe_digest

MODELS = {"mlp": 32, "small_cnn": 8}


def tiny_config(model: str, **flat: object) -> TrialConfig:
    """200 members (D1 and D2: 100 each), 200 held-out test images, 4 epochs on the CPU."""
    base = {
        "data.name": "digits",
        "data.pool_size": 400,
        "data.test_size": 200,
        "data.val_size": 0,
        "model.name": model,
        "model.width": MODELS[model],
        "model.norm": "batch",
        "train.epochs": 4,
        "train.batch_size": 32,
        "train.warmup_epochs": 1,
        "train.crop_pad": 1,
        "train.device": "cpu",
    }
    return TrialConfig.from_flat({**base, **flat})


def fake_result(cfg: TrialConfig, risks: dict[str, float]) -> LocalizationResult:
    """A result with the given mean risks (groups in the given order), one seed."""
    groups = tuple(
        GroupScore(
            group=g,
            privacy_risk_mean=r,
            privacy_risk_std=0.01,
            generalization_mean=0.1 * i,
            generalization_std=0.02,
            risk_at_output_mean=r,
            risk_at_output_std=0.01,
            per_seed_privacy_risk=(r,),
            per_seed_generalization=(0.1 * i,),
            per_seed_risk_at_output=(r,),
            distance_d1=(0.2,),
            distance_d2=(0.2 * math.exp(r),),
            distance_held_out=(0.2,),
        )
        for i, (g, r) in enumerate(risks.items())
    )
    return LocalizationResult(
        model=cfg.model.name,
        dataset=cfg.data.name,
        config=cfg.to_flat(),
        recipe_digest=recipe_digest(cfg),
        seeds=(0,),
        groups=groups,
        test_acc_a=(0.9,),
        test_acc_b=(0.8,),
        sizes={"members": 200, "d1": 100, "d2": 100, "held_out": 200},
    )
