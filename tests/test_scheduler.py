"""MO-ASHA (search/running/scheduler.py): constrained non-dominated sorting within a rung, the
stop decisions, trials told PRUNED with their last rung's values; and ``study.fidelity`` read
from a space. Constructed inputs, nothing trains."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from fixtures_ray import ray_tmp
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import TrialScheduler

from search.run import main
from search.running.samplers import StudySearch
from search.running.scheduler import (
    FINAL,
    RUNG,
    RUNG_VALUES,
    STOPPABLE,
    STOPPED_AT,
    MultiObjectiveASHA,
    best_first,
    pareto_ranks,
    rung_history,
    stopped_line,
)
from search.space import Constraint, Objective, SpaceError, load_space
from search.study import rundir
from tests.fixtures_space import MINIMAL, TINY_STUDY_FIXED, write

__all__ = ["ray_tmp"]  # the fixture, imported for its use below

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = (Objective("test_acc", "maximize"), Objective("attack_auc", "minimize"))


def test_pareto_ranks_peel_fronts() -> None:
    points = np.array([[3, 1], [1, 3], [2, 2], [1, 1], [0, 0], [2, 0.5]])
    assert pareto_ranks(points).tolist() == [0, 0, 0, 1, 2, 1]


def test_feasible_first_then_by_rank_then_crowding() -> None:
    points = np.array([[3.0, 1.0], [1.0, 3.0], [2.0, 2.0], [2.1, 2.1], [9.0, 9.0]])
    violations = np.array([0, 0, 0, 0, 0.5])  # the best point breaks a constraint
    order = best_first(points, violations)
    assert order[-1] == 4  # infeasible last, whatever its values
    assert set(order[:3]) == {0, 1, 3} and order[3] == 2  # (2, 2) is dominated by (2.1, 2.1)


def _result(epoch: int, acc: float, auc: float, **extra: float) -> dict[str, float]:
    return {RUNG: epoch, FINAL: 0, STOPPABLE: 1, "test_acc": acc, "attack_auc": auc, **extra}


def test_a_trial_outside_the_best_third_of_its_rung_is_stopped() -> None:
    asha = MultiObjectiveASHA(OBJECTIVES, reduction=3)

    def decide(name: str, result: dict[str, float]) -> str:
        return asha.on_trial_result(None, SimpleNamespace(trial_id=name), result)

    # fewer than 3 results at the rung: nothing to compare with, all go on
    assert decide("a", _result(3, 0.80, 0.60)) == TrialScheduler.CONTINUE
    assert decide("b", _result(3, 0.70, 0.70)) == TrialScheduler.CONTINUE
    assert decide("c", _result(3, 0.60, 0.75)) == TrialScheduler.STOP  # 1 of 3 go on: a
    assert decide("d", _result(3, 0.90, 0.55)) == TrialScheduler.CONTINUE  # dominates all
    assert asha.stopped == {"c": 3}
    # the end of training is never judged; never-stopped kinds are recorded, not stopped
    assert decide("c", {RUNG: 10, FINAL: 1, "test_acc": 0.1}) == TrialScheduler.CONTINUE
    never = _result(3, 0.10, 0.90, **{STOPPABLE: 0})
    assert decide("e", never) == TrialScheduler.CONTINUE


def test_a_non_dominated_rung_result_goes_on_whatever_its_arrival() -> None:
    asha = MultiObjectiveASHA(OBJECTIVES, reduction=2)
    trial = SimpleNamespace
    asha.on_trial_result(None, trial(trial_id="a"), _result(3, 0.8, 0.70))
    # less accurate but less attackable: on the rung's front, so it goes on
    assert asha.on_trial_result(None, trial(trial_id="b"), _result(3, 0.6, 0.6)) == "CONTINUE"
    assert asha.on_trial_result(None, trial(trial_id="c"), _result(3, 0.5, 0.65)) == "STOP"


def test_constraints_rank_an_infeasible_rung_result_last() -> None:
    asha = MultiObjectiveASHA(OBJECTIVES, (Constraint("test_acc", min=0.5),), reduction=2)
    trial = SimpleNamespace
    asha.on_trial_result(None, trial(trial_id="a"), _result(3, 0.6, 0.70))
    # lower attack AUC than anything, but below the accuracy bound: stopped
    assert asha.on_trial_result(None, trial(trial_id="b"), _result(3, 0.4, 0.5)) == "STOP"


def test_resume_starts_from_the_rungs_the_study_recorded() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc in (0.9, 0.8):
        t = study.ask()
        t.set_user_attr(RUNG_VALUES, {"3": {"test_acc": acc, "attack_auc": 0.6}})
        study.tell(t, [acc, 0.6])
    history = rung_history(study.trials, OBJECTIVES)
    asha = MultiObjectiveASHA(OBJECTIVES, reduction=3, history=history)
    # a third result, worse than both recorded before the resume: stopped
    assert asha.on_trial_result(None, SimpleNamespace(trial_id="x"), _result(3, 0.5, 0.7)) == (
        TrialScheduler.STOP
    )


def test_a_stopped_trial_is_pruned_with_its_last_rung_values(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    searcher = StudySearch(
        space={"x": optuna.distributions.FloatDistribution(0, 1)},
        metric=["test_acc", "attack_auc"],
        mode=["max", "min"],
        study_name="s",
        storage=storage,
        constraints=(Constraint("test_acc", min=0.5),),
    )
    searcher.suggest("t1")
    searcher.on_trial_result("t1", _result(3, 0.55, 0.62))
    searcher.on_trial_complete("t1", _result(10, 0.41, 0.66))  # Tune: the stopping result
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.state.name == "PRUNED" and trial.values is None
    assert trial.user_attrs[STOPPED_AT] == 10 and trial.user_attrs["test_acc"] == 0.41
    assert trial.user_attrs[RUNG_VALUES] == {
        "3": {"test_acc": 0.55, "attack_auc": 0.62},
        "10": {"test_acc": 0.41, "attack_auc": 0.66},
    }
    assert trial.system_attrs["constraints:test_acc>=0.5"] == pytest.approx(0.09)
    line = stopped_line([trial], 30)
    assert line is not None and "1 of 1 trainings (at epoch 10: 1); 10 of 30 epochs" in line


def test_fidelity_is_read_from_the_space_and_checked(tmp_path: Path) -> None:
    text = MINIMAL.replace("n_trials: 4", "n_trials: 4\n  fidelity: {rungs: [0.34], reduction: 2}")
    text = text.replace("train.epochs: 3", "train.epochs: 9")
    space = load_space(write(tmp_path, text))
    assert space.study.fidelity is not None
    assert space.study.fidelity.epochs(9) == (3,)
    assert space.study.fidelity.never_stop == ("rewind", "early_stopping")
    assert load_space(write(tmp_path, MINIMAL, "off.yaml")).study.fidelity is None  # default
    short = text.replace("train.epochs: 9", "train.epochs: 1")
    with pytest.raises(SpaceError, match=r"study\.fidelity\.rungs: no rung falls before"):
        load_space(write(tmp_path, short, "short.yaml"))
    odd = text.replace("reduction: 2", "reduction: 2, never_stop: [rewnd]")
    with pytest.raises(SpaceError, match=r"never_stop: unknown operator or defense 'rewnd'"):
        load_space(write(tmp_path, odd, "odd.yaml"))
    assert math.isclose(space.study.fidelity.rungs[0], 0.34)


FIDELITY_STUDY = """
study:
  name: tinyfid
  objectives: {{test_acc: maximize, attack_auc: minimize}}
  sampler: random
  n_trials: {n_trials}
  max_concurrent: 1                # one at a time: the rungs see the trials in a fixed order
  repeats: 2
  resources: {{cpus: 1, gpus: 0}}
  constraints:
    - {{metric: test_acc, min: 0.05}}
  fidelity: {{rungs: [0.3, 0.6], reduction: 2}}
