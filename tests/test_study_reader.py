"""search.study.reader: the candidates are Optuna's front (or every feasible trial)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_pick import make_run

from pptp.errors import ConfigError
from search.study.reader import candidates, open_run, screening_references


def test_front_is_optunas_and_excludes_dominated(tmp_path: Path) -> None:
    run = open_run(make_run(tmp_path))
    front = candidates(run)
    assert sorted(c.number for c in front) == [0, 1, 2, 3]
    every = candidates(run, among="all")
    assert sorted(c.number for c in every) == [0, 1, 2, 3, 4]
    assert not next(c for c in every if c.number == 4).pareto
    assert every[0].attrs["protected_groups"] == "fc1" and every[0].value("seconds") == 1.5
    references = screening_references(run)  # the base recipe, paths made absolute
    assert references is not None and Path(references.attack.bank_dir).is_absolute()


def test_infeasible_trials_are_not_candidates(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, points=[(0.05, 0.5, 0.0), (0.9, 0.6, 0.01)])
    run = open_run(run_dir)
    assert [c.number for c in candidates(run, among="all")] == [1]


def test_a_study_folder_given_as_a_run_lists_its_runs(tmp_path: Path) -> None:
    study = tmp_path / "runs" / "tiny"
    for stamp in ("20261201-100000", "20261202-100000"):
        (study / stamp).mkdir(parents=True)
        (study / stamp / "study.db").touch()
    with pytest.raises(ConfigError, match="is a study's folder, not one run") as error:
        open_run(study)
    assert str(study / "20261202-100000") in str(error.value)  # the newest named first
    assert str(study / "20261201-100000") in str(error.value)
