"""Saved views of a study's runs table (search/tracking/saved_views.py): the UI's envelope, written
as
experiment tags. That the MLflow UI reads them is checked in a real browser
(tests/test_browser.py)."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures_tracking import fresh_store
from mlflow.tracking import MlflowClient

from search.tracking.saved_views import (
    PARETO_FILTER,
    PARETO_VIEW,
    SHARED_VIEW_TAG,
    TRIALS_VIEW,
    column,
    save_views,
    study_views,
)


def test_views_show_objectives_as_columns_sorted_by_the_first() -> None:
    trials, pareto = study_views([("test_acc", "maximize"), ("attack_tpr@0.1%fpr", "minimize")])
    assert (trials.key, pareto.key) == (TRIALS_VIEW, PARETO_VIEW)
    state = trials.state()
    assert state["orderByKey"] == "metrics.`test_acc`" and state["orderByAsc"] is False
    assert state["selectedColumns"][:3] == [
        "attributes.`Description`",
        "metrics.`test_acc`",
        "metrics.`attack_tpr_at_0.1pct_fpr`",  # the MLflow name of the metric
    ]
    assert "tags.`pareto`" in state["selectedColumns"]
    assert state["searchFilter"] == ""
    assert pareto.state()["searchFilter"] == PARETO_FILTER == "tags.pareto = 'true'"
    # a minimised first objective sorts ascending
    (view, _) = study_views([("attack_auc", "minimize"), ("test_acc", "maximize")])
    assert view.state()["orderByAsc"] is True


def test_envelope_is_the_ui_format() -> None:
    view = study_views([("test_acc", "maximize")])[0]
    envelope = json.loads(view.envelope(created_ms=5, now_ms=9))
    assert envelope["name"].startswith("PPTP: every trial")
    assert (envelope["createdAt"], envelope["updatedAt"]) == (5, 9)
    assert json.loads(envelope["state"]) == view.state()  # the state travels as a JSON string
    assert view.tag() == SHARED_VIEW_TAG + TRIALS_VIEW
    assert column("tags", "operator") == "tags.`operator`"


def test_save_views_writes_experiment_tags_and_keeps_creation_time(tmp_path: Path) -> None:
    client = MlflowClient(fresh_store(tmp_path))
    experiment = client.create_experiment("demo")
    views = study_views([("test_acc", "maximize"), ("attack_auc", "minimize")])
    save_views(client, experiment, views)
    tags = client.get_experiment(experiment).tags
    first = json.loads(tags[SHARED_VIEW_TAG + PARETO_VIEW])
    assert json.loads(first["state"])["searchFilter"] == PARETO_FILTER
    save_views(client, experiment, views)
    again = json.loads(client.get_experiment(experiment).tags[SHARED_VIEW_TAG + PARETO_VIEW])
    assert again["createdAt"] == first["createdAt"]
    assert again["updatedAt"] >= first["updatedAt"]
