"""Helpers shared by the tracking tests: a fresh SQLite store per test module (copied from one
template, since creating MLflow's tables takes seconds), hand-made trial results, and the calls a
driver and a trial make. Fixtures (import them into a test module to use them there):
:func:`store` and :func:`study` (MLflow telemetry is off for every test: conftest.py)."""

from __future__ import annotations

import atexit
import csv
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pptp.config import TrialConfig
from pptp.metrics import AttackMetrics, RocCurve
from pptp.result import TrialResult
from pptp.train import EpochLog
from search.tracking.study_tracker import StudyTracker
from search.tracking.trial_tracker import TrialTracker

OBJECTIVES = [("test_acc", "maximize"), ("attack_auc", "minimize")]
SPACE: dict[str, Any] = {
    "study": {"name": "demo", "objectives": dict(OBJECTIVES), "n_trials": 4, "seed": 0},
    "fixed": {"data.name": "digits", "train": {"epochs": 3}},
    "params": {
        "protect.strength": {"type": "float", "low": 0.0, "high": 1.0},
        "protect.operator": {"type": "categorical", "choices": ["noise", "damp"]},
    },
}

_template: Path | None = None


def fresh_store(folder: Path) -> str:
    """``sqlite:///<folder>/mlflow.db``, a copy of an empty store with MLflow's tables."""
    global _template
    if _template is None:
        tmp = Path(tempfile.mkdtemp(prefix="pptp-mlflow-template-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db").search_experiments()
        _template = tmp / "mlflow.db"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template, folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store per module. Tests use their own study (experiment) names, so they do not
    see each other's runs."""
    return fresh_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def study(store: str, request: pytest.FixtureRequest, tmp_path: Path) -> StudyTracker:
    """A study tracker named after the test, its run folder in the test's ``tmp_path``."""
    return StudyTracker(store, f"study-{request.node.name}", run_dir=tmp_path / "run")


def _roc(auc_like: float) -> AttackMetrics:
    fpr = np.array([0.0, 0.001, 0.01, 0.5, 1.0])
    tpr = np.array([0.0, 0.01 * auc_like, 0.05 * auc_like, 0.7, 1.0])
    roc = RocCurve(fpr=fpr, tpr=tpr, thresholds=np.array([np.inf, 3.0, 2.0, 1.0, 0.0]))
    return AttackMetrics(
        auc=auc_like, tpr_at_0_1pct_fpr=float(tpr[1]), tpr_at_1pct_fpr=float(tpr[2]),
        balanced_accuracy=0.6, roc=roc,
    )  # fmt: skip


def fake_result(*, test_acc: float = 0.9, auc: float = 0.6, epochs: int = 3) -> TrialResult:
    cfg = TrialConfig().replace(**{"protect.operator": "damp", "protect.strength": 0.5})
    history = tuple(
        EpochLog(e, loss=1.0 / (e + 1), train_acc=0.5 + 0.01 * e, test_acc=0.4 + 0.01 * e,
                 val_acc=None if e == 0 else 0.45, lr=0.1 / (e + 1), seconds=0.25)
        for e in range(epochs)
    )  # fmt: skip
    return TrialResult(
        config=cfg, test_acc=test_acc, train_acc=0.99,
        attacks={"loss": _roc(auc - 0.05), "lira": _roc(auc)},
        history=history, timings={"train": 1.5, "attack": 0.1},
        protected_groups=("stem", "layer1"), mask={"stem": True, "layer1": True, "head": False},
    )  # fmt: skip


def run_trial(study: StudyTracker, number: int, result: TrialResult) -> str:
    with TrialTracker(
        study.uri, study.experiment_id, study.parent_run_id, trial_number=number
    ) as trial:
        trial.log_params(result.config.to_flat())
        for log in result.history:
            trial.log_epoch(log)
        objectives = {"test_acc": result.test_acc, "attack_auc": result.metrics()["attack_auc"]}
        trial.log_result(result, objectives=objectives)
        return trial.run_id


def start(study: StudyTracker, **kwargs: Any) -> str:
    return study.start(
        resolved_space=SPACE, space_path=Path("spaces/demo.yaml"), space_sha256="0" * 64, **kwargs
    )


def artifact_names(client: MlflowClient, run_id: str) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id)}


def read_csv(client: MlflowClient, run_id: str, name: str, dst: Path) -> list[dict[str, str]]:
    path = client.download_artifacts(run_id, name, str(dst))
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
