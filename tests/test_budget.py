"""Shares per family and repeats that do not use up trainings (search/running/budget.py), on
constructed studies: the searcher is driven by hand, nothing trains."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from search.running.budget import (
    STEERED,
    family_line,
    family_to_pin,
    kind_of,
    repeat_line,
    shares_for,
)
from search.running.samplers import DUPLICATE_OF, StudySearch
from search.space import SpaceError, build_sampler, load_space
from search.study import rundir
from tests.fixtures_space import write

optuna.logging.set_verbosity(optuna.logging.WARNING)

FAMILIES = """\
study:
  name: fam
  n_trials: 24
  sampler: tpe
  sampler_options: {{n_startup_trials: 4}}
  combine: false
  {budget}
fixed:
  model.norm: group
params:
  defense.name: {{type: categorical, choices: [none, weight_decay, relaxloss]}}
  defense.strength: {{type: float, low: 0.0, high: 1.0}}
  protect.operator: {{type: categorical, choices: [noise, damp]}}
  protect.strength: {{type: float, low: 0.01, high: 1.0}}
"""


def test_a_family_behind_its_share_of_the_study_so_far_is_pinned() -> None:
    shares = {"pptp": 0.5, "baselines": 0.5}
    assert family_to_pin(shares, {}, 0) is None  # floor(0.5) = 0: the sampler chooses
    assert family_to_pin(shares, {"baselines": 1}, 1) == "pptp"
    assert family_to_pin(shares, {"pptp": 1, "baselines": 1}, 2) is None
    assert family_to_pin(shares, {"pptp": 3, "baselines": 1}, 4) == "baselines"
    # the undefended trial counts toward the total, toward no family
    assert family_to_pin({"pptp": 0.25}, {"pptp": 0}, 3) == "pptp"
    assert family_to_pin({"pptp": 0.25}, {"pptp": 1}, 6) is None


def _drive(searcher: StudySearch, objective, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Suggest and complete up to ``n`` trials one at a time; the kinds of the trained ones."""
    out = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        if config == "FINISHED":
            break
        assert isinstance(config, dict)
        params = {k: v for k, v in config.items() if k not in ("trial_number", "reuse")}
        params.pop(DUPLICATE_OF, None)
        out.append(params)
        searcher.on_trial_complete(f"t{i}", objective(params))
    return out


def _searcher(space, tmp_path: Path, **kwargs) -> StudySearch:  # type: ignore[no-untyped-def]
    return StudySearch(
        space=space.params,
        metric=space.study.metrics,
        mode=space.study.modes,
        sampler=build_sampler(space.study, source="t"),
        study_name=space.study.name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"),
        **kwargs,
    )


def _baselines_look_better(params):  # type: ignore[no-untyped-def]
    """An objective where any baseline beats any PPTP trial: TPE follows it."""
    baseline = params["defense.name"] != "none"
    return {"test_acc": 0.9 if baseline else 0.6, "attack_auc": 0.55 if baseline else 0.7}


def test_shares_give_each_family_its_half_where_tpe_alone_would_not(tmp_path: Path) -> None:
    free = load_space(write(tmp_path, FAMILIES.format(budget=""), "free.yaml"))
    shared = load_space(
        write(tmp_path, FAMILIES.format(budget="budget: {pptp: 0.5, baselines: 0.5}"))
    )
    assert shared.study.budget == {"pptp": 0.5, "baselines": 0.5}
    kinds = {}
    for name, space in (("free", free), ("shared", shared)):
        folder = tmp_path / name
        folder.mkdir()
        searcher = _searcher(space, folder, budget=24, shares=shares_for(space))
        trained = _drive(searcher, _baselines_look_better, 60)
        kinds[name] = [kind_of(space)(p) for p in trained]
    assert kinds["free"].count("pptp") < 8  # TPE gives most of the study to the baselines
    shared_kinds = kinds["shared"]
    assert shared_kinds.count("pptp") == shared_kinds.count("baseline") == 12
    # every prefix of the study: neither family more than one training behind
    for k in range(1, len(shared_kinds) + 1):
        head = shared_kinds[:k]
        assert abs(head.count("pptp") - head.count("baseline")) <= 1
    study = optuna.load_study(study_name="fam", storage=f"sqlite:///{folder / 'study.db'}")
    assert any("budget: pptp" in str(t.user_attrs.get(STEERED)) for t in study.trials)
    line = family_line(study.trials, kind_of(shared))
    assert line == "trainings per family: pptp 12, baseline 12"
    # pinned baselines go to the least-trained defense
    used = [t.params["defense.name"] for t in study.trials if t.params["defense.name"] != "none"]
    assert {"weight_decay", "relaxloss"} <= set(used)