""" + TINY_STUDY_FIXED + """
params:
  protect.operator: {{type: categorical, choices: [damp, anchor, noise]}}
  protect.strength: {{type: float, low: 0.0, high: 1.0}}
  protect.split: {{type: int, low: 1, high: 3}}
"""


@pytest.mark.slow
def test_a_fidelity_study_prunes_at_rungs_and_resumes_with_them(
    tmp_path: Path, ray_tmp: str, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write(tmp_path, FIDELITY_STUDY.format(n_trials=5, bank=tmp_path / "bank"), "f.yaml")

    def run(*extra: str) -> int:
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
        return main(["--space", str(space), "--output", str(tmp_path / "run"),
                     "--tracking-uri", store, *extra])  # fmt: skip

    assert run() == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="tinyfid", storage=rundir.storage(tmp_path / "run"))
    states = [t.state.name for t in study.trials]
    assert "PRUNED" in states and "COMPLETE" in states and len(states) == 5
    assert "stopped early:" in out and "epochs trained per seed" in out
    # the references hold their logits at the rungs (epochs 3 and 6 of 10)
    metas = [json.loads(p.read_text()) for p in (tmp_path / "bank").rglob("ref-*.json")]
    assert metas and all(m["rungs"] == [3, 6] for m in metas)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for t in study.trials:
        child = client.get_run(t.user_attrs["mlflow_run_id"])
        assert "3" in t.user_attrs[RUNG_VALUES]  # every trial reached the first rung
        if t.state.name == "PRUNED":
            epoch = t.user_attrs[STOPPED_AT]
            assert child.info.status == "KILLED"
            assert child.data.tags["fail_reason"].startswith(f"stopped early at epoch {epoch}")
            assert t.user_attrs["test_acc"] == t.user_attrs[RUNG_VALUES][str(epoch)]["test_acc"]
        elif t.state.name == "COMPLETE":
            assert child.info.status == "FINISHED" and len(t.values) == 2
        else:  # a trial that trained to the end at chance: a failure, as without fidelity
            assert child.info.status == "FAILED"
    report = (tmp_path / "run" / "report.html").read_text()
    assert "stopped early by the multi-fidelity scheduler" in report
    # resume: the new scheduler ranks against the rungs recorded before
    assert run("--resume", "--n-trials", "6") == 0
    study = optuna.load_study(study_name="tinyfid", storage=rundir.storage(tmp_path / "run"))
    assert rundir.finished_count(study) == 6
