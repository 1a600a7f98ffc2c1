"""The study's parent run in MLflow, driven from the search driver
(docs/design.md#tracking-layout-in-mlflow).

Layout in the tracking store::

    experiment <study name>
      parent run  (pptp.kind=study)   resolved space (space.yaml + params), git commit,
                                      space hash; pareto_front.csv/.png, trials.csv; n_trials,
                                      n_pareto, best_<objective>
        child run (pptp.kind=trial)   one per trial (search.tracking.trial_tracker)

The driver creates the parent; each trial process creates its own child and tags it with the
parent's id (``mlflow.parentRunId``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pptp.errors import ConfigError
from search.space import direction_sign
from search.study.pareto import rows_csv
from search.tracking.names import (
    TAG_FAIL_REASON,
    TAG_KIND,
    TAG_PARENT,
    TAG_PARETO,
    TAG_STUDY,
    TAG_TRIAL_NUMBER,
    metric_key,
)
from search.tracking.plots import plot_front
from search.tracking.store import (
    as_float,
    experiment_id,
    flatten,
    git_commit,
    log_metric_entities,
    log_params,
    now_ms,
    param_value,
    plain,
    set_tags,
    tag_value,
)

logger = logging.getLogger(__name__)

_END_STATUSES = ("FINISHED", "FAILED", "KILLED")


class ParentRunMissing(ConfigError):
    """The parent run a resume names is not in the tracking store (a lost or another store)."""


class StudyTracker:
    """The study's parent run, driven from the search driver (one process, one thread).

    Call :meth:`start` once, then :meth:`mark_stale_children_failed` when resuming (before any
    trial starts), :meth:`log_front` whenever the front should be refreshed (each call adds a
    step to the parent's ``n_trials``/``best_*`` metrics), and :meth:`finish` at the end.
    """

    def __init__(self, uri: str, study_name: str, *, run_dir: Path) -> None:
        self.uri = uri
        self.study_name = study_name
        self.run_dir = Path(run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        self._experiment_id: str | None = None
        self._parent_run_id: str | None = None
        self._pareto_tags: dict[str, str] = {}  # child run id -> pareto tag written

    @property
    def parent_run_id(self) -> str:
        if self._parent_run_id is None:
            raise RuntimeError("StudyTracker.start() has not been called")
        return self._parent_run_id

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            raise RuntimeError("StudyTracker.start() has not been called")
        return self._experiment_id

    def start(
        self,
        *,
        resolved_space: dict[str, Any],
        space_path: Path,
        space_sha256: str,
        parent_run_id: str | None = None,
        recreate_missing: bool = False,
    ) -> str:
        """Create the parent run (or reopen ``parent_run_id`` on resume) and log the space.

        A ``parent_run_id`` the store does not hold raises :class:`ParentRunMissing`, or, with
        ``recreate_missing`` (``--sync`` rebuilding a lost store), creates a new parent run.

        ``resolved_space`` is the space file after validation (sections ``study``, ``fixed``,
        ``params``). Params: each ``fixed`` key with its value, each searched key with
        ``search <distribution as JSON>``; on resume a param already logged with the same value
        is skipped, and one whose value changed is kept (MLflow params are immutable) with the
        new value under the tag ``changed_param.<key>`` and a warning. ``study`` settings are
        tags ``study.<key>`` (``n_trials`` changes when a study is extended). Returns the run id.
        """
        self._experiment_id = experiment_id(
            self.client, self.study_name, uri=self.uri, tags={TAG_STUDY: self.study_name}
        )
        commit = git_commit()
        tags = {
            TAG_KIND: "study",
            TAG_STUDY: self.study_name,
            "git_commit": commit,
            "mlflow.source.git.commit": commit,
            "space_sha256": space_sha256,
            "space_path": str(Path(space_path).resolve()),
            "run_dir": str(self.run_dir.resolve()),
        }
        study = resolved_space.get("study") or {}
        if isinstance(study, Mapping):
            for key, value in study.items():
                tags[metric_key(f"study.{key}")] = json.dumps(plain(value), sort_keys=True)
        if parent_run_id is not None:
            try:
                self._parent_run_id = self._reopen(parent_run_id, tags)
            except ParentRunMissing:
                if not recreate_missing:
                    raise
                logger.warning(
                    "MLflow parent run %s is not in %s: creating a new parent run",
                    parent_run_id,
                    self.uri,
                )
                parent_run_id = None
        if parent_run_id is None:
            run = self.client.create_run(self._experiment_id, run_name=self.study_name, tags=tags)
            self._parent_run_id = run.info.run_id
            logger.info(
                "MLflow parent run %s created in experiment %r (%s)",
                self._parent_run_id,
                self.study_name,
                self.uri,
            )
        self._log_space_params(resolved_space)
        with tempfile.TemporaryDirectory(prefix="pptp-space-") as tmp:
            path = Path(tmp) / "space.yaml"
            path.write_text(yaml.safe_dump(plain(resolved_space), sort_keys=False))
            self.client.log_artifact(self.parent_run_id, str(path))
        return self.parent_run_id

    def _reopen(self, run_id: str, tags: dict[str, str]) -> str:
        try:
            run = self.client.get_run(run_id)
        except MlflowException as err:
            raise ParentRunMissing(
                f"cannot resume: MLflow parent run {run_id} is not in {self.uri} ({err}); "
                "resume against the tracking URI the study started with, or, if that store was "
                "lost, rebuild it from the run directory with `python search/run.py --sync "
                "--output <run dir>` and resume then"
            ) from err
        if run.info.experiment_id != self._experiment_id:
            raise ConfigError(
                f"cannot resume: MLflow run {run_id} belongs to experiment "
                f"{run.info.experiment_id}, not to study {self.study_name!r} "
                f"({self._experiment_id})"
            )
        if run.info.lifecycle_stage == "deleted":
            logger.warning("MLflow parent run %s was deleted; restoring it", run_id)
            self.client.restore_run(run_id)
        old_sha = run.data.tags.get("space_sha256")
        if old_sha is not None and old_sha != tags["space_sha256"]:
            logger.warning(
                "space file changed since the study started (sha256 %s -> %s)",
                old_sha[:12],
                tags["space_sha256"][:12],
            )
            tags["previous_space_sha256"] = old_sha
        self.client.update_run(run_id, status="RUNNING")
        set_tags(self.client, run_id, tags)
        logger.info("MLflow parent run %s reopened", run_id)
        return run_id

    def _log_space_params(self, resolved_space: Mapping[str, Any]) -> None:
        wanted: dict[str, str] = {}
        fixed = resolved_space.get("fixed") or {}
        if isinstance(fixed, Mapping):
            for key, value in flatten(fixed).items():
                wanted[metric_key(key)] = param_value(value)
        params = resolved_space.get("params") or {}
        if isinstance(params, Mapping):
            for key, spec in params.items():
                text = json.dumps(plain(spec), sort_keys=True)
                wanted[metric_key(str(key))] = param_value(f"search {text}")
        existing = self.client.get_run(self.parent_run_id).data.params
        changed = {k: v for k, v in wanted.items() if k in existing and existing[k] != v}
        for key, value in changed.items():
            logger.warning(
                "param %s changed since the study started (%r -> %r); kept the old "
                "value, the new one is tag changed_param.%s",
                key,
                existing[key],
                value,
                key,
            )
        if changed:
            set_tags(
                self.client,
                self.parent_run_id,
                {metric_key(f"changed_param.{k}"): v for k, v in changed.items()},
            )
        log_params(
            self.client, self.parent_run_id, {k: v for k, v in wanted.items() if k not in existing}
        )

    def children(self, *, status: str | None = None) -> list[Any]:
        """The parent's child runs (``mlflow.entities.Run``), optionally only in ``status``."""
        query = f"tags.`{TAG_PARENT}` = '{self.parent_run_id}'"
        if status is not None:
            query += f" and attributes.status = '{status}'"
        runs: list[Any] = []
        token: str | None = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=query, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def mark_stale_children_failed(
        self, reason: str = "driver stopped before the trial finished"
    ) -> int:
        """Flip child runs still RUNNING to FAILED with ``fail_reason``; returns how many."""
        return self.mark_stale_children(reason, status="FAILED")

    def mark_stale_children(self, reason: str, *, status: str = "KILLED") -> int:
        """Flip child runs still RUNNING to ``status`` with ``fail_reason``; returns how many.

        Call when no trial of this study runs (on resume before any trial starts, after Ctrl-C
        once Ray is down): a child left RUNNING then belongs to a trial process that died with a
        driver. Interrupted trials end KILLED (Optuna: FAIL with ``interrupted``).
        """
        if status not in _END_STATUSES:
            raise ValueError(f"unknown end status {status!r}; use one of {_END_STATUSES}")
        stale = self.children(status="RUNNING")
        for run in stale:
            self.client.set_tag(run.info.run_id, TAG_FAIL_REASON, tag_value(reason))
            self.client.set_terminated(run.info.run_id, status=status)
        if stale:
            logger.warning("marked %d stale trial run(s) %s: %s", len(stale), status, reason)
        return len(stale)

    def stop_child(self, run_id: str, reason: str) -> None:
        """End the child run ``run_id`` KILLED with ``fail_reason`` when it is still RUNNING: a
        trial the multi-fidelity scheduler stopped, whose process may be ended before it ends
        its own run."""
        if self.client.get_run(run_id).info.status != "RUNNING":
            return
        self.client.set_tag(run_id, TAG_FAIL_REASON, tag_value(reason))
        self.client.set_terminated(run_id, status="KILLED")

    def fail_child(self, trial_number: int, reason: str, *, traceback: str = "") -> str | None:
        """End the RUNNING child run of trial ``trial_number`` FAILED with ``fail_reason`` and
        ``traceback.txt``: a trial whose process died leaves its run RUNNING. Returns the run's
        id (None when the trial never created one)."""
        query = (
            f"tags.`{TAG_PARENT}` = '{self.parent_run_id}' and "
            f"tags.`{TAG_TRIAL_NUMBER}` = '{int(trial_number)}' and attributes.status = 'RUNNING'"
        )
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=10)
        for run in runs:
            run_id = run.info.run_id
            self.client.set_tag(run_id, TAG_FAIL_REASON, tag_value(reason))
            if traceback:
                self.client.log_text(run_id, traceback, "traceback.txt")
            self.client.set_terminated(run_id, status="FAILED")
        return runs[0].info.run_id if runs else None

    def log_front(self, rows: list[dict[str, Any]], *, objectives: list[tuple[str, str]]) -> None:
        """Log the Pareto front and the trial table on the parent and tag the child runs.

        ``rows``: one dict per finished trial with ``trial`` (Optuna number), ``run_id`` (child
        run id or None), ``pareto`` (bool), the objective metrics and any other columns.
        ``objectives``: ``[(metric, "maximize"|"minimize"), ...]`` in the study's order.
        Artifacts ``pareto_front.csv`` (front rows, sorted by the first objective, best first),
        ``trials.csv`` (all rows, by trial number) and ``pareto_front.png``; metrics
        ``n_trials``, ``n_pareto`` and ``best_<objective>`` at step ``n_trials``.
        """
        if not objectives:
            raise ValueError("log_front needs at least one objective")
        signs = [direction_sign(direction) for _, direction in objectives]  # checks them too
        rows = sorted(rows, key=lambda r: int(r["trial"]))
        front = [r for r in rows if r.get("pareto")]
        first = objectives[0][0]
        front.sort(
            key=lambda r: (
                as_float(r.get(first)) is None,
                -signs[0] * (as_float(r.get(first)) or 0.0),
            )
        )
        names = [name for name, _ in objectives]
        with tempfile.TemporaryDirectory(prefix="pptp-front-") as tmp:
            folder = Path(tmp)
            (folder / "trials.csv").write_text(rows_csv(rows, names))
            (folder / "pareto_front.csv").write_text(rows_csv(front, names))
            plot_front(rows, objectives, folder / "pareto_front.png", title=self.study_name)
            self.client.log_artifacts(self.parent_run_id, str(folder))
        for row in rows:  # tag only what changed since the last call: one write per change
            run_id = str(row.get("run_id") or "")
            value = "true" if row.get("pareto") else "false"
            if run_id and self._pareto_tags.get(run_id) != value:
                self.client.set_tag(run_id, TAG_PARETO, value)
                self._pareto_tags[run_id] = value
        step = len(rows)
        now = now_ms()
        metrics = [
            Metric("n_trials", float(len(rows)), now, step),
            Metric("n_pareto", float(len(front)), now, step),
        ]
        for (name, _), sign in zip(objectives, signs, strict=True):
            values = [v for v in (as_float(r.get(name)) for r in rows) if v is not None]
            if values:
                best = max(values, key=lambda v: sign * v)
                metrics.append(Metric(metric_key(f"best_{name}"), best, now, step))
        log_metric_entities(self.client, self.parent_run_id, metrics)
        logger.info("Pareto front: %d of %d trials", len(front), len(rows))

    def finish(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` (FINISHED, FAILED or KILLED)."""
        if status not in _END_STATUSES:
            raise ValueError(f"unknown end status {status!r}; use one of {_END_STATUSES}")
        self.client.set_terminated(self.parent_run_id, status=status)
