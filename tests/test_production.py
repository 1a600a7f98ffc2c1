"""The production model (pptp.production): the picked recipe on the whole pool, canaries with
their true labels, not the audit target's half."""

from __future__ import annotations

import numpy as np

from pptp.config import TrialConfig
from pptp.data import build_pool
from pptp.production import full_pool, train_production

CFG = TrialConfig.from_flat(
    {
        "data.name": "digits",
        "data.pool_size": 200,
        "data.test_size": 100,
        "data.val_size": 0,
        "data.canaries": 20,
        "model.name": "mlp",
        "model.width": 16,
        "model.norm": "none",
        "train.epochs": 3,
        "train.batch_size": 20,
        "train.augment": False,
        "train.warmup_epochs": 0,
        "train.device": "cpu",
    }
)


def test_full_pool_gives_canaries_their_true_labels() -> None:
    pool = build_pool(CFG.data)
    assert pool.canary is not None and pool.canary_true_y is not None
    full = full_pool(pool)
    y = full.y.numpy()
    assert np.array_equal(y[pool.canary], pool.canary_true_y)
    assert np.array_equal(y[~pool.canary], pool.y.numpy()[~pool.canary])
    assert full.canary is None and full.n_canaries == 0
    assert not np.array_equal(pool.y.numpy()[pool.canary], pool.canary_true_y)  # planted


def test_the_shipped_model_trains_on_every_pool_example() -> None:
    shipped = train_production(CFG)
    audit = int(build_pool(CFG.data).keep(1)[0].sum())  # the target's members: about half
    assert 90 <= audit <= 110
    assert (shipped.members, shipped.audit_members, shipped.canaries_restored) == (200, audit, 20)
    assert shipped.n_test == 100 and 0.0 <= shipped.test_acc <= 1.0
    assert shipped.epsilon is None and not shipped.model.training
