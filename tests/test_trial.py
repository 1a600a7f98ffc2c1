"""run_trial end to end on digits: attacks detect an overfit target; a warm bank trains nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pptp.attacks import ATTACKS
from pptp.bank import ReferenceBank
from pptp.config import TrialConfig
from pptp.errors import ConfigError
from pptp.trial import run_trial

# A wide MLP with no augmentation trained long on 100 members: it memorises them.
OVERFIT = {
    "data.pool_size": 200,
    "data.test_size": 300,
    "data.val_size": 0,
    "model.name": "mlp",
    "model.width": 256,
    "model.norm": "none",
    "train.epochs": 60,
    "train.batch_size": 32,
    "train.lr": 0.05,
    "train.augment": False,
    "train.weight_decay": 0.0,
    "train.warmup_epochs": 0,
    "attack.n_references": 8,
    "attack.query_augment": True,
}


@pytest.fixture(scope="module")
def overfit_bank(tmp_path_factory: pytest.TempPathFactory) -> ReferenceBank:
    return ReferenceBank(tmp_path_factory.mktemp("bank"))


def test_every_attack_detects_an_overfit_target(overfit_bank: ReferenceBank) -> None:
    cfg = TrialConfig.from_flat({**OVERFIT, "attack.attacks": sorted(ATTACKS)})
    result = run_trial(cfg, bank=overfit_bank)
    assert result.train_acc - result.test_acc > 0.05
    for name, m in result.attacks.items():
        # under the null, AUC on 200 examples has a standard deviation of about 0.04
        assert m.auc > 0.55, (name, m.auc)
    metrics = result.metrics()
    assert metrics["attack_auc"] == max(m.auc for m in result.attacks.values())
    assert set(result.timings) == {"data", "train", "signals", "references", "attack"}
    assert len(result.history) == cfg.train.epochs
    assert result.epsilon is None


def test_warm_bank_trains_no_reference(
    overfit_bank: ReferenceBank, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrialConfig.from_flat({**OVERFIT, "train.epochs": 3, "attack.attacks": ["lira_offline"]})
    run_trial(cfg, bank=overfit_bank)  # cold for this recipe: trains 4 references

    def refuse(*args: object, **kwargs: object) -> Path:
        raise AssertionError("a warm bank must not train")

    monkeypatch.setattr(ReferenceBank, "train_one", refuse)
    again = run_trial(
        cfg.replace(
            **{
                "train.seed": 5,
                "protect.operator": "damp",
                "protect.strength": 0.5,
                "protect.split": 1,
            }
        ),
        bank=overfit_bank,
    )
    assert again.timings["references"] < again.timings["train"]


def test_screening_references_follow_the_base_recipe(
    overfit_bank: ReferenceBank, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = TrialConfig.from_flat({**OVERFIT, "train.epochs": 3, "attack.attacks": ["rmia_online"]})
    overfit_bank.ensure(base, 4)
    monkeypatch.setattr(
        ReferenceBank,
        "train_one",
        lambda *a, **k: (_ for _ in ()).throw(
            AssertionError("must reuse the base recipe's references")
        ),
    )
    run_trial(base.replace(**{"train.lr": 0.02}), bank=overfit_bank, references=base)


def test_attack_config_errors(tmp_path: Path) -> None:
    bank = ReferenceBank(tmp_path)
    with pytest.raises(ConfigError, match="unknown attack 'lira2'"):
        run_trial(TrialConfig.from_flat({"attack.attacks": ["lira2"]}), bank=bank)
    with pytest.raises(ConfigError, match="needs at least 2 reference models"):
        run_trial(
            TrialConfig.from_flat({"attack.attacks": ["lira_online"], "attack.n_references": 1}),
            bank=bank,
        )
    with pytest.raises(ConfigError, match=r"attack\.attacks is empty"):
        run_trial(TrialConfig.from_flat({"attack.attacks": []}), bank=bank)