class _Stuck(optuna.samplers.RandomSampler):
    """A sampler that keeps proposing the first choice (as a converged population does)."""

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return param_distribution.choices[0]


def test_repeats_are_reused_uncounted_and_steer_the_sampler_away(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    searcher = StudySearch(
        space={"x": CategoricalDistribution([0, 1, 2, 3, 4, 5])},
        metric=["a", "b"],
        mode=["max", "min"],
        study_name="s",
        storage=storage,
        sampler=_Stuck(seed=0),
        budget=4,
    )
    study = optuna.load_study(study_name="s", storage=storage)
    for i in range(60):
        config = searcher.suggest(f"t{i}")
        if config == "FINISHED":
            break
        assert isinstance(config, dict)
        searcher.on_trial_complete(f"t{i}", {"a": config["x"] / 10, "b": 0.5})
    trials = study.trials
    trained = [t for t in trials if t.user_attrs.get(DUPLICATE_OF) is None]
    repeats = [t for t in trials if t.user_attrs.get(DUPLICATE_OF) is not None]
    assert len({t.params["x"] for t in trained}) == len(trained) == 4  # the budget: 4 trainings
    assert repeats and all(t.state.name == "COMPLETE" for t in repeats)
    assert all(STEERED in t.user_attrs for t in trained[1:])  # found by random points
    assert rundir.finished_count(study) == 4  # repeats do not count toward n_trials
    line = repeat_line(trials)
    assert line is not None and f"{len(repeats)} of {len(trials)} proposals" in line


def test_a_space_with_nothing_unseen_ends_the_study(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    searcher = StudySearch(
        space={"x": CategoricalDistribution([0, 1])},
        metric=["a", "b"],
        mode=["max", "min"],
        study_name="s",
        storage=storage,
        budget=10,
    )
    results = []
    for i in range(60):
        config = searcher.suggest(f"t{i}")
        results.append(config)
        if config == "FINISHED":
            break
        assert isinstance(config, dict)
        searcher.on_trial_complete(f"t{i}", {"a": 0.5, "b": 0.5})
    assert results[-1] == "FINISHED" and len(results) < 60
    assert rundir.finished_count(optuna.load_study(study_name="s", storage=storage)) == 2


def test_repeats_in_a_row_are_followed_by_a_random_point(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    searcher = StudySearch(
        space={"x": optuna.distributions.FloatDistribution(0, 1)},
        metric=["a", "b"],
        mode=["max", "min"],
        study_name="s",
        storage=storage,
    )
    study = optuna.load_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 0.5})
    for i in range(3):  # trained once, then repeated twice
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"a": 0.5, "b": 0.5})
        if i < 2:
            study.enqueue_trial({"x": 0.5})
    searcher.suggest("t3")  # after two repeats in a row: a random point, marked as such
    last = study.trials[-1]
    assert "random point after 2 repeats" in last.user_attrs[STEERED]
    assert last.params["x"] != 0.5


@pytest.mark.parametrize(
    ("budget", "combine", "message"),
    [
        ("{pptp: 0.7, baselines: 0.5}", "false", "shares sum to 1.2"),
        ("{pptp: 0.5, defenses: 0.5}", "false", "study.budget.defenses: unknown family"),
        ("{pptp: 0.5}", "true", "needs study.combine: false"),
        ("{pptp: 0}", "false", "a share must be in (0, 1]"),
    ],
)
def test_bad_budgets_are_refused_naming_the_key(
    tmp_path: Path, budget: str, combine: str, message: str
) -> None:
    text = FAMILIES.format(budget=f"budget: {budget}")
    text = text.replace("combine: false", f"combine: {combine}")
    with pytest.raises(SpaceError, match=r"study\.budget") as err:
        load_space(write(tmp_path, text))
    assert message in str(err.value)
