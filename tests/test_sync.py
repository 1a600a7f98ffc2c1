"""search.sync (no Ray, hand-made trials): the run directory's trial records rebuild what MLflow
lacks: a pending trial, a whole lost store (new parent, artifacts from the surviving artifact
folder), runs left RUNNING; each trial ends in MLflow exactly once, in Optuna's state."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import optuna
import yaml
from fixtures_tracking import SPACE, fake_result, fresh_store
from mlflow.tracking import MlflowClient

from search.space import load_space
from search.study import records, rundir
from search.sync import expected_status, store_identity, store_replaced, sync_run
from search.tracking.spool import RunSpool
from search.tracking.study_tracker import StudyTracker
from search.tracking.trial_tracker import TrialTracker

#: the tracking tests' space, made loadable (the noise operator needs GroupNorm)
SPACE_FILE = {**SPACE, "fixed": {**SPACE["fixed"], "model.norm": "group"}}


def _study_run(tmp_path: Path) -> tuple[Path, str]:
    """A run directory with trial 0 COMPLETE (in MLflow), trial 1 FAIL (MLflow never got it:
    pending) and trial 2 interrupted (its run left RUNNING); returns it and its store URI."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "space.yaml").write_text(yaml.safe_dump(SPACE_FILE))
    space = load_space(run_dir / "space.yaml")
    uri = fresh_store(tmp_path / "a")
    tracker = StudyTracker(uri, "demo", run_dir=run_dir)
    tracker.start(resolved_space=space.resolved(), space_path=space.path, space_sha256="0" * 64)
    study = optuna.create_study(
        storage=rundir.storage(run_dir), study_name="demo", directions=space.study.directions
    )
    result = fake_result(test_acc=0.9, auc=0.6)
    objectives = {"test_acc": 0.9, "attack_auc": result.metrics()["attack_auc"]}
    done = TrialTracker(uri, tracker.experiment_id, tracker.parent_run_id, trial_number=0)
    with done:
        done.log_params(result.config.to_flat())
        done.log_result(result, objectives=objectives)
    records.write(run_dir, records.from_spool_json(0, "COMPLETE", None, done.record()))
    lost = TrialTracker(uri, "424242", tracker.parent_run_id, trial_number=1)  # no experiment
    with lost:
        lost.fail("TrainingDiverged: loss is nan", traceback="Traceback ...\nTrainingDiverged")
    records.write(run_dir, records.from_spool_json(1, "FAIL", "TrainingDiverged", lost.record()))
    dist = {"protect.strength": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for number, values in ((0, list(objectives.values())), (1, None), (2, None)):
        trial = optuna.trial.create_trial(
            params={"protect.strength": 0.1 * number},
            distributions=dist,
            values=values,
            state=optuna.trial.TrialState.COMPLETE if values else optuna.trial.TrialState.FAIL,
            user_attrs={rundir.INTERRUPTED: True} if number == 2 else {},
        )
        study.add_trial(trial)
    client = MlflowClient(uri)
    client.create_run(
        tracker.experiment_id,
        tags={"mlflow.parentRunId": tracker.parent_run_id, "trial_number": "2"},
    )
    rundir.write_state(
        run_dir,
        rundir.RunState(
            study_name="demo",
            space_path=str(space.path),
            space_sha256="0" * 64,
            tracking_uri=uri,
            parent_run_id=tracker.parent_run_id,
            experiment_id=tracker.experiment_id,
        ),
    )
    return run_dir, uri


def _children(uri: str, run_dir: Path) -> dict[int, list[object]]:
    state = rundir.read_state(run_dir)
    out: dict[int, list[object]] = {}
    for run in MlflowClient(uri).search_runs([state.experiment_id or ""]):
        if run.data.tags.get("mlflow.parentRunId") == state.parent_run_id:
            out.setdefault(int(run.data.tags["trial_number"]), []).append(run)
    return out


def test_sync_replays_the_pending_trial_and_ends_the_stale_run(tmp_path: Path) -> None:
    run_dir, uri = _study_run(tmp_path)
    assert records.read_all(run_dir)[1].pending and not records.read_all(run_dir)[0].pending
    report = sync_run(run_dir)
    assert report.replayed == [1] and not report.missing
    children = _children(uri, run_dir)
    assert {n: len(runs) for n, runs in children.items()} == {0: 1, 1: 1, 2: 1}
    failed = children[1][0]
    assert failed.info.status == "FAILED"  # type: ignore[attr-defined]
    assert failed.data.tags["fail_reason"] == "TrainingDiverged: loss is nan"  # type: ignore[attr-defined]
    names = {f.path for f in MlflowClient(uri).list_artifacts(failed.info.run_id)}  # type: ignore[attr-defined]
    assert "traceback.txt" in names
    assert children[2][0].info.status == "KILLED"  # type: ignore[attr-defined]
    assert not records.read_all(run_dir)[1].pending
    parent = MlflowClient(uri).get_run(rundir.read_state(run_dir).parent_run_id or "")
    assert parent.info.status == "KILLED"  # 1 of the space's 4 trials finished


def test_sync_rebuilds_a_lost_store_from_the_run_directory(tmp_path: Path) -> None:
    run_dir, _ = _study_run(tmp_path)
    old_parent = rundir.read_state(run_dir).parent_run_id
    new = fresh_store(tmp_path / "b")  # the old database is gone; its artifact folder is not
    report = sync_run(run_dir, new)
    state = rundir.read_state(run_dir)
    assert state.tracking_uri == new and state.parent_run_id != old_parent
    assert sorted(report.replayed) == [0, 1] and not report.missing
    children = _children(new, run_dir)
    assert {n: len(runs) for n, runs in children.items()} == {0: 1, 1: 1}
    done = children[0][0]
    study = optuna.load_study(study_name="demo", storage=rundir.storage(run_dir))
    assert done.info.status == expected_status(study.trials[0])  # type: ignore[attr-defined]
    assert done.data.metrics["test_acc"] == study.trials[0].values[0]  # type: ignore[attr-defined]
    names = {f.path for f in MlflowClient(new).list_artifacts(done.info.run_id)}  # type: ignore[attr-defined]
    assert {"roc.png", "roc.npz", "mask.json", "history.csv"} <= names
    again = sync_run(run_dir)  # idempotent: nothing left to replay
    assert again.replayed == [] and not again.missing


def test_spool_round_trip_and_store_identity(tmp_path: Path) -> None:
    spool = RunSpool(experiment_id="1", run_name="trial-0001", tags={"a": "b"})
    spool.add_params({"train.lr": 0.1})
    spool.artifacts["x/y.txt"] = b"\x00\x01"
    back = RunSpool.from_json(spool.to_json(with_artifacts=True))
    assert back == spool
    assert RunSpool.from_json(spool.to_json(with_artifacts=False)).artifacts == {}
    uri = fresh_store(tmp_path / "s")
    identity = store_identity(uri)
    assert identity is not None and not store_replaced(uri, identity)
    db = tmp_path / "s" / "mlflow.db"
    db.rename(tmp_path / "s" / "old.db")
    db.write_bytes((tmp_path / "s" / "old.db").read_bytes())  # a new file in its place
    assert store_replaced(uri, identity)
    assert store_identity("http://127.0.0.1:5000") is None
    assert dataclasses.replace(spool, status="FINISHED").status == "FINISHED"
