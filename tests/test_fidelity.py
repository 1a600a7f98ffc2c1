"""Rungs: snapshots of one training (pptp/train.py ``training``), references' logits at the rungs
in the bank (pptp/bank.py), a trial measured at each rung against them (pptp/fidelity.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pptp.bank import ReferenceBank
from pptp.config import TrialConfig
from pptp.data import build_pool
from pptp.fidelity import run_trial_at_rungs
from pptp.models import build_model
from pptp.rungs import rung_epochs
from pptp.train import train, training

RECIPE = {
    "data.name": "digits",
    "data.pool_size": 200,
    "data.test_size": 100,
    "data.val_size": 0,
    "model.name": "mlp",
    "model.width": 32,
    "model.norm": "none",
    "train.epochs": 10,
    "train.batch_size": 10,
    "train.lr": 0.1,
    "train.warmup_epochs": 0,
    "train.augment": False,
    "attack.attacks": ["loss", "lira_offline"],
    "attack.n_references": 2,
}


def test_rung_epochs_are_fractions_of_the_run_below_its_end() -> None:
    assert rung_epochs(30, [1 / 9, 1 / 3]) == (3, 10)
    assert rung_epochs(30, [1 / 9, 1 / 3, 1.0]) == (3, 10)
    assert rung_epochs(4, [0.01, 0.1, 0.3]) == (1,)


def test_a_run_paused_at_rungs_is_the_same_training() -> None:
    cfg = TrialConfig.from_flat(RECIPE)
    pool = build_pool(cfg.data)
    members = np.flatnonzero(pool.keep(1)[0])
    whole = build_model(cfg.model, pool, seed=1)
    train(whole, pool, members, cfg.train)
    paused = build_model(cfg.model, pool, seed=1)
    steps = training(paused, pool, members, cfg.train, rungs={2, 4})
    assert [next(steps), next(steps)] == [2, 4]
    with pytest.raises(StopIteration):
        next(steps)
    for a, b in zip(whole.state_dict().values(), paused.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_references_keep_rung_logits_and_older_entries_are_not_misread(tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat({**RECIPE, "attack.bank_dir": str(tmp_path)})
    bank = ReferenceBank(tmp_path)
    bank.ensure(cfg, 1)  # a reference trained without rungs
    assert bank.missing(cfg, 1) == [] and bank.missing(cfg, 1, rungs=[2]) == [0]
    bank.ensure(cfg, 1, rungs=[2, 4])
    meta = json.loads((bank.entry_dir(cfg) / "ref-0000.json").read_text())
    assert meta["rungs"] == [2, 4]
    refs = bank.load(cfg, 1, rungs=[2, 4])
    assert set(refs.rungs) == {2, 4} and refs.at(2).logits.shape == refs.logits.shape
    assert not np.array_equal(refs.at(2).logits, refs.logits)  # epoch 2 is not the end
    with pytest.raises(KeyError):
        refs.at(3)


def test_a_trial_at_rungs_reports_every_seed_and_can_be_stopped(tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat({**RECIPE, "attack.bank_dir": str(tmp_path)})
    seen: list[tuple[int, int, float]] = []

    def on_rung(epoch, results):  # type: ignore[no-untyped-def]
        seen.append((epoch, len(results), results[0].metrics()["attack_auc"]))

    results = run_trial_at_rungs(cfg, [0, 1], [3, 6], on_rung=on_rung)
    assert [(e, n) for e, n, _ in seen] == [(3, 2), (6, 2)]
    assert all(0.5 <= auc <= 1 for _, _, auc in seen)
    assert len(results) == 2 and results[0].history and results[0].test_acc > 0.3

    class Stopped(Exception):
        pass

    def stop(epoch, results):  # type: ignore[no-untyped-def]
        raise Stopped

    with pytest.raises(Stopped):
        run_trial_at_rungs(cfg, [0], [3, 6], on_rung=stop)
