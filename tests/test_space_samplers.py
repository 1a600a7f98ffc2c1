"""search.space.sampler_registry: every registered sampler runs two objectives with constraints,
seeds reproduce, options come from the sampler's signature."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import pytest
from fixtures_space import MINIMAL, write

from search.space import (
    SAMPLERS,
    Constraint,
    Space,
    SpaceError,
    build_sampler,
    contains,
    load_space,
    sampler_options,
)


@pytest.fixture
def space(tmp_path: Path) -> Space:
    return load_space(write(tmp_path, MINIMAL))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_works_for_two_objectives_with_constraints(name: str, space: Space) -> None:
    # a couple of startup trials, so model-based samplers take a model-based step within 3 trials
    options = {"n_startup_trials": 2} if "n_startup_trials" in sampler_options(name) else {}
    if name == "nsga2":
        options = {"population_size": 2}
    study_spec = dataclasses.replace(space.study, sampler=name, sampler_options=options, seed=3)
    constraint = Constraint("test_acc", min=0.5)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings (qmc, gp)
        sampler = build_sampler(study_spec)
        study = optuna.create_study(directions=study_spec.directions, sampler=sampler)
        study.enqueue_trial({"protect.strength": 0.0})
        for _ in range(3):  # ask and tell, as the search does
            trial = study.ask(space.params)
            cfg = space.trial_config(trial.params)
            acc = 1.0 - 0.5 * cfg.protect.strength
            trial.set_constraint(constraint.name, constraint.value({"test_acc": acc}))
            auc = 0.5 + 0.1 * (cfg.protect.split or 0) * (1.0 - cfg.protect.strength)
            study.tell(trial, (acc, auc))
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert trials[0].params["protect.strength"] == 0.0  # the enqueued trial ran first
    for t in trials:
        assert all(contains(space.params[k], v) for k, v in t.params.items())
        assert t.constraints == {"test_acc>=0.5": pytest.approx(0.5 - t.values[0])}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_seed_is_reproducible(name: str, space: Space) -> None:
    spec = dataclasses.replace(space.study, sampler=name, sampler_options={}, seed=11)

    def draws() -> list[dict[str, Any]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(directions=spec.directions, sampler=build_sampler(spec))
            study.optimize(lambda t: (t.suggest_float("x", 0, 1), 0.0), n_trials=2)
        return [t.params for t in study.trials]

    assert draws() == draws()


def test_tpe_is_multivariate_by_default(space: Space) -> None:
    built: list[bool] = []
    real = optuna.samplers.TPESampler.__init__

    @functools.wraps(real)  # keeps the signature that sampler_options reads
    def spy(self: optuna.samplers.TPESampler, *args: Any, **kwargs: Any) -> None:
        built.append(kwargs["multivariate"])
        real(self, *args, **kwargs)

    spec = dataclasses.replace(space.study, sampler="tpe")
    with mock.patch.object(optuna.samplers.TPESampler, "__init__", spy):
        build_sampler(spec)
        build_sampler(dataclasses.replace(spec, sampler_options={"multivariate": False}))
    assert built == [True, False]


def test_sampler_options_offer_plain_data_only() -> None:
    nsga2 = sampler_options("nsga2")
    assert "population_size" in nsga2 and "crossover_prob" in nsga2
    assert not {"seed", "constraints_func", "mutation", "crossover"} & set(nsga2)
    assert sampler_options("random") == {}


def test_build_sampler_error_names_source(space: Space) -> None:
    spec = dataclasses.replace(space.study, sampler="bogus")
    with pytest.raises(SpaceError, match=r"^x\.yaml: study\.sampler: unknown sampler 'bogus'"):
        build_sampler(spec, source="x.yaml")
