"""A failing trial is recorded as failed, with its reason, in MLflow and Optuna (no Ray)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.samplers import StudySearch, failure_reason
from search.space import load_space
from search.tracking import StudyTracker
from search.trainable import TrialContext, run_search_trial

SPACE = """
study: {{name: failing, n_trials: 2, sampler: random}}
fixed:
  data: {{name: digits, pool_size: 100, test_size: 50, val_size: 0}}
  model: {{name: mlp, width: 32, norm: none}}
  train: {{epochs: 10, batch_size: 10, augment: false, warmup_epochs: 0, device: cpu}}
  attack: {{attacks: [loss], bank_dir: {bank}}}
params:
  train.lr: {{type: float, low: 0.01, high: 1.0e+12, log: true}}
"""


@pytest.fixture
def context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrialContext:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    path = tmp_path / "failing.yaml"
    path.write_text(SPACE.format(bank=tmp_path / "bank"))
    space = load_space(path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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


def test_diverging_trial_reports_failure_and_its_mlflow_run_says_why(
    context: TrialContext,
) -> None:
    report = run_search_trial({"train.lr": 1.0e12, "trial_number": 7}, context)
    assert report["failed"] == 1 and "TrainingDiverged" in report["fail_reason"]
    run = MlflowClient(context.tracking_uri).get_run(report["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "training loss is" in run.data.tags["fail_reason"]
    ok = run_search_trial({"train.lr": 0.1, "trial_number": 8}, context)  # learns
    assert ok["failed"] == 0 and 0.0 <= ok["test_acc"] <= 1.0


def test_searcher_tells_optuna_fail_with_the_reason(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    searcher = StudySearch(
        space={"x": optuna.distributions.FloatDistribution(0, 1)},
        metric=["a", "b"],
        mode=["max", "min"],
        study_name="s",
        storage=storage,
    )
    for trial_id, result in [
        ("t1", {"failed": 1, "fail_reason": "out of memory: CUDA"}),
        ("t2", {"a": 0.9, "b": float("nan")}),
        ("t3", {"a": 0.9, "b": 0.6}),
    ]:
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, result)
    searcher.suggest("t4")
    searcher.on_trial_complete("t4", None, error=True)
    trials = optuna.load_study(study_name="s", storage=storage).trials
    states = [t.state.name for t in trials]
    assert states == ["FAIL", "FAIL", "COMPLETE", "FAIL"]
    assert trials[0].user_attrs["fail_reason"] == "out of memory: CUDA"
    assert "is nan" in trials[1].user_attrs["fail_reason"]
    assert "crashed" in trials[3].user_attrs["fail_reason"]


def test_failure_reason() -> None:
    assert failure_reason({"a": 1.0}, ["a"], error=False) is None
    assert failure_reason({}, ["a"], error=False) == "objective 'a' was not reported"
