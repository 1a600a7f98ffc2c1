"""Saved views of a study's runs table in the MLflow UI: objectives as columns, no clicking.

MLflow's runs table shows no metric columns until a person picks them, and nests the trials,
collapsed, under the study's run. MLflow 3's UI has *saved views* (the "Views" menu above the
runs table): each is an experiment tag ``mlflow.sharedViewState.<key>`` whose value is a JSON
envelope ``{"name", "createdAt", "updatedAt", "state"}``, ``state`` being the JSON of the
table's search facets (``searchFilter``, ``orderByKey``, ``orderByAsc``, ...) and UI state
(``selectedColumns``, ``columnWidths``, ...). The same key opens the view from a URL::

    #/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=<key>

This module writes two such views per study (:func:`study_views`):

- ``pptp-trials`` ("PPTP: every trial"): the Description column (each trial's objectives with
  their spread, :mod:`search.study.naming`), the objective metrics, operator, strength, protected
  groups, defense and the Pareto tag as columns, sorted by the first objective. Sorting by a
  metric lists the trials flat (the UI nests child runs only when sorting by start time).
- ``pptp-pareto`` ("PPTP: Pareto front"): the same, filtered by ``tags.pareto = 'true'``.

The envelope is the UI's own format, not a documented API: it was read from MLflow 3.17.2's UI
bundle and checked in headless Chromium (``tests/test_browser.py``). An MLflow whose UI reads it
differently shows its "share key is invalid" notice and the plain runs table; nothing else
depends on it. Opening a view shows MLflow's "You're viewing a shared view" banner.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from search.tracking.names import TAG_PARETO, metric_key

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

#: experiment-tag prefix of the MLflow UI's saved views (MLflow 3.x UI)
SHARED_VIEW_TAG = "mlflow.sharedViewState."
TRIALS_VIEW = "pptp-trials"
PARETO_VIEW = "pptp-pareto"
PARETO_FILTER = f"tags.{TAG_PARETO} = 'true'"

#: trial-run tags (search.tracking.trial_tracker) and params shown after the objectives
TAG_COLUMNS = ("operator", "strength", "protected_groups")
PARAM_COLUMNS = ("defense.name",)
RUN_NAME_WIDTH = 280  # pixels: "t07 noise s=0.46 block3-head" fits


def column(kind: str, key: str) -> str:
    """The runs table's column id: ``metrics.`test_acc```, ``tags.`operator```, ...

    ``kind`` is ``metrics``, ``params``, ``tags`` or ``attributes`` (``Run Name``,
    ``Description``, ``Duration``, ...).
    """
    return f"{kind}.`{key}`"


@dataclass(frozen=True)
class SavedView:
    """One saved view of an experiment's runs table (module docstring)."""

    key: str
    name: str
    order_by: str  # a column id
    ascending: bool
    columns: tuple[str, ...]
    search_filter: str = ""
    column_widths: Mapping[str, int] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """The view's state as the UI stores it (search facets and UI state, one dict)."""
        return {
            "searchFilter": self.search_filter,
            "orderByKey": self.order_by,
            "orderByAsc": self.ascending,
            "startTime": "ALL",
            "lifecycleFilter": "Active",
            "selectedColumns": list(self.columns),
            "columnWidths": dict(self.column_widths),
        }

    def tag(self) -> str:
        """The experiment tag's key."""
        return SHARED_VIEW_TAG + self.key

    def envelope(self, *, created_ms: int | None = None, now_ms: int | None = None) -> str:
        """The experiment tag's value; ``created_ms`` kept from an earlier save."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return json.dumps(
            {
                "name": self.name,
                "createdAt": now if created_ms is None else created_ms,
                "updatedAt": now,
                "state": json.dumps(self.state(), sort_keys=True),
            }
        )


def study_views(objectives: Sequence[tuple[str, str]]) -> tuple[SavedView, SavedView]:
    """The ``pptp-trials`` and ``pptp-pareto`` views for a study's objectives.

    ``objectives``: ``(metric, "maximize"|"minimize")`` in the study's order, the project's
    metric names (``attack_tpr@0.1%fpr``; :func:`~search.tracking.names.metric_key` maps them).
    """
    if not objectives:
        raise ValueError("a study has at least one objective")
    metrics = [column("metrics", metric_key(m)) for m, _ in objectives]
    columns = (
        column("attributes", "Description"),
        *metrics,
        *(column("tags", t) for t in TAG_COLUMNS),
        *(column("params", p) for p in PARAM_COLUMNS),
        column("tags", TAG_PARETO),
    )
    first, direction = objectives[0]
    common: dict[str, Any] = {
        "order_by": metrics[0],
        "ascending": direction == "minimize",
        "columns": columns,
        "column_widths": {column("attributes", "Run Name"): RUN_NAME_WIDTH},
    }
    return (
        SavedView(TRIALS_VIEW, f"PPTP: every trial (by {first})", **common),
        SavedView(PARETO_VIEW, "PPTP: Pareto front", search_filter=PARETO_FILTER, **common),
    )


def save_views(client: MlflowClient, experiment_id: str, views: Sequence[SavedView]) -> None:
    """Write ``views`` as experiment tags (``client``: an :class:`mlflow.MlflowClient`);
    a view saved before keeps its creation time."""
    tags = client.get_experiment(experiment_id).tags
    for view in views:
        created = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            created = int(json.loads(tags.get(view.tag(), ""))["createdAt"])
        client.set_experiment_tag(experiment_id, view.tag(), view.envelope(created_ms=created))
