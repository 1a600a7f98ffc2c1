"""The private APIs of Optuna, Ray and MLflow this project still uses, because no public one does
the job, checked against the installed versions.

``pyproject.toml`` pins each library below the next minor release after the one the code was
checked against (:data:`CHECKED`). An upgrade past the pin must come with a passing run of this
file: each test names the private attribute, where the project uses it, and the checked version.

Inventory (everything else in ``pptp/`` and ``search/`` uses public APIs):

- ``optuna.Study._storage``: ``search/study/rundir.py`` ``fail_interrupted`` (user attributes of a
trial
  the previous driver left RUNNING; the state itself goes through ``study.tell``);
- ``ray.tune.search.optuna.OptunaSearch._ot_trials``: ``search/running/samplers.py``
  ``StudySearch._optuna_trial`` (the Optuna trial behind a Tune trial: its number, its user
  attributes and constraints);
- ``mlflow.utils.validation._validate_model_name``, ``_validate_model_alias_name``,
  ``_validate_model_alias_name_reserved``: ``search/picking/model_registry.py``
  ``check_registry_names`` (MLflow's own name rules, checked before any training);
- ``mlflow.utils.validation.MAX_*`` (public names in an undocumented module): the batch sizes and
  length limits of ``search/tracking/store.py``;
- ``ray._private.worker._global_node`` (``head``, ``dead_processes()``,
  ``kill_all_processes(check_alive=, allow_graceful=, wait=)``): ``search/running/stopping.py``
  ``lost_ray_processes`` and ``_kill_local_ray`` (the Ray node this driver started: which of its
  system processes died, and killing the rest when a second signal or a lost GCS leaves no time
  for ``ray.shutdown``);
- ``optuna._hypervolume.compute_hypervolume``: ``search/comparing/fronts.py`` ``hypervolume`` and
  ``bench/localize_seeding.py`` (Optuna's WFG hypervolume; no public function computes one).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
import numpy as np
import optuna
import pytest
import ray
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from packaging.version import Version

from pptp.errors import ConfigError

CHECKED = {"optuna": "5.0.0", "ray": "2.60.0", "mlflow": "3.17.2"}
"""The versions the private uses were checked against (pyproject.toml pins below the next minor)."""

INSTALLED = {"optuna": optuna.__version__, "ray": ray.__version__, "mlflow": mlflow.__version__}


def changed(library: str, what: str, where: str, detail: str = "") -> str:
    """The failure message: what moved, where the project uses it, and what to do."""
    detail = f": {detail}" if detail else ""
    return (
        f"{library} {INSTALLED[library]}: {what} (private) changed{detail}."
        f" {where} relies on it; it was checked against {library} {CHECKED[library]}. Adapt "
        f"{where} (or use a public API if {library} has one now), then move the pin in "
        "pyproject.toml"
    )


@pytest.mark.parametrize("library", sorted(CHECKED))
def test_installed_versions_are_within_the_checked_minor(library: str) -> None:
    checked, installed = Version(CHECKED[library]), Version(INSTALLED[library])
    assert installed.release[:2] == checked.release[:2], (
        f"{library} {installed} is installed, but the private APIs this project uses were checked "
        f"against {library} {checked} (see this file's docstring); run this file and adapt"
    )


def test_optuna_study_storage_and_fail_interrupted(tmp_path: Path) -> None:
    from search.study import rundir

    where = "search/study/rundir.py fail_interrupted"
    study = optuna.create_study(storage=rundir.storage(tmp_path), study_name="s")
    storage = getattr(study, "_storage", None)
    assert isinstance(storage, optuna.storages.BaseStorage), changed(
        "optuna", "Study._storage", where, f"got {type(storage).__name__}"
    )
    running = study.ask({"x": FloatDistribution(0.0, 1.0)})
    done = study.ask({"x": FloatDistribution(0.0, 1.0)})
    study.tell(done, 1.0)
    assert rundir.fail_interrupted(study) == [running.number]
    trial = study.trials[running.number]
    assert trial.state == TrialState.FAIL, changed("optuna", "Study._storage", where)
    assert trial.user_attrs[rundir.INTERRUPTED] is True
    assert trial.user_attrs["fail_reason"].startswith("interrupted")
    assert study.trials[done.number].state == TrialState.COMPLETE
    assert rundir.fail_interrupted(study) == []


def test_ray_optuna_search_trials() -> None:
    from search.running.samplers import TRIAL_NUMBER, StudySearch

    where = "search/running/samplers.py StudySearch._optuna_trial"
    searcher = StudySearch(
        space={"x": FloatDistribution(0.0, 1.0)}, metric=["a", "b"], mode=["max", "min"]
    )
    params = searcher.suggest("tune-1")
    trials = getattr(searcher, "_ot_trials", None)
    assert isinstance(trials, dict) and isinstance(trials.get("tune-1"), optuna.Trial), changed(
        "ray", "OptunaSearch._ot_trials", where, f"got {type(trials).__name__}"
    )
    assert params is not None and params[TRIAL_NUMBER] == trials["tune-1"].number == 0
    searcher.on_trial_complete("tune-1", {"failed": 1, "fail_reason": "boom"})
    searcher.on_trial_complete("tune-1", {"a": 1.0, "b": 0.5})  # a second completion is ignored
    searcher.suggest("tune-2")
    searcher.on_trial_complete("tune-2", {"a": 1.0, "b": 0.5, "seconds": 2.0})
    study = trials["tune-2"].study
    states = [(t.state, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert states == [(TrialState.FAIL, "boom"), (TrialState.COMPLETE, None)]
    assert study.trials[1].values == [1.0, 0.5] and study.trials[1].user_attrs["seconds"] == 2.0


def test_mlflow_registry_name_validators() -> None:
    from mlflow.utils import validation

    from search.picking.model_registry import check_registry_names

    where = "search/picking/model_registry.py check_registry_names"
    for name in (
        "_validate_model_name",
        "_validate_model_alias_name",
        "_validate_model_alias_name_reserved",
    ):
        assert callable(getattr(validation, name, None)), changed(
            "mlflow", f"mlflow.utils.validation.{name}", where, "no such function"
        )
    check_registry_names("digits-cnn", "production")
    for name, alias, message in (
        ("a/b", "production", "cannot contain"),
        ("m", "latest", "reserved"),
        ("m", "v3", "reserved"),
        ("m", "has space", "alias"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_registry_names(name, alias)


def test_mlflow_validation_limits() -> None:
    from mlflow.utils import validation

    where = "search/tracking/store.py"
    for name in (
        "MAX_ENTITY_KEY_LENGTH",
        "MAX_METRICS_PER_BATCH",
        "MAX_PARAM_VAL_LENGTH",
        "MAX_PARAMS_TAGS_PER_BATCH",
        "MAX_TAG_VAL_LENGTH",
    ):
        value = getattr(validation, name, None)
        assert isinstance(value, int) and value > 0, changed(
            "mlflow", f"mlflow.utils.validation.{name}", where, f"got {value!r}"
        )


def test_optuna_compute_hypervolume() -> None:
    where = "search/comparing/fronts.py hypervolume, bench/localize_seeding.py"
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError as err:
        pytest.fail(changed("optuna", "optuna._hypervolume.compute_hypervolume", where, str(err)))
    losses = np.array([[1.0, 1.0], [0.5, 1.5]])  # two boxes up to (2, 2): 1 + 0.5 - 0.25
    assert compute_hypervolume(losses, np.array([2.0, 2.0])) == pytest.approx(1.25), changed(
        "optuna", "optuna._hypervolume.compute_hypervolume", where, "another value"
    )


def test_ray_global_node_processes() -> None:
    import inspect

    import ray._private.node as ray_node
    import ray._private.worker as ray_worker

    where = "search/running/stopping.py lost_ray_processes, _kill_local_ray"
    assert hasattr(ray_worker, "_global_node"), changed(
        "ray", "ray._private.worker._global_node", where, "no such attribute"
    )
    node = ray_node.Node
    assert callable(getattr(node, "dead_processes", None)), changed(
        "ray", "Node.dead_processes", where, "no such method"
    )
    params = inspect.signature(node.kill_all_processes).parameters
    assert {"check_alive", "allow_graceful", "wait"} <= set(params), changed(
        "ray", "Node.kill_all_processes", where, f"parameters {list(params)}"
    )
    assert "self.head = head" in inspect.getsource(node.__init__), changed(
        "ray", "Node.head", where, "no longer set in Node.__init__"
    )
