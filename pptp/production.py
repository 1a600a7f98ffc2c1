"""The production model of a picked config: its recipe trained on all the training data it may use.

A trial's target trains on keep row 0 (a random half of the pool), and with ``data.canaries``
some of its labels are deliberately wrong: it is the *audit* target, the model whose leakage the
attacks measure. What ships is the same recipe (data, model, training, protection, defense, the
same ``train.seed``) trained on every pool example, which excludes only the held-out test and
validation sets, with every canary given back its true label. The audit estimates what that
recipe leaks; the shipped model trained on about twice as many members, as the model card states.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pptp.config import TrialConfig
from pptp.data import Pool, build_pool
from pptp.device import resolve_device
from pptp.models import build_model
from pptp.train import train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Production:
    """The shipped model and what it trained on.

    ``members``: examples it trained on (the whole pool); ``audit_members``: what the audit
    target trained on (keep row 0: half the pool); ``canaries_restored``: canaries trained with
    their true labels; ``epsilon``: DP-SGD's epsilon for this training (None without DP-SGD).
    """

    model: nn.Module
    test_acc: float
    train_acc: float
    members: int
    audit_members: int
    canaries_restored: int
    n_test: int
    epsilon: float | None
    seconds: float


def full_pool(pool: Pool) -> Pool:
    """``pool`` with its canaries given back their true labels (and no longer marked)."""
    if pool.canary is None or pool.canary_true_y is None:
        return pool
    y = pool.y.clone()
    y[torch.from_numpy(np.flatnonzero(pool.canary)).to(y.device)] = torch.as_tensor(
        pool.canary_true_y, dtype=y.dtype, device=y.device
    )
    return dataclasses.replace(pool, y=y, canary=None, canary_true_y=None)


def train_production(cfg: TrialConfig) -> Production:
    """Train ``cfg``'s recipe on the whole pool with true labels (module docstring); the model
    is returned on the CPU in eval mode."""
    start = time.perf_counter()
    device = resolve_device(cfg.train.device)
    audited = build_pool(cfg.data, device=device)
    pool = full_pool(audited)
    members = np.arange(len(pool.y))
    model = build_model(cfg.model, pool, seed=cfg.train.seed)
    trained = train(
        model, pool, members, cfg.train, protect=cfg.protect, defense=cfg.defense, device=device
    )
    epsilon = trained.extras.get("epsilon")
    logger.info(
        "production model: %d members (audit %d), test_acc %.4f", len(members),
        int(audited.keep(1)[0].sum()), trained.test_acc,
    )  # fmt: skip
    return Production(
        model=model.cpu().eval(),
        test_acc=trained.test_acc,
        train_acc=trained.train_acc,
        members=len(members),
        audit_members=int(audited.keep(1)[0].sum()),
        canaries_restored=audited.n_canaries,
        n_test=len(pool.y_test),
        epsilon=None if epsilon is None else float(epsilon),
        seconds=time.perf_counter() - start,
    )
