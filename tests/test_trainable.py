"""One search trial without Ray: failures are data points with their reason in MLflow and Optuna;
MLflow failures never fail a trial; seeds repeat; duplicates are not trained again."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from fixtures_tracking import fresh_store
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.running.samplers import (
    DUPLICATE_OF,
    PER_SEED,
    RECORD,
    REUSE,
    StudySearch,
    failure_reason,
)
from search.running.trainable import TrialContext, run_search_trial
from search.space import load_space
from search.tracking.spool import RunSpool
from search.tracking.study_tracker import StudyTracker

SPACE = """
study: {{name: failing, n_trials: 2, sampler: random, repeats: {repeats}}}
fixed:
  data: {{name: digits, pool_size: 100, test_size: 50, val_size: 0}}
  model: {{name: mlp, width: 32, norm: none}}
  train: {{epochs: 10, batch_size: 10, augment: false, warmup_epochs: 0, device: cpu}}
  attack: {{attacks: [loss], bank_dir: {bank}}}
params:
  train.lr: {{type: float, low: 0.01, high: 1.0e+12, log: true}}
"""


def _context(tmp_path: Path, *, repeats: int = 1) -> TrialContext:
    path = tmp_path / "failing.yaml"
    path.write_text(SPACE.format(bank=tmp_path / "bank", repeats=repeats))
    space = load_space(path)
    uri = fresh_store(tmp_path / "store")
    tracker = StudyTracker(uri, "failing", run_dir=tmp_path)
    tracker.start(resolved_space=space.resolved(), space_path=path, space_sha256=space.sha256)
    return TrialContext(
        space=space,
        tracking_uri=uri,
        experiment_id=tracker.experiment_id,
        parent_run_id=tracker.parent_run_id,
        references=None,
        overrides={},
    )


@pytest.fixture
def context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrialContext:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return _context(tmp_path)


def test_diverging_trial_reports_failure_and_its_mlflow_run_says_why(
    context: TrialContext,
) -> None:
    report = run_search_trial({"train.lr": 1.0e12, "trial_number": 7}, context)
    assert report["failed"] == 1 and "TrainingDiverged" in report["fail_reason"]
    assert math.isnan(report["test_acc"]) and math.isnan(report["attack_auc"])
    client = MlflowClient(context.tracking_uri)
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "training loss is" in run.data.tags["fail_reason"]
    assert "traceback.txt" in {f.path for f in client.list_artifacts(run.info.run_id)}
    record = RunSpool.from_json(json.loads(report[RECORD]))
    assert record.status == "FAILED" and record.complete_in_mlflow and not record.artifacts
    ok = run_search_trial({"train.lr": 0.1, "trial_number": 8}, context)  # learns
    assert ok["failed"] == 0 and 0.0 <= ok["test_acc"] <= 1.0


def test_mlflow_failure_mid_trial_does_not_fail_it_and_the_record_keeps_everything(
    context: TrialContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise MlflowException("disk I/O error (the store is gone)")

    monkeypatch.setattr(MlflowClient, "log_artifacts", broken)
    report = run_search_trial({"train.lr": 0.1, "trial_number": 3}, context)
    assert report["failed"] == 0 and 0.0 < report["test_acc"] <= 1.0
    spool = RunSpool.from_json(json.loads(report[RECORD]))
    assert spool.error is not None and "log_artifacts" in spool.error
    assert not spool.complete_in_mlflow and spool.status == "FINISHED"
    assert {"roc.npz", "mask.json", "history.csv"} <= set(spool.artifacts)
    assert {"test_acc", "attack_auc", "epoch_loss"} <= {m[0] for m in spool.metrics}
    assert spool.params["train.lr"] == "0.1"


def test_unwritable_experiment_from_the_start_still_completes(context: TrialContext) -> None:
    from dataclasses import replace

    lost = replace(context, experiment_id="987654321")  # no such experiment: create_run fails
    report = run_search_trial({"train.lr": 0.1, "trial_number": 4}, lost)
    assert report["failed"] == 0 and report["mlflow_run_id"] is None
    spool = RunSpool.from_json(json.loads(report[RECORD]))
    assert spool.run_id is None and "create_run" in (spool.error or "")


def test_repeats_report_means_spreads_and_per_seed_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    ctx = _context(tmp_path, repeats=2)
    report = run_search_trial({"train.lr": 0.1, "trial_number": 0}, ctx)
    assert report["failed"] == 0 and report["repeats"] == 2
    per_seed = json.loads(report[PER_SEED])
    assert len(per_seed["test_acc"]) == 2 and len(per_seed["attack_auc"]) == 2
    assert report["test_acc"] == pytest.approx(sum(per_seed["test_acc"]) / 2)
    spread = abs(per_seed["test_acc"][0] - per_seed["test_acc"][1]) / math.sqrt(2)
    assert report["test_acc_sd"] == pytest.approx(spread)
    client = MlflowClient(ctx.tracking_uri)
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.metrics["test_acc"] == pytest.approx(report["test_acc"])
    assert "test_acc_sd" in run.data.metrics
    seeds = client.get_metric_history(run.info.run_id, "seed/test_acc")
    assert sorted(m.step for m in seeds) == [0, 1]
    assert len(client.get_metric_history(run.info.run_id, "seed1/epoch_loss")) == 10


def test_a_failing_repeat_fails_the_trial_naming_the_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    ctx = _context(tmp_path, repeats=2)
    report = run_search_trial({"train.lr": 1.0e12, "trial_number": 1}, ctx)
    assert report["failed"] == 1
    assert report["fail_reason"].startswith("seed 1/2 (train.seed 0): TrainingDiverged")


def test_a_duplicate_reuses_the_finished_trials_results_without_training(
    context: TrialContext,
) -> None:
    reused = {"test_acc": 0.91, "attack_auc": 0.55, "protected_groups": "fc1"}
    sampled = {
        "train.lr": 0.1,
        "trial_number": 9,
        DUPLICATE_OF: 2,
        REUSE: json.dumps(reused),
    }
    report = run_search_trial(sampled, context)
    assert report["failed"] == 0 and report[DUPLICATE_OF] == 2
    assert report["test_acc"] == 0.91 and report["seconds"] < 5
    run = MlflowClient(context.tracking_uri).get_run(report["mlflow_run_id"])
    assert run.data.tags[DUPLICATE_OF] == "2" and run.data.metrics["test_acc"] == 0.91
    assert "epoch_loss" not in run.data.metrics  # nothing was trained


def _searcher(tmp_path: Path) -> tuple[StudySearch, optuna.storages.RDBStorage]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    searcher = StudySearch(
        space={"x": optuna.distributions.FloatDistribution(0, 1)},
        metric=["a", "b"],
        mode=["max", "min"],
        study_name="s",
        storage=storage,
    )
    return searcher, storage


def test_searcher_tells_optuna_fail_with_the_reason(tmp_path: Path) -> None:
    searcher, storage = _searcher(tmp_path)
    for trial_id, result in [
        ("t1", {"failed": 1, "fail_reason": "out of memory: CUDA"}),
        ("t2", {"a": 0.9, "b": float("nan")}),
        ("t3", {"a": 0.9, "b": 0.6, PER_SEED: json.dumps({"a": [0.8, 1.0]}), "a_sd": 0.14}),
    ]:
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, result)
    searcher.suggest("t4")
    searcher.on_trial_complete("t4", None, error=True)  # a dead worker: waits for its reason
    searcher.suggest("t5")
    searcher.on_trial_complete("t5", None, error=True)
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state.name for t in study.trials] == [
        "FAIL",
        "FAIL",
        "COMPLETE",
        "RUNNING",
        "RUNNING",
    ]
    assert searcher.fail("t4", "worker process died (ActorDiedError: ...)") == 3
    assert searcher.fail_awaiting() == [4]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE", "FAIL", "FAIL"]
    assert trials[0].user_attrs["fail_reason"] == "out of memory: CUDA"
    assert "is nan" in trials[1].user_attrs["fail_reason"]
    assert trials[2].user_attrs[PER_SEED] == {"a": [0.8, 1.0]} and trials[2].user_attrs["a_sd"]
    assert trials[3].user_attrs["fail_reason"].startswith("worker process died")
    assert "crashed" in trials[4].user_attrs["fail_reason"]


def test_searcher_marks_a_finished_config_as_a_duplicate(tmp_path: Path) -> None:
    searcher, storage = _searcher(tmp_path)
    study = optuna.load_study(study_name="s", storage=storage)
    first = searcher.suggest("t1")
    assert first is not None and DUPLICATE_OF not in first
    searcher.on_trial_complete("t1", {"a": 0.9, "b": 0.6, "seconds": 3.0})
    study.enqueue_trial({"x": first["x"]})  # the same config proposed again
    again = searcher.suggest("t2")
    assert again is not None and again[DUPLICATE_OF] == 0
    assert json.loads(again[REUSE]) == {"a": 0.9, "b": 0.6}
    searcher.on_trial_complete("t2", {"a": 0.9, "b": 0.6, DUPLICATE_OF: 0})
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert trials[1].values == trials[0].values and trials[1].user_attrs[DUPLICATE_OF] == 0


def test_failure_reason() -> None:
    assert failure_reason({"a": 1.0}, ["a"], error=False) is None
    assert failure_reason({}, ["a"], error=False) == "objective 'a' was not reported"
