"""References that travel: a reference trained anywhere comes back as bytes and is stored by the
bank's owner; signals loaded once score a trial that never opens ``attack.bank_dir``; signals that
do not fit the trial are refused; a search trial scored against shipped signals touches no bank
folder and records where it ran."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from fixtures_space import TINY_STUDY_FIXED
from fixtures_tracking import fresh_store
from mlflow.tracking import MlflowClient

from pptp.bank import ReferenceBank, ReferenceSignals, train_entry
from pptp.config import TrialConfig
from pptp.data import build_pool
from pptp.errors import ConfigError
from pptp.signals import Signals, resolve_queries
from pptp.trial import attack_scores, run_trial
from search.running.trainable import TAG_HOSTNAME, TAG_REFERENCES, TrialContext, run_search_trial
from search.space import load_space
from search.tracking.study_tracker import StudyTracker

FLAT = {
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
    "train.augment": False,
    "train.warmup_epochs": 0,
    "train.device": "cpu",
    "attack.attacks": ["loss", "lira_offline"],
    "attack.n_references": 2,
}
CFG = TrialConfig.from_flat(FLAT)


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> ReferenceBank:
    """Two references, trained as a Ray task would (``train_entry``, nothing written), then
    stored by the bank's owner."""
    root = tmp_path_factory.mktemp("bank")
    store = ReferenceBank(root / "bank")
    entries = [train_entry(CFG, i) for i in range(2)]
    assert not (root / "bank").exists()  # training wrote nothing
    for entry in entries:
        assert entry.meta["host"] == socket.gethostname() and entry.key == store.entry_dir(CFG).name
        store.store(entry)
    assert store.missing(CFG, 2) == []
    return store


def test_an_entry_damaged_on_its_way_is_refused(bank: ReferenceBank, tmp_path: Path) -> None:
    entry = train_entry(CFG.replace(**{"train.epochs": 1}), 0)
    damaged = type(entry)(entry.key, entry.recipe, entry.index, entry.npz[:-1] + b"x", entry.meta)
    other = ReferenceBank(tmp_path / "other")
    with pytest.raises(ValueError, match="do not match its checksum"):
        other.store(damaged)
    assert not (tmp_path / "other").exists()
    other.store(entry)
    assert other.missing(CFG.replace(**{"train.epochs": 1}), 1) == []


def test_shipped_signals_score_the_trial_without_the_bank(
    bank: ReferenceBank, tmp_path: Path
) -> None:
    signals = bank.load(CFG, 2)
    assert signals.queries == ("clean",) and signals.entry == bank.entry_dir(CFG).name
    nowhere = tmp_path / "no-such-bank"
    target = CFG.replace(**{"train.seed": 3, "attack.bank_dir": str(nowhere)})
    shipped = run_trial(target, reference_signals=signals, references=CFG)
    assert not nowhere.exists()  # never opened, never created
    from_bank = run_trial(target, bank=bank, references=CFG)
    assert shipped.metrics()["attack_auc"] == from_bank.metrics()["attack_auc"]
    assert shipped.attacks["lira_offline"].auc == from_bank.attacks["lira_offline"].auc
    # read-only arrays (as Ray's object store hands them out) are fine
    frozen = ReferenceSignals(
        signals.logits.copy(), signals.keep.copy(), signals.test_acc, signals.queries, signals.entry
    )
    frozen.logits.flags.writeable = False
    frozen.keep.flags.writeable = False
    again = run_trial(target, reference_signals=frozen, references=CFG)
    assert again.metrics()["attack_auc"] == shipped.metrics()["attack_auc"]


def test_signals_that_do_not_fit_the_trial_are_refused(bank: ReferenceBank) -> None:
    signals = bank.load(CFG, 2)
    cases = [
        (CFG.replace(**{"attack.n_references": 3}), signals, "at least 3 references"),
        (CFG.replace(**{"attack.adaptive": True}), signals, "adaptive audit"),
        (CFG.replace(**{"attack.query_augment": True}), signals, "queried with clean"),
        (CFG.replace(**{"data.seed": 1}), signals, "not the recipe"),
        (
            CFG,
            ReferenceSignals(signals.logits, ~signals.keep, signals.test_acc),
            "keep row does not match",
        ),
    ]
    pool = build_pool(CFG.data)
    for cfg, shipped, message in cases:
        n_queries = len(resolve_queries(cfg))  # any model's signals will do, with cfg's queries
        target = Signals(np.repeat(signals.logits[0], n_queries, axis=1), pool.y.cpu().numpy())
        with pytest.raises(ConfigError, match=message):
            attack_scores(cfg, pool, target, bank=None, reference_signals=shipped)


SPACE = (
    """
study: {{name: shipped, n_trials: 1, sampler: random}}
"""
    + TINY_STUDY_FIXED
    + """params:
  protect.strength: {{type: float, low: 0.0, high: 1.0}}
"""
)


def test_a_search_trial_with_shipped_references_never_touches_bank_dir(
    bank: ReferenceBank, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial's ``attack.bank_dir`` names a folder that does not exist, on purpose: a trial
    that opened it (to load or to train a reference) would create it."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    nowhere = tmp_path / "not-on-this-node"
    path = tmp_path / "shipped.yaml"
    path.write_text(SPACE.format(bank=nowhere))
    space = load_space(path)
    uri = fresh_store(tmp_path / "store")
    tracker = StudyTracker(uri, "shipped", run_dir=tmp_path)
    tracker.start(resolved_space=space.resolved(), space_path=path, space_sha256=space.sha256)
    ctx = TrialContext(
        space=space,
        tracking_uri=uri,
        experiment_id=tracker.experiment_id,
        parent_run_id=tracker.parent_run_id,
        references=space.base_config(),
        overrides={"attack.bank_dir": str(nowhere)},
    )
    report = run_search_trial(
        {"protect.strength": 0.0, "trial_number": 0},
        ctx,
        reference_signals=bank.load(CFG, 2),
        node={TAG_HOSTNAME: "node-a", "node.ray_id": "abc"},
    )
    assert report["failed"] == 0, report.get("fail_reason")
    assert np.isfinite(report["attack_auc"])
    assert not nowhere.exists()
    tags = MlflowClient(uri).get_run(report["mlflow_run_id"]).data.tags
    assert tags[TAG_REFERENCES] == "shipped"
    assert tags[TAG_HOSTNAME] == "node-a" and tags["node.ray_id"] == "abc"
