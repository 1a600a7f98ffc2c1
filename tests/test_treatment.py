"""pptp.treatment: what a trial trained with, its kind and its name, from a config and from
what a finished trial recorded; groups resolved before training as training resolves them."""

from __future__ import annotations

import pytest
import torch

from pptp.config import TrialConfig
from pptp.data import make_pool
from pptp.models import build_model
from pptp.selection import resolve, selection_of
from pptp.treatment import (
    TREATMENT_ATTR,
    Treatment,
    groups_label,
    operator_acts,
    planned_groups,
    run_name,
    treatment_from_record,
    treatment_of,
    trial_digits,
)


@pytest.mark.parametrize(
    ("groups", "consecutive", "label"),
    [
        ([], True, "-"),
        (["head"], True, "head"),
        (["block4", "head"], True, "block4+head"),
        (["block3", "block4", "head"], True, "block3-head"),
        (["block1", "block3", "head"], False, "block1+block3+head"),
    ],
)
def test_groups_label(groups: list[str], consecutive: bool, label: str) -> None:
    assert groups_label(groups, consecutive=consecutive) == label


def test_names_say_what_each_kind_of_trial_tried() -> None:
    pptp = Treatment("noise", 0.4562, ("block3", "block4", "head"), consecutive=True)
    assert (pptp.kind, run_name(7, pptp)) == ("pptp", "t07 noise s=0.46 block3-head")
    # strength 0 is plain training whatever the operator: no operator, strength or groups
    plain = Treatment("damp", 0.0, ("block1",))
    assert (plain.kind, plain.operator, plain.groups) == ("undefended", "none", ())
    assert run_name(0, plain) == "t00 undefended"
    assert run_name(3, Treatment("none", 0.7)) == "t03 undefended"
    assert run_name(2, Treatment("noise", 0.0, defense="dpsgd")) == "t02 baseline dpsgd"
    knob = Treatment(defense="dpsgd", knobs=(("noise_multiplier", 0.8),))
    assert (knob.kind, run_name(4, knob)) == (
        "baseline",
        "t04 baseline dpsgd noise_multiplier=0.80",
    )
    both = Treatment("anchor", 1.0, ("head",), defense="relaxloss")
    assert (both.kind, run_name(5, both)) == ("combined", "t05 anchor s=1 head + relaxloss")
    assert run_name(123, Treatment("damp", 0.5, ("head",)), digits=3) == "t123 damp s=0.50 head"
    assert trial_digits(12) == 2 and trial_digits(100) == 2 and trial_digits(101) == 3
    assert not operator_acts("none", 1.0) and not operator_acts("noise", 0.0)


def test_a_baseline_shows_only_its_own_searched_knobs() -> None:
    # a space that searches DP-SGD's clipping norm: a weight-decay trial does not read it
    searched = ("defense.strength", "defense.max_grad_norm", "defense.name")
    wd = TrialConfig().replace(**{"defense.name": "weight_decay", "defense.strength": 0.3})
    assert run_name(7, treatment_of(wd, searched=searched)) == (
        "t07 baseline weight_decay strength=0.30"
    )
    dp = TrialConfig().replace(
        **{"defense.name": "dpsgd", "defense.strength": 0.3, "defense.max_grad_norm": 2.5}
    )
    assert run_name(7, treatment_of(dp, searched=searched)) == (
        "t07 baseline dpsgd strength=0.30 max_grad_norm=2.50"
    )


def test_every_defense_declares_the_keys_it_reads() -> None:
    import dataclasses

    from pptp.config import DEFENSE_KEYS, DefenseConfig
    from pptp.defenses import DEFENSES

    assert set(DEFENSE_KEYS) == set(DEFENSES)
    fields = {f.name for f in dataclasses.fields(DefenseConfig)} - {"name", "strength"}
    assert {k for keys in DEFENSE_KEYS.values() for k in keys} == fields


@pytest.mark.parametrize(
    "protect",
    [
        {"protect.split": 2, "protect.direction": "suffix"},
        {"protect.split": 1, "protect.direction": "prefix"},
        {"protect.groups": ["block2", "head"]},
        {"protect.patterns": [r"block3\..*"]},
    ],
)
def test_planned_groups_are_the_groups_training_protects(protect: dict[str, object]) -> None:
    """Resolved on the meta-device skeleton before training, as training resolves them on the
    real model (the name a trial gets before it trains is the name it keeps)."""
    cfg = TrialConfig().replace(**{"protect.operator": "damp", "protect.strength": 0.5, **protect})
    pool = make_pool("digits", seed=0, pool_size=200, test_size=50, val_size=0)
    model = build_model(cfg.model, pool, seed=0)
    selection = selection_of(cfg.protect)
    assert selection is not None
    assert planned_groups(cfg) == resolve(selection, model)
    assert next(model.parameters()).device == torch.device("cpu")


def test_the_record_round_trips_and_old_records_still_read() -> None:
    cfg = TrialConfig().replace(
        **{"protect.operator": "noise", "protect.strength": 0.5, "protect.split": 2,
           "protect.direction": "suffix", "defense.name": "dpsgd", "defense.strength": 0.2}
    )  # fmt: skip
    treatment = treatment_of(cfg, planned_groups(cfg), searched=("defense.strength",))
    assert treatment.label() == "noise s=0.50 block4+head + dpsgd strength=0.20"
    attrs = {TREATMENT_ATTR: treatment.to_data(), **treatment.flat()}
    assert treatment_from_record(attrs, {}) == treatment
    # a study recorded before the treatment attribute: its flat fields and params
    old = {"operator": "noise", "strength": 0.5, "defense": "dpsgd",
           "protected_groups": "block4,head"}  # fmt: skip
    params = {"protect.split": 2, "defense.strength": 0.2}
    assert treatment_from_record(old, params) == treatment
