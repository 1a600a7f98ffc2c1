"""search.space.distributions: the short form and Optuna's JSON form round-trip; membership."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search.space import (
    SpaceError,
    contains,
    describe_distribution,
    distribution_from_short,
    distribution_to_short,
)

ROUND_TRIP = [
    {"type": "float", "low": 0.0, "high": 1.0},
    {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True},
    {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
    {"type": "int", "low": 1, "high": 4},
    {"type": "int", "low": 1, "high": 64, "log": True},
    {"type": "int", "low": 10, "high": 30, "step": 5},
    {"type": "int", "low": 3, "high": 3},
    {"type": "categorical", "choices": ["noise", "damp", None, 1, 0.5, True]},
]


@pytest.mark.parametrize("short", ROUND_TRIP, ids=lambda s: json.dumps(s))
def test_short_form_round_trip(short: dict[str, Any]) -> None:
    dist = distribution_from_short("params.x", short, source="f.yaml")
    assert distribution_to_short(dist) == short
    assert distribution_from_short("params.x", distribution_to_short(dist), source="f") == dist


@pytest.mark.parametrize("short", ROUND_TRIP, ids=lambda s: json.dumps(s))
def test_optuna_json_form_accepted(short: dict[str, Any]) -> None:
    dist = distribution_from_short("params.x", short, source="f.yaml")
    optuna_form = json.loads(optuna.distributions.distribution_to_json(dist))
    assert set(optuna_form) == {"name", "attributes"}
    assert distribution_from_short("params.x", optuna_form, source="f.yaml") == dist


def test_short_form_builds_the_expected_optuna_objects() -> None:
    def parse(spec: dict[str, Any]) -> Any:
        return distribution_from_short("k", spec, source="f")

    assert parse({"type": "float", "low": 0, "high": 1}) == FloatDistribution(0.0, 1.0)
    assert parse({"type": "int", "low": 1, "high": 4}) == IntDistribution(1, 4)
    assert parse({"type": "int", "low": 1.0, "high": 4}) == IntDistribution(1, 4)
    assert parse({"type": "categorical", "choices": ["a"]}) == CategoricalDistribution(["a"])


def test_legacy_optuna_json_form_accepted() -> None:
    spec = {"name": "LogUniformDistribution", "attributes": {"low": 0.001, "high": 0.1}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated since Optuna 3
        dist = distribution_from_short("k", spec, source="f")
    assert dist == FloatDistribution(0.001, 0.1, log=True)


@pytest.mark.parametrize(
    ("dist", "inside", "outside"),
    [
        (
            FloatDistribution(0.0, 1.0),
            [0.0, 0.5, 1, 1.0],
            [-0.1, 1.01, math.nan, math.inf, "0.5", True],
        ),
        (FloatDistribution(0.0, 1.0, step=0.25), [0.0, 0.25, 0.75000000001], [0.3, 1.25]),
        (FloatDistribution(1e-3, 1.0, log=True), [1e-3, 0.5], [0.0, -1.0]),
        (IntDistribution(10, 30, step=5), [10, 15, 30, 20.0], [12, 35, 5, 15.5, True]),
        (IntDistribution(1, 64, log=True), [1, 64], [0, 65]),
        (CategoricalDistribution(["noise", None, 1]), ["noise", None, 1], ["damp", 2, "1"]),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, list) else str(len(v)),
)
def test_contains(dist: Any, inside: list[Any], outside: list[Any]) -> None:
    assert all(contains(dist, v) for v in inside), inside
    assert not any(contains(dist, v) for v in outside), outside


def test_contains_agrees_with_what_samplers_draw() -> None:
    space = {
        "a": FloatDistribution(0.0, 1.0, step=0.1),
        "b": IntDistribution(2, 20, step=3),
        "c": FloatDistribution(1e-4, 1.0, log=True),
        "d": CategoricalDistribution(["x", None, 2.5]),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(50):
        trial = study.ask(space)
        assert all(contains(space[k], v) for k, v in trial.params.items()), trial.params
        study.tell(trial, 0.0)


def test_describe() -> None:
    assert describe_distribution(FloatDistribution(1e-3, 0.1, log=True)) == "float [0.001, 0.1] log"
    assert describe_distribution(IntDistribution(10, 30, step=5)) == "int [10, 30] step 5"
    assert describe_distribution(CategoricalDistribution(["a", None])) == "categorical {a, null}"


def test_errors_name_the_dotted_key() -> None:
    def message(spec: Any) -> str:
        with pytest.raises(SpaceError) as info:
            distribution_from_short("params.x", spec, source="f.yaml")
        return str(info.value)

    assert message({"type": "float", "low": 0}) == (
        "f.yaml: params.x.high: missing; a float distribution needs type, low, high"
    )
    assert message({"type": "int", "low": 1, "high": 3, "step": 0}) == (
        "f.yaml: params.x.step: must be >= 1, got 0"
    )
    assert message({"type": "categorical", "choices": ["a", "a"]}) == (
        "f.yaml: params.x.choices: 'a' is listed twice"
    )
    # 1 and True are equal in Python, two different choices in a space file
    both = distribution_from_short("k", {"type": "categorical", "choices": [1, True]}, source="f")
    assert both == CategoricalDistribution([1, True])
