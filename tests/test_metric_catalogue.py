"""pptp.metric_catalogue: every metric a trial reports is declared once, and a metric registered
there (plus its computation) reaches the Optuna trial, the Pareto table, the front CSV, the trial
table on the study's MLflow run and the trial's own MLflow run, with no other file touched."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from fixtures_tracking import fresh_store
from mlflow.tracking import MlflowClient

from pptp.config import TrialConfig
from pptp.errors import ConfigError
from pptp.metric_catalogue import (
    Metric,
    find_metric,
    format_value,
    lookup,
    metric_names,
    register_metric,
    shown_metrics,
    unregister_metric,
)
from pptp.result import TrialResult
from pptp.trial import run_trial
from search.running.samplers import StudySearch
from search.running.trainable import TrialContext, run_search_trial
from search.space import load_space
from search.study.pareto import format_front, front_csv
from search.study.trials import finished
from search.tracking.study_tracker import StudyTracker

SPACE = """
study: {{name: catalogue, n_trials: 1, sampler: random}}
fixed:
  data: {{name: digits, pool_size: 100, test_size: 50, val_size: 0, canaries: 6}}
  model: {{name: mlp, width: 32, norm: none}}
  train: {{epochs: 10, batch_size: 10, lr: 0.1, augment: false, warmup_epochs: 0, device: cpu}}
  attack: {{attacks: [loss, lira_offline], n_references: 2, bank_dir: {bank}}}
params:
  protect.strength: {{type: float, low: 0.1, high: 0.9}}
"""


def test_every_metric_a_trial_reports_is_declared(tmp_path: Path) -> None:
    cfg = TrialConfig.from_flat(
        {"data.pool_size": 100, "data.test_size": 50, "data.val_size": 0, "data.canaries": 6,
         "model.name": "mlp", "model.width": 32, "model.norm": "none", "train.epochs": 10,
         "train.batch_size": 10, "train.lr": 0.1,
         "train.augment": False, "train.warmup_epochs": 0, "train.device": "cpu",
         "attack.attacks": ["loss", "lira_offline"], "attack.n_references": 2,
         "attack.bank_dir": str(tmp_path / "bank")}
    )  # fmt: skip
    reported = [k for k in run_trial(cfg).metrics() if not k.startswith("seconds/")]
    assert [k for k in reported if find_metric(k) is None] == []
    listed = metric_names(["loss", "lira_offline"], canaries=True)
    assert set(reported) - {"epsilon"} <= set(listed)


def test_lookup_names_the_known_metrics_and_formats_are_per_metric() -> None:
    with pytest.raises(ConfigError, match=r"unknown metric 'acc'; known: test_acc, attack_auc"):
        lookup("acc")
    assert lookup("auc/rmia_online").key == "auc/{attack}"
    assert format_value("test_acc", 0.81234) == "0.8123" and format_value("epsilon", 3.14159) == (
        "3.14"
    )
    assert format_value("attack_auc", math.nan) == "-"
    assert [m.key for m in shown_metrics()][:2] == ["test_acc", "attack_auc"]


@pytest.fixture
def declared() -> Iterator[Metric]:
    metric = register_metric(
        Metric("memorised_share", "memorised share", "mem", "minimize",
               "share of members the target classifies better than every reference",
               recorded=True, shown=True)
    )  # fmt: skip
    yield metric
    unregister_metric(metric.key)


def test_a_registered_metric_reaches_every_table(
    declared: Metric, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two changes that add a metric: compute it (here: a patched TrialResult.metrics) and
    register it (the fixture). The rest reads the catalogue."""
    computed = TrialResult.metrics
    monkeypatch.setattr(
        TrialResult, "metrics", lambda self: {**computed(self), "memorised_share": 0.125}
    )
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(bank=tmp_path / "bank"))
    space = load_space(path)
    uri = fresh_store(tmp_path / "store")
    tracker = StudyTracker(uri, "catalogue", run_dir=tmp_path)
    tracker.start(resolved_space=space.resolved(), space_path=path, space_sha256=space.sha256)
    ctx = TrialContext(space, uri, tracker.experiment_id, tracker.parent_run_id, None, {})
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    searcher = StudySearch(
        space=dict(space.params), metric=space.study.metrics, mode=space.study.modes,
        study_name="catalogue", storage=storage,
    )  # fmt: skip

    sampled = searcher.suggest("t0")
    assert sampled is not None
    report = run_search_trial(sampled, ctx)
    searcher.on_trial_complete("t0", report)

    study = optuna.load_study(study_name="catalogue", storage=storage)
    assert study.trials[0].user_attrs["memorised_share"] == 0.125  # recorded on the trial
    trials = finished(study, space.study.objectives)
    table = format_front(trials, space.study.objectives)
    assert "memorised share" in table.splitlines()[0] and "0.1250" in table.splitlines()[2]
    rows = list(csv.DictReader(io.StringIO(front_csv(trials, space.study.objectives))))
    assert rows[0]["memorised_share"] == "0.125"
    objectives = [(o.metric, o.direction) for o in space.study.objectives]
    tracker.log_front([t.row() for t in trials], objectives=objectives)
    client = MlflowClient(uri)
    folder = Path(client.download_artifacts(tracker.parent_run_id, "trials.csv", str(tmp_path)))
    assert next(csv.DictReader(folder.open()))["memorised_share"] == "0.125"
    assert client.get_run(report["mlflow_run_id"]).data.metrics["memorised_share"] == 0.125
