"""search.tracking.trial_tracker: a trial's child run ends FINISHED, FAILED or KILLED with its
reason, its epochs written first; its artifacts load without pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pytest
from fixtures_tracking import fake_result, start, store, study
from mlflow.tracking import MlflowClient

from search.tracking.study_tracker import StudyTracker
from search.tracking.trial_tracker import FAIL_REASON_CHARS, TrialTracker, write_trial_artifacts

__all__ = ["store", "study"]  # fixtures, imported for their use below


def test_exception_in_trial_marks_failed_and_propagates(study: StudyTracker) -> None:
    start(study)
    with (
        pytest.raises(FloatingPointError, match="loss is NaN"),
        TrialTracker(study.uri, study.experiment_id, study.parent_run_id, trial_number=7) as trial,
    ):
        trial.log_epoch(fake_result().history[0])
        raise FloatingPointError("loss is NaN at epoch 3\nmore detail")
    run = MlflowClient(study.uri).get_run(trial.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"] == "FloatingPointError: loss is NaN at epoch 3"
    assert run.data.tags["trial_number"] == "7"
    assert "epoch_loss" in run.data.metrics  # buffered epochs are written before the end


def test_fail_marks_failed_once(study: StudyTracker) -> None:
    start(study)
    with TrialTracker(study.uri, study.experiment_id, study.parent_run_id, trial_number=0) as trial:
        trial.fail("out of memory " + "x" * 1000 + "\ntraceback")
    run = MlflowClient(study.uri).get_run(trial.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"].startswith("out of memory x")
    assert len(run.data.tags["fail_reason"]) == FAIL_REASON_CHARS


def test_keyboard_interrupt_marks_killed(study: StudyTracker) -> None:
    start(study)
    with (
        pytest.raises(KeyboardInterrupt),
        TrialTracker(study.uri, study.experiment_id, study.parent_run_id, trial_number=3) as trial,
    ):
        raise KeyboardInterrupt
    assert MlflowClient(study.uri).get_run(trial.run_id).info.status == "KILLED"


def test_write_trial_artifacts(tmp_path: Path) -> None:
    result = fake_result(epochs=2)
    written = write_trial_artifacts(result, tmp_path)
    assert [p.name for p in written] == ["roc.png", "roc.npz", "mask.json", "history.csv"]
    with np.load(tmp_path / "roc.npz", allow_pickle=False) as arrays:
        assert list(arrays["attacks"]) == ["loss", "lira"]
    assert json.loads((tmp_path / "mask.json").read_text())["protected_groups"] == [
        "stem",
        "layer1",
    ]
    assert (tmp_path / "history.csv").read_text().count("\n") == 3  # header + 2 epochs
