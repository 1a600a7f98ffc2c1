"""run_trial end to end on digits: attacks detect an overfit target; a warm bank trains nothing;
queries follow training; a model at chance fails the trial; the two-sided worst case; the
resolution of low-FPR metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pptp.attacks import ATTACKS
from pptp.bank import ReferenceBank
from pptp.config import DataConfig, TrialConfig
from pptp.errors import ConfigError, ModelAtChance
from pptp.metrics import evaluate
from pptp.trial import (
    TrialResult,
    expected_non_members,
    run_trial,
    unresolvable_metrics,
)

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
    assert metrics["attack_auc"] == max(max(m.auc, 1 - m.auc) for m in result.attacks.values())
    assert result.queries == ("clean", "shift+x", "shift-x", "shift+y")  # forced: query_augment
    assert metrics["fpr_resolution"] == 1 / 100  # 200 pool examples, 100 non-members
    assert math.isnan(metrics["attack_tpr@0.1%fpr"]) and math.isfinite(metrics["attack_tpr@1%fpr"])
    assert set(result.timings) == {"data", "train", "signals", "references", "attack"}
    assert len(result.history) == cfg.train.epochs
    assert result.epsilon is None


def test_warm_bank_trains_no_reference(
    overfit_bank: ReferenceBank, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrialConfig.from_flat({**OVERFIT, "train.epochs": 10, "attack.attacks": ["lira_offline"]})
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
    base = TrialConfig.from_flat({**OVERFIT, "train.epochs": 10, "attack.attacks": ["rmia_online"]})
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


# --- queries follow training -----------------------------------------------------------------

# A small MLP that learns digits in seconds; K = 2 references.
SMALL = {
    "data.pool_size": 200,
    "data.test_size": 300,
    "data.val_size": 0,
    "model.name": "mlp",
    "model.width": 64,
    "model.norm": "none",
    "train.epochs": 15,
    "train.batch_size": 20,
    "train.lr": 0.1,
    "train.warmup_epochs": 0,
    "train.crop_pad": 1,
    "attack.n_references": 2,
}


@pytest.mark.parametrize(
    ("augment", "expected"),
    [(False, ("clean",)), (True, ("clean", "shift+x", "shift-x", "shift+y"))],
)
def test_queries_follow_training_for_target_and_references(
    tmp_path: Path, augment: bool, expected: tuple[str, ...]
) -> None:
    cfg = TrialConfig.from_flat({**SMALL, "train.augment": augment})
    bank = ReferenceBank(tmp_path)
    result = run_trial(cfg, bank=bank)
    assert result.queries == expected
    assert result.tags()["queries"] == ",".join(expected)
    folder = bank.entry_dir(cfg, queries=expected)
    assert json.loads((folder / "recipe.json").read_text())["attack.queries"] == list(expected)
    with np.load(folder / "ref-0000.npz") as stored:
        assert stored["logits"].shape == (200, len(expected), 10)
    # the default attacks for K = 2: fixed-variance LiRA, not per-example online LiRA
    assert tuple(result.attacks) == ("loss", "lira_fixed_variance", "rmia_online")


# --- chance level ------------------------------------------------------------------------------


def test_a_target_at_chance_fails_the_trial(tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat({**SMALL, "train.lr": 1e-6, "train.epochs": 1})
    with pytest.raises(ModelAtChance, match=r"^target model at chance level: test accuracy 0\."):
        run_trial(cfg, bank=ReferenceBank(tmp_path))


def test_a_reference_at_chance_fails_the_trial_naming_it(tmp_path: Path) -> None:
    good = TrialConfig.from_flat(SMALL)
    broken = good.replace(**{"train.lr": 1e-6, "train.epochs": 1})  # the screening recipe
    bank = ReferenceBank(tmp_path)
    with pytest.raises(ModelAtChance) as info:
        run_trial(good, bank=bank, references=broken)
    message = str(info.value)
    assert message.startswith("reference model 0 of bank entry ")
    assert (
        str(bank.entry_dir(broken, queries=("clean", "shift+x", "shift-x", "shift+y"))) in message
    )
    assert "mlp on digits, 1 epochs, lr 1e-06" in message


# --- the two-sided worst case --------------------------------------------------------------------


def _result(attacks: dict[str, tuple[np.ndarray, np.ndarray]]) -> TrialResult:
    return TrialResult(
        config=TrialConfig(),
        test_acc=0.9,
        train_acc=1.0,
        attacks={name: evaluate(scores, members) for name, (scores, members) in attacks.items()},
        history=(),
        timings={},
        protected_groups=(),
        mask={},
        queries=("clean",),
    )


def test_worst_case_is_two_sided_and_names_attack_and_direction() -> None:
    rng = np.random.default_rng(0)
    members = rng.random(3000) < 0.5  # about 1,500 non-members: both FPRs resolved
    signal = rng.normal(size=3000) + 1.5 * members
    weak = rng.normal(size=3000) + 0.2 * members
    result = _result({"weak": (weak, members), "relaxed": (-signal, members)})
    relaxed = result.attacks["relaxed"]
    assert relaxed.auc < 0.2  # inverted scores: one-sided it looks better than private
    metrics = result.metrics()
    assert metrics["auc/relaxed"] == relaxed.auc  # per attack stays one-sided
    assert metrics["attack_auc"] == pytest.approx(1 - relaxed.auc)
    assert metrics["attack_auc"] > result.attacks["weak"].auc
    flipped = evaluate(signal, members)  # what an attacker who flips the scores gets
    assert metrics["attack_tpr@1%fpr"] == pytest.approx(flipped.tpr_at_1pct_fpr)
    assert metrics["attack_tpr@0.1%fpr"] == pytest.approx(flipped.tpr_at_0_1pct_fpr)
    tags = result.tags()
    assert tags["attack_worst"] == "relaxed (inverted)"
    assert tags["attack_worst/tpr@1%fpr"] == "relaxed (inverted)"
    assert result.worst_case("auc").inverted and result.worst_case("auc").attack == "relaxed"
    # not inverted: the one-sided number and the attack's plain name
    plain = _result({"weak": (weak, members), "strong": (signal, members)})
    assert plain.metrics()["attack_auc"] == plain.attacks["strong"].auc
    assert plain.tags()["attack_worst"] == "strong"


def test_worst_case_of_an_unresolved_metric_is_nan() -> None:
    rng = np.random.default_rng(1)
    members = np.arange(900) < 450  # 450 non-members: 0.1% is below 1/450
    result = _result({"a": (rng.normal(size=900) + members, members)})
    metrics = result.metrics()
    assert math.isnan(metrics["tpr@0.1%fpr/a"]) and math.isnan(metrics["attack_tpr@0.1%fpr"])
    assert math.isfinite(metrics["attack_tpr@1%fpr"])
    assert metrics["fpr_resolution"] == 1 / 450
    assert result.tags()["attack_worst/tpr@0.1%fpr"] == "unresolved"


def test_resolution_per_attack_when_scored_sets_differ() -> None:
    rng = np.random.default_rng(2)
    small, large = np.arange(300) < 100, np.arange(1200) < 200
    result = _result({"a": (rng.normal(size=300), small), "b": (rng.normal(size=1200), large)})
    metrics = result.metrics()
    assert "fpr_resolution" not in metrics
    assert metrics["fpr_resolution/a"] == 1 / 200 and metrics["fpr_resolution/b"] == 1 / 1000


# --- resolution known before anything runs ---------------------------------------------------


def test_expected_non_members_matches_the_pool() -> None:
    from pptp.data import build_pool

    for data in (DataConfig(), DataConfig(pool_size=201, test_size=300, val_size=0)):
        pool = build_pool(data)
        assert expected_non_members(data) == int((~pool.keep(1)[0]).sum())
    assert expected_non_members(DataConfig()) == 700  # digits: 1797 - 297 - 100 = 1400
    assert expected_non_members(DataConfig(name="cifar10", test_size=10_000, val_size=0)) == 25_000


def test_unresolvable_metrics_name_the_reason() -> None:
    digits = TrialConfig()
    problems = unresolvable_metrics(
        digits,
        ["test_acc", "attack_auc", "attack_tpr@0.1%fpr", "attack_tpr@1%fpr", "tpr@0.1%fpr/loss"],
    )
    assert set(problems) == {"attack_tpr@0.1%fpr", "tpr@0.1%fpr/loss"}
    assert "700 non-member examples" in problems["attack_tpr@0.1%fpr"]
    assert "at least 1000 non-members" in problems["attack_tpr@0.1%fpr"]
    bigger = TrialConfig.from_flat({"data.name": "cifar10", "data.test_size": 10_000})
    assert unresolvable_metrics(bigger, ["attack_tpr@0.1%fpr"]) == {}
