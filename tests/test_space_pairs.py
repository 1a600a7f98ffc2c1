"""Operator and defense pairs in a space: refused when fixed or enqueued together, a warning when
the sampler can draw them, kept apart by ``study.combine: false`` (pptp.compose decides)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fixtures_space import write

from pptp.compose import pair
from search.space import SpaceError, load_space

SEARCHED = """\
study:
  name: pairs
  n_trials: 4
  {study_extra}
fixed:
  model.norm: group
  {fixed_extra}
params:
  protect.operator: {{type: categorical, choices: [noise, damp]}}
  protect.strength: {{type: float, low: 0.0, high: 1.0}}
  protect.split: {{type: int, low: 1, high: 4}}
  defense.name: {{type: categorical, choices: [none, dpsgd, relaxloss]}}
"""


def test_the_pairs_refused_here_are_refused_by_pptp_compose() -> None:
    assert not pair("noise", "dpsgd").allowed and not pair("noise", "relaxloss").allowed
    assert pair("damp", "dpsgd").allowed


def test_a_fixed_refused_pair_is_an_error_naming_both(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        study: {name: p}
        fixed:
          model.norm: group
          protect: {operator: noise, strength: 0.5, split: 1}
          defense.name: dpsgd
        """,
    )
    with pytest.raises(SpaceError) as err:
        load_space(path)
    message = str(err.value)
    assert "'noise'" in message and "'dpsgd'" in message and "Opacus" in message
    assert str(path) in message


def test_a_refused_pair_at_strength_zero_trains_plainly_and_is_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        study: {name: p}
        fixed:
          model.norm: group
          protect: {operator: noise, strength: 0.0, split: 1}
          defense.name: dpsgd
        """,
    )
    assert load_space(path).base_config().defense.name == "dpsgd"


def test_an_enqueued_refused_pair_is_an_error_at_its_entry(tmp_path: Path) -> None:
    text = SEARCHED.format(
        study_extra="enqueue: [{protect.operator: damp, protect.strength: 0.5, protect.split: 1,"
        " defense.name: dpsgd}, {protect.operator: noise, protect.strength: 0.3, protect.split:"
        " 2, defense.name: relaxloss}]",
        fixed_extra="",
    )
    with pytest.raises(SpaceError, match=r"study\.enqueue\[1\].*'noise'.*'relaxloss'"):
        load_space(write(tmp_path, text))


def test_searched_refused_pairs_are_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        load_space(write(tmp_path, SEARCHED.format(study_extra="", fixed_extra="")))
    assert "noise + dpsgd" in caplog.text and "noise + relaxloss" in caplog.text
    assert "study.combine: false" in caplog.text


def test_combine_false_keeps_pptp_and_the_baselines_apart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = SEARCHED.format(study_extra="combine: false", fixed_extra="")
    with caplog.at_level(logging.WARNING):
        space = load_space(write(tmp_path, text))
    assert "do not compose" not in caplog.text
    sampled = {"protect.operator": "noise", "protect.strength": 0.7, "protect.split": 2}
    baseline = space.trial_config({**sampled, "defense.name": "dpsgd"})
    assert (baseline.protect.operator, baseline.protect.strength) == ("none", 0.0)
    assert baseline.defense.name == "dpsgd"
    pptp = space.trial_config({**sampled, "defense.name": "none"})
    assert (pptp.protect.operator, pptp.protect.strength) == ("noise", 0.7)
    # the resolved space says so, and loads back equal
    again = write(
        tmp_path, __import__("yaml").safe_dump(space.resolved(), sort_keys=False), name="again.yaml"
    )
    assert load_space(again).study == space.study and space.study.combine is False
