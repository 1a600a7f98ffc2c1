"""On resume, a trial a stopped driver left RUNNING in Optuna is told how it ended from its
record in the run directory; the MLflow runs of the rest (interrupted) end KILLED, whatever end
their trial process gave them (search.study.reconcile)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search.space import Objective
from search.study import records, rundir
from search.study.reconcile import RECONCILED, end_interrupted_runs, tell_from_records
from search.tracking.names import TAG_TRIAL_NUMBER
from search.tracking.spool import RunSpool

OBJECTIVES = [Objective("test_acc", "maximize"), Objective("attack_auc", "minimize")]


def _record(
    run: Path, number: int, state: str, metrics: list[tuple[str, float, int, int]]
) -> None:
    spool = RunSpool(experiment_id="1", run_name=f"t{number}", metrics=metrics, status="FINISHED")
    reason = "RuntimeError: boom" if state == "FAIL" else None
    records.write(run, records.TrialRecord(number, state, reason, False, spool))


def test_running_trials_with_a_record_are_told_how_they_ended(tmp_path: Path) -> None:
    study = optuna.create_study(
        storage=rundir.storage(tmp_path), study_name="s", directions=["maximize", "minimize"]
    )
    for _ in range(4):
        study.ask({"x": FloatDistribution(0.0, 1.0)})
    _record(tmp_path, 0, "COMPLETE", [("test_acc", 0.5, 1, 0), ("test_acc", 0.8, 2, 1),
                            ("attack_auc", 0.6, 2, 0)])  # fmt: skip
    _record(tmp_path, 1, "FAIL", [])
    _record(tmp_path, 2, "COMPLETE", [("test_acc", 0.8, 2, 0)])  # no attack_auc: not told
    assert tell_from_records(study, tmp_path, OBJECTIVES) == [0, 1]
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.COMPLETE and trials[0].values == [0.8, 0.6]
    assert trials[0].user_attrs[RECONCILED] is True
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs["fail_reason"] == "RuntimeError: boom"
    assert [t.state for t in trials[2:]] == [TrialState.RUNNING] * 2
    assert rundir.fail_interrupted(study) == [2, 3]
    assert tell_from_records(study, tmp_path, OBJECTIVES) == []


@dataclass
class _Info:
    run_id: str
    status: str


@dataclass
class _Data:
    tags: dict[str, str]


@dataclass
class _Run:
    info: _Info
    data: _Data


@dataclass
class _Tracker:
    """The part of StudyTracker that end_interrupted_runs uses."""

    runs: list[_Run]
    ended: dict[str, str] = field(default_factory=dict)

    def children(self) -> list[_Run]:
        return self.runs

    @property
    def client(self) -> Any:
        return self

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        assert key == "fail_reason" and value.startswith("interrupted")

    def set_terminated(self, run_id: str, status: str) -> None:
        self.ended[run_id] = status


def test_the_runs_of_interrupted_trials_end_killed_whatever_their_status() -> None:
    runs = [
        _Run(_Info(f"r{n}-{status}", status), _Data({TAG_TRIAL_NUMBER: str(n)}))
        for n, status in ((2, "FINISHED"), (2, "KILLED"), (3, "FAILED"), (4, "FINISHED"))
    ]
    tracker = _Tracker(runs)
    assert end_interrupted_runs(tracker, [2, 3]) == 2  # type: ignore[arg-type]
    assert tracker.ended == {"r2-FINISHED": "KILLED", "r3-FAILED": "KILLED"}
