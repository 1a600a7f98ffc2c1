"""The one training loop: determinism, logs, results, the recipe's bad input."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from pptp.config import DefenseConfig, ModelConfig, ProtectConfig, TrainConfig
from pptp.data import Pool
from pptp.errors import ConfigError
from pptp.models import build_model
from pptp.train import EpochLog, TrainingDiverged, train

MODEL = ModelConfig(name="small_cnn", width=8, norm="batch")
CFG = TrainConfig(epochs=3, batch_size=64, lr=0.05, warmup_epochs=1, crop_pad=1, seed=1)


def members(pool: Pool, n: int = 256) -> np.ndarray:
    return np.flatnonzero(pool.keep(1)[0])[:n]


def run(pool: Pool, cfg: TrainConfig = CFG, **kwargs: object) -> tuple[torch.nn.Module, object]:
    model = build_model(MODEL, pool, seed=cfg.seed)
    return model, train(model, pool, members(pool), cfg, **kwargs)  # type: ignore[arg-type]


def test_same_seed_same_weights_other_seed_other_weights(digits_pool: Pool) -> None:
    a, _ = run(digits_pool)
    b, _ = run(digits_pool)
    c, _ = run(digits_pool, dataclasses.replace(CFG, seed=2))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_result_history_and_one_log_line_per_epoch(
    digits_pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[EpochLog] = []
    with caplog.at_level(logging.INFO, logger="pptp.train"):
        _, result = run(digits_pool, on_epoch=seen.append)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch")]
    assert len(lines) == CFG.epochs
    assert all(k in lines[0] for k in ("loss", "train_acc", "test_acc"))
    assert result.epochs_run == CFG.epochs == len(result.history)  # type: ignore[attr-defined]
    assert list(result.history) == seen  # type: ignore[attr-defined]
    assert result.images_per_second > 0  # type: ignore[attr-defined]
    assert result.history[-1].lr < CFG.lr  # cosine schedule decays  # type: ignore[attr-defined]


def test_training_learns_digits(digits_pool: Pool) -> None:
    cfg = dataclasses.replace(CFG, epochs=10, lr=0.1)
    model = build_model(MODEL, digits_pool, seed=0)
    result = train(model, digits_pool, members(digits_pool, 600), cfg)
    assert result.test_acc > 0.8, result.test_acc


def test_partition_is_reported(digits_pool: Pool) -> None:
    _, result = run(
        digits_pool,
        dataclasses.replace(CFG, epochs=1),
        protect=ProtectConfig(operator="damp", strength=0.5, split=2, direction="suffix"),
    )
    assert result.protected_groups == ("block4", "head")  # type: ignore[attr-defined]
    assert result.mask == {  # type: ignore[attr-defined]
        "block1": False,
        "block2": False,
        "block3": False,
        "block4": True,
        "head": True,
    }


def test_divergence_is_an_error(digits_pool: Pool) -> None:
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        run(digits_pool, dataclasses.replace(CFG, lr=1e12, epochs=1, momentum=0.0))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"epochs": 0}, "train.epochs"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"lr": -1.0}, "train.lr"),
        ({"warmup_epochs": 9}, "train.warmup_epochs"),
        ({"schedule": "step"}, "train.schedule"),
        ({"device": "tpu"}, "train.device"),
    ],
)
def test_bad_recipe_names_the_key(digits_pool: Pool, change: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        run(digits_pool, dataclasses.replace(CFG, **change))  # type: ignore[arg-type]


def test_epoch_logs_carry_their_phase(digits_pool: Pool) -> None:
    _, result = run(digits_pool, dataclasses.replace(CFG, epochs=2))
    assert [log.phase for log in result.history] == ["train", "train"]  # type: ignore[attr-defined]


def test_stopping_during_warmup_makes_the_end_weights_the_warmup_weights(
    digits_pool: Pool,
) -> None:
    # early stopping ends training at epoch 2, before the 3-epoch warm-up is over: the operators
    # never acted, and rewind (which goes back toward the warm-up weights) changes nothing
    model_cfg = ModelConfig(name="small_cnn", width=4, norm="group")
    cfg = dataclasses.replace(CFG, epochs=6, warmup_epochs=3, lr=1e-9, schedule="constant")
    guard = DefenseConfig(name="early_stopping", patience=1)
    finals = []
    for protect in (
        ProtectConfig(),
        ProtectConfig(operator="rewind", strength=1.0, split=2, direction="prefix"),
    ):
        model = build_model(model_cfg, digits_pool, seed=cfg.seed)
        result = train(
            model, digits_pool, members(digits_pool), cfg, protect=protect, defense=guard
        )
        assert [log.phase for log in result.history][:2] == ["train", "train"]
        finals.append(model.state_dict())
    plain, rewound = finals
    protected = [k for k in plain if k.startswith(("block1.", "block2."))]
    assert protected and all(torch.equal(plain[k], rewound[k]) for k in protected)
