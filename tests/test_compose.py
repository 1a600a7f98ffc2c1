"""Every pair of OPERATORS x DEFENSES either composes and keeps what both promise, or is refused
before anything trains, with a message naming both."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pptp.compose import CONFLICTS, NOTES, check_pair, pair, pair_table
from pptp.config import DefenseConfig, ModelConfig, ProtectConfig, TrainConfig
from pptp.data import Pool, make_pool
from pptp.defenses import DEFENSES
from pptp.errors import ConfigError
from pptp.hooks import Needs
from pptp.models import build_model
from pptp.operators import OPERATORS
from pptp.selection import Selection, partition
from pptp.train import EpochLog, TrainResult, train

MODEL = ModelConfig(name="small_cnn", width=4, norm="group")
# 128 members, batch 64: 2 steps an epoch; 3 epochs, warm-up 1; rewind fine-tunes 2 more
CFG = TrainConfig(epochs=3, batch_size=64, lr=0.1, warmup_epochs=1, crop_pad=1, seed=5)
SELECTION = {"split": 2, "direction": "prefix"}
REFUSED = {("noise", "dpsgd"), ("noise", "relaxloss")}
PAIRS = [(o, d) for o in sorted(OPERATORS) for d in sorted(DEFENSES)]
ALLOWED = [p for p in PAIRS if p not in REFUSED]

PROTECT = {  # the strength and scale at which each operator's effect is checkable
    "none": {},
    "noise": {"strength": 1.0, "clip_norm": 0.5},
    "damp": {"strength": 1.0},  # frozen after warm-up
    "anchor": {"strength": 1.0, "max_anchor": 1000.0},  # pull ~10 (theta - theta_warmup)
    "rewind": {"strength": 0.6, "finetune_epochs": 2},
    "feature_noise": {"strength": 1.0},
}
DEFENSE = {
    "none": {},
    "weight_decay": {"weight_decay": 1.0},
    "label_smoothing": {"label_smoothing": 0.5},
    "early_stopping": {"patience": 1},
    "dpsgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0},
    "relaxloss": {"relaxloss_alpha": 2.5},  # above the initial CE: its own branches at once
}


@dataclass(frozen=True)
class Run:
    final: dict[str, torch.Tensor]
    after: dict[int, dict[str, torch.Tensor]]  # weights after each epoch (both phases)
    result: TrainResult
    model: torch.nn.Module


@functools.cache
def pool() -> Pool:
    return make_pool("digits", seed=0, test_size=200, val_size=100)


@functools.cache
def run(operator: str, defense: str, strength: float | None = None) -> Run:
    """Train once per (operator, defense, strength); ``strength`` overrides the table's."""
    options = dict(PROTECT[operator])
    if strength is not None:
        options["strength"] = strength
    protect = ProtectConfig(operator=operator, **SELECTION, **options)  # type: ignore[arg-type]
    guard = DefenseConfig(name=defense, **DEFENSE[defense])  # type: ignore[arg-type]
    model = build_model(MODEL, pool(), seed=CFG.seed)
    after: dict[int, dict[str, torch.Tensor]] = {}

    def keep(log: EpochLog) -> None:
        after[log.epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    members = np.flatnonzero(pool().keep(1)[0])[:128]
    result = train(model, pool(), members, CFG, protect=protect, defense=guard, on_epoch=keep)
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Run(final, after, result, model)


@functools.cache
def parameter_names() -> frozenset[str]:
    return frozenset(n for n, _ in build_model(MODEL, pool(), seed=0).named_parameters())


@functools.cache
def protected() -> frozenset[str]:
    model = build_model(MODEL, pool(), seed=0)
    return frozenset(partition(model, Selection.from_config(**SELECTION)).protected)  # type: ignore[arg-type]


def training_end(r: Run) -> dict[str, torch.Tensor]:
    """The weights the training phase ended with: the best epoch's under early stopping."""
    if "best_epoch" in r.result.extras:
        return r.after[int(r.result.extras["best_epoch"])]
    last = max(log.epoch for log in r.result.history if log.phase == "train")
    return r.after[last]


def distance(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: frozenset[str]
) -> float:
    return torch.cat([(a[n] - b[n]).flatten() for n in sorted(names)]).norm().item()


# --------------------------------------------------------------------------------------------
# what each operator promises, checked on the pair's run against the defense alone


def operator_keeps_its_promise(operator: str, defense: str) -> None:
    both, alone = run(operator, defense), run(operator, defense, strength=0.0)
    end, warm = training_end(both), both.after[CFG.warmup_epochs]
    prot, params = protected(), parameter_names()
    if operator == "none":
        pass  # plain training: nothing to add to the defense
    elif operator == "noise":  # the noise written to protected gradients reaches the update
        assert distance(both.final, alone.final, prot) > 0.05
    elif operator == "damp":  # strength 1: frozen at the warm-up weights (or the best epoch's)
        assert all(torch.equal(both.final[k], warm[k]) for k in prot)
    elif operator == "anchor":  # held near the warm-up weights, much nearer than without it
        drift = distance(alone.final, alone.after[CFG.warmup_epochs], prot)
        assert distance(both.final, warm, prot) <= 0.5 * drift  # 0 <= 0: best epoch = warm-up
    elif operator == "rewind":  # rewound groups hold the interpolation of the training end
        s = PROTECT["rewind"]["strength"]
        for k in prot:
            assert torch.equal(both.final[k], end[k] * (1 - s) + warm[k] * s), k
        tuned = [log for log in both.result.history if log.phase == "finetune"]
        assert len(tuned) == PROTECT["rewind"]["finetune_epochs"]
        assert all(log.lr == s * 0.1 * CFG.lr for log in tuned)  # own constant lr
        assert any(not torch.equal(both.final[k], end[k]) for k in params - prot)
    elif operator == "feature_noise":  # training saw the noise; the trained model does not
        assert distance(both.final, alone.final, prot) > 0
        assert all(not m._forward_hooks for m in both.model.modules())
    else:
        raise AssertionError(f"no promise written for operator {operator!r}")


# --------------------------------------------------------------------------------------------
# what each defense promises, checked on the pair's run against the operator alone


def defense_keeps_its_promise(operator: str, defense: str) -> None:
    both, alone = run(operator, defense), run(operator, "none")
    history = both.result.history
    free = parameter_names() - protected()
    if defense == "none":
        pass  # the operator alone
    elif defense == "weight_decay":  # decay 1.0 shrinks the free groups' weights
        zero = {k: torch.zeros_like(v) for k, v in both.final.items()}
        assert distance(both.final, zero, free) < distance(alone.final, zero, free)
    elif defense in ("label_smoothing", "relaxloss"):  # the loop trains on the defense's loss
        assert history[0].loss != alone.result.history[0].loss
    elif defense == "early_stopping":  # the training phase ends with the best epoch's weights
        best = int(both.result.extras["best_epoch"])
        vals = [log.val_acc for log in history if log.phase == "train"]
        assert vals[best - 1] == max(v for v in vals if v is not None)
        if not OPERATORS[operator].needs.fine_tune:  # (rewind's promise covers its own case)
            assert all(torch.equal(both.final[k], both.after[best][k]) for k in both.final)
    elif defense == "dpsgd":  # every private step counted, fine-tune steps included
        assert both.result.extras["dp_steps"] == len(history) * 2
        assert 0 < both.result.extras["epsilon"] < float("inf")
        assert all(not hasattr(p, "grad_sample") for p in both.model.parameters())
    else:
        raise AssertionError(f"no promise written for defense {defense!r}")


@pytest.mark.parametrize(("operator", "defense"), ALLOWED)
def test_allowed_pair_keeps_both_promises(operator: str, defense: str) -> None:
    assert pair(operator, defense).allowed
    operator_keeps_its_promise(operator, defense)
    defense_keeps_its_promise(operator, defense)


@pytest.mark.parametrize(("operator", "defense"), sorted(REFUSED))
def test_refused_pair_names_both_before_anything_trains(operator: str, defense: str) -> None:
    both = f"protect.operator '{operator}' .* defense.name '{defense}': "
    with pytest.raises(ConfigError, match=both):
        check_pair(operator, defense)
    model = build_model(MODEL, pool(), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    protect = ProtectConfig(operator=operator, strength=0.5, **SELECTION)  # type: ignore[arg-type]
    guard = DefenseConfig(name=defense)
    with pytest.raises(ConfigError, match=both):
        train(model, pool(), np.arange(64), CFG, protect=protect, defense=guard)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_pair_table_lists_every_pair_once() -> None:
    table = pair_table()
    assert [(p.operator, p.defense) for p in table] == PAIRS
    assert {(p.operator, p.defense) for p in table if not p.allowed} == REFUSED
    assert all(p.reason for p in table)


def test_refusals_say_why() -> None:
    assert "rebuilds every .grad" in pair("noise", "dpsgd").reason
    assert "batch-level" in pair("noise", "relaxloss").reason
    assert "counted by the accountant" in pair("rewind", "dpsgd").reason
    assert "restored" in pair("rewind", "early_stopping").reason


def test_rules_name_real_needs() -> None:
    fields = set(Needs.__dataclass_fields__)
    for rule in (*CONFLICTS, *NOTES):
        assert {rule.operator, rule.defense} <= fields, rule


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown operator 'blur'"):
        check_pair("blur", "none")
    with pytest.raises(ConfigError, match="unknown defense 'mixup'"):
        check_pair("none", "mixup")
