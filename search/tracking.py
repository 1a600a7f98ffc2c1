"""MLflow glue for the search (DESIGN.md §5): one experiment per study, one parent run per study,
one nested child run per trial.

Layout in the tracking store::

    experiment <study name>
      parent run  (pptp.kind=study)   resolved space (space.yaml + params), git commit,
                                      space hash; pareto_front.csv/.png, trials.csv; n_trials,
                                      n_pareto, best_<objective>
        child run (pptp.kind=trial)   one per trial, tag mlflow.parentRunId = parent id; trial
                                      config params, per-epoch curves, final metrics, roc.png,
                                      roc.npz, mask.json, history.csv; pareto=true|false

Trials run in Ray worker processes, so nothing here relies on MLflow's global "active run" state:
every call goes through :class:`mlflow.MlflowClient` with an explicit run id (the driver creates
the parent; each trial process creates its own child and tags it with the parent's id).

Metric names: MLflow accepts only alphanumerics, ``_ - . / :`` and spaces, so the project's metric
names (``tpr@0.1%fpr/lira``) go through :func:`metric_key` (``tpr_at_0.1pct_fpr/lira``).

Embedded store: ``sqlite:///<repo>/mlflow/mlflow.db`` (:func:`default_tracking_uri`). For any
``sqlite`` store, experiments created here put their artifacts in ``artifacts/`` beside the
database file, as ``file://`` URIs (MLflow's own default is ``./mlruns`` under whatever directory
the process happens to run in, which differs between the driver and Ray workers). For a tracking
server the server decides where artifacts go. See ``mlflow/README.md`` for the UI command.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from pptp.errors import ConfigError
from pptp.metrics import plot_roc
from pptp.train import EpochLog
from pptp.trial import TrialResult

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]

#: tag keys shared with the search driver, pick.py and the docs
TAG_KIND = "pptp.kind"
TAG_PARENT = "mlflow.parentRunId"
TAG_FAIL_REASON = "fail_reason"
TAG_PARETO = "pareto"
TAG_TRIAL_NUMBER = "trial_number"
TAG_STUDY = "pptp.study"

#: longest ``fail_reason`` kept (the full traceback belongs in the trial's log)
FAIL_REASON_CHARS = 500

#: column order of trials.csv / pareto_front.csv after trial, run_id, pareto and the objectives
FRONT_COLUMNS = (
    "protected_groups",
    "operator",
    "strength",
    "test_acc",
    "attack_auc",
    "attack_tpr@0.1%fpr",
)

#: characters the project's metric names use that MLflow rejects, and what replaces them
METRIC_KEY_REPLACEMENTS = {"@": "_at_", "%": "pct_"}

_SQL_SERVER_SCHEMES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- ]")


class TrackingUnavailable(ConfigError):
    """The tracking URI cannot be used (server down, store not writable, unknown scheme)."""


# --------------------------------------------------------------------------------------------
# URIs and checks


def default_tracking_uri() -> str:
    """The embedded store: a SQLite file in the working tree's ``mlflow/`` folder."""
    return f"sqlite:///{REPO_ROOT}/mlflow/mlflow.db"


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded store.

    A relative SQLite path (``sqlite:///mlflow.db``) is made absolute against the current
    directory here, on the driver: Ray workers run in other directories and must reach the same
    file. Trailing slashes of server URIs are dropped.
    """
    chosen = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not chosen:
        return default_tracking_uri()
    scheme = urllib.parse.urlsplit(chosen).scheme.lower()
    if scheme == "sqlite":
        path, query = _sqlite_path(chosen)
        if path is not None and not path.is_absolute():
            return f"sqlite:///{path.resolve()}{query}"
        return chosen
    if scheme in ("http", "https"):
        return chosen.rstrip("/")
    return chosen


def check_tracking(uri: str, *, timeout_s: float = 10.0) -> None:
    """Raise :class:`TrackingUnavailable` with one clear message unless ``uri`` can be used.

    - ``http(s)://``: one GET of the experiments-search endpoint with ``timeout_s`` (MLflow's own
      client retries with backoff for minutes before failing); credentials from
      ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` are sent.
    - ``sqlite:///``: the database's folder is created if needed and must be writable.
    - ``postgresql``/``mysql``/``mssql``: a TCP connection to the database host must open.
    - anything else: error.
    """
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_http(uri, timeout_s=timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme.split("+")[0] in _SQL_SERVER_SCHEMES:
        _check_tcp(uri, timeout_s=timeout_s)
    else:
        raise TrackingUnavailable(
            f"tracking URI {uri!r} has an unsupported scheme {scheme or '(none)'!r}; use "
            "http(s)://host:port for a tracking server or sqlite:///path/to/mlflow.db for a "
            "local store (fix --tracking-uri or MLFLOW_TRACKING_URI)"
        )


def _sqlite_path(uri: str) -> tuple[Path | None, str]:
    """``sqlite:///rel.db`` -> (Path("rel.db"), ""); ``sqlite:////abs.db?x=1`` -> (/abs.db, "?x=1").

    None for an in-memory database (``sqlite://`` or ``sqlite:///:memory:``).
    """
    rest, _, query = uri.partition("?")
    query = f"?{query}" if query else ""
    prefix = "sqlite:///"
    if not rest.lower().startswith(prefix):
        return None, query
    raw = rest[len(prefix) :]
    if raw in ("", ":memory:"):
        return None, query
    return Path(raw), query


def _check_sqlite(uri: str) -> None:
    path, _ = _sqlite_path(uri)
    if path is None:
        raise TrackingUnavailable(
            f"tracking URI {uri!r} is an in-memory SQLite database, which trial processes "
            "cannot share; give a file, e.g. sqlite:///mlflow/mlflow.db (fix --tracking-uri)"
        )
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise PermissionError(f"{path} is not readable and writable")
    except OSError as err:
        raise TrackingUnavailable(
            f"tracking store {uri!r} is not usable: cannot write to {folder} ({err}); fix the "
            "folder's permissions or give another --tracking-uri"
        ) from err


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        secret = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        return {"Authorization": f"Basic {base64.b64encode(secret).decode()}"}
    return {}


def _tls_context() -> ssl.SSLContext | None:
    """The TLS settings MLflow's own client honours: a CA bundle or no verification."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cafile) if cafile else None


def _check_http(uri: str, *, timeout_s: float) -> None:
    probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(probe, headers=_auth_headers(), method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=_tls_context()) as response:
            response.read(1)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise TrackingUnavailable(
                f"tracking server {uri} refused access (HTTP {err.code}); set "
                "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
            ) from err
        raise TrackingUnavailable(
            f"tracking server {uri} answered HTTP {err.code} to {probe}; is it an MLflow "
            "tracking server? Fix --tracking-uri (or MLFLOW_TRACKING_URI)"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(
            f"tracking server {uri} is not reachable ({reason}; waited at most {timeout_s:g} s); "
            "start it (see mlflow/README.md, e.g. `mlflow server --backend-store-uri "
            "sqlite:///mlflow/mlflow.db --host 127.0.0.1 --port 5000`) or fix --tracking-uri"
        ) from err


def _check_tcp(uri: str, *, timeout_s: float) -> None:
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower().split("+")[0]
    host = parts.hostname or "localhost"
    port = parts.port or _SQL_SERVER_SCHEMES[scheme]
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        raise TrackingUnavailable(
            f"tracking database {parts.scheme}://{host}:{port} is not reachable ({err}); start "
            "the database or fix --tracking-uri"
        ) from err


def git_commit(repo: Path = REPO_ROOT) -> str:
    """``HEAD``'s commit hash, with ``-dirty`` if tracked files differ from it; else ``unknown``.

    Untracked files do not count (``git describe --dirty`` semantics). ``unknown`` outside a git
    work tree, without git, or before the first commit.
    """

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--verify", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


# --------------------------------------------------------------------------------------------
# names and values


def metric_key(name: str) -> str:
    """A metric, param or tag name MLflow accepts, from one of the project's names.

    ``@`` -> ``_at_``, ``%`` -> ``pct_`` (:data:`METRIC_KEY_REPLACEMENTS`), so
    ``tpr@0.1%fpr/lira`` -> ``tpr_at_0.1pct_fpr/lira``; any other character outside
    ``[A-Za-z0-9_ ./-]`` -> ``_``; empty, ``.`` and ``..`` path segments are dropped (MLflow
    rejects names that a path normalisation would change); at most 250 characters. Names that are
    already valid come back unchanged, so the function is idempotent.
    """
    out = name
    for char, replacement in METRIC_KEY_REPLACEMENTS.items():
        out = out.replace(char, replacement)
    out = _INVALID_KEY_CHARS.sub("_", out)
    out = "/".join(seg for seg in out.split("/") if seg not in ("", ".", ".."))
    out = out[:MAX_ENTITY_KEY_LENGTH].rstrip("/")
    if not out:
        raise ValueError(f"metric name {name!r} has nothing MLflow can keep")
    return out


def _param_value(value: Any) -> str:
    return str(value)[:MAX_PARAM_VAL_LENGTH]


def _tag_value(value: Any) -> str:
    return str(value)[:MAX_TAG_VAL_LENGTH]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message``, at most :data:`FAIL_REASON_CHARS` characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= FAIL_REASON_CHARS else text[: FAIL_REASON_CHARS - 3] + "..."


def _plain(value: Any) -> Any:
    """``value`` as YAML/JSON-safe data: mappings, lists, str, int, float, bool, None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    return str(value)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------------------------
# driver side


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
    ) -> str:
        """Create the parent run (or reopen ``parent_run_id`` on resume) and log the space.

        ``resolved_space`` is the space file after validation (sections ``study``, ``fixed``,
        ``params``). Params: each ``fixed`` key with its value, each searched key with
        ``search <distribution as JSON>``; on resume a param already logged with the same value
        is skipped, and one whose value changed is kept (MLflow params are immutable) with the
        new value under the tag ``changed_param.<key>`` and a warning. ``study`` settings are
        tags ``study.<key>`` (``n_trials`` changes when a study is extended). Returns the run id.
        """
        self._experiment_id = self._experiment()
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
                tags[metric_key(f"study.{key}")] = json.dumps(_plain(value), sort_keys=True)
        if parent_run_id is None:
            run = self.client.create_run(self._experiment_id, run_name=self.study_name, tags=tags)
            self._parent_run_id = run.info.run_id
            logger.info(
                "MLflow parent run %s created in experiment %r (%s)",
                self._parent_run_id,
                self.study_name,
                self.uri,
            )
        else:
            self._parent_run_id = self._reopen(parent_run_id, tags)
        self._log_space_params(resolved_space)
        with tempfile.TemporaryDirectory(prefix="pptp-space-") as tmp:
            path = Path(tmp) / "space.yaml"
            path.write_text(yaml.safe_dump(_plain(resolved_space), sort_keys=False))
            self.client.log_artifact(self._parent_run_id, str(path))
        return self._parent_run_id

    def _experiment(self) -> str:
        existing = self.client.get_experiment_by_name(self.study_name)
        if existing is not None:
            if existing.lifecycle_stage == "deleted":
                logger.warning("MLflow experiment %r was deleted; restoring it", self.study_name)
                self.client.restore_experiment(existing.experiment_id)
            return str(existing.experiment_id)
        location = artifact_location(self.uri, self.study_name)
        try:
            return str(
                self.client.create_experiment(
                    self.study_name, artifact_location=location, tags={TAG_STUDY: self.study_name}
                )
            )
        except MlflowException:  # another driver created it in between
            again = self.client.get_experiment_by_name(self.study_name)
            if again is None:
                raise
            return str(again.experiment_id)

    def _reopen(self, run_id: str, tags: dict[str, str]) -> str:
        try:
            run = self.client.get_run(run_id)
        except MlflowException as err:
            raise ConfigError(
                f"cannot resume: MLflow parent run {run_id} is not in {self.uri} ({err}); "
                "resume against the tracking URI the study started with"
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
        self._set_tags(run_id, tags)
        logger.info("MLflow parent run %s reopened", run_id)
        return run_id

    def _set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = [RunTag(k, _tag_value(v)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=chunk, synchronous=True)

    def _log_space_params(self, resolved_space: Mapping[str, Any]) -> None:
        wanted: dict[str, str] = {}
        fixed = resolved_space.get("fixed") or {}
        if isinstance(fixed, Mapping):
            for key, value in _flatten(fixed).items():
                wanted[metric_key(key)] = _param_value(value)
        params = resolved_space.get("params") or {}
        if isinstance(params, Mapping):
            for key, spec in params.items():
                text = json.dumps(_plain(spec), sort_keys=True)
                wanted[metric_key(str(key))] = _param_value(f"search {text}")
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
            self._set_tags(
                self.parent_run_id,
                {metric_key(f"changed_param.{k}"): v for k, v in changed.items()},
            )
        new = [Param(k, v) for k, v in wanted.items() if k not in existing]
        for chunk in _chunks(new, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.parent_run_id, params=chunk, synchronous=True)

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
        """Flip child runs still RUNNING to FAILED with ``fail_reason``; returns how many.

        Call on resume before any trial starts: a child left RUNNING then belongs to a trial
        process that died with the previous driver.
        """
        stale = self.children(status="RUNNING")
        for run in stale:
            self.client.set_tag(run.info.run_id, TAG_FAIL_REASON, _tag_value(reason))
            self.client.set_terminated(run.info.run_id, status="FAILED")
        if stale:
            logger.warning("marked %d stale trial run(s) FAILED: %s", len(stale), reason)
        return len(stale)

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
        for _, direction in objectives:
            if direction not in ("maximize", "minimize"):
                raise ValueError(f"objective direction must be maximize or minimize: {direction}")
        rows = sorted(rows, key=lambda r: int(r["trial"]))
        front = [r for r in rows if r.get("pareto")]
        first, first_dir = objectives[0]
        front.sort(
            key=lambda r: (
                _as_float(r.get(first)) is None,
                (-1 if first_dir == "maximize" else 1) * (_as_float(r.get(first)) or 0.0),
            )
        )
        columns = _columns(rows, objectives)
        with tempfile.TemporaryDirectory(prefix="pptp-front-") as tmp:
            folder = Path(tmp)
            _write_csv(folder / "trials.csv", rows, columns)
            _write_csv(folder / "pareto_front.csv", front, columns)
            plot_front(rows, objectives, folder / "pareto_front.png", title=self.study_name)
            self.client.log_artifacts(self.parent_run_id, str(folder))
        for row in rows:  # tag only what changed since the last call: one write per change
            run_id = str(row.get("run_id") or "")
            value = "true" if row.get("pareto") else "false"
            if run_id and self._pareto_tags.get(run_id) != value:
                self.client.set_tag(run_id, TAG_PARETO, value)
                self._pareto_tags[run_id] = value
        step = len(rows)
        now = _now_ms()
        metrics = [
            Metric("n_trials", float(len(rows)), now, step),
            Metric("n_pareto", float(len(front)), now, step),
        ]
        for name, direction in objectives:
            values = [v for v in (_as_float(r.get(name)) for r in rows) if v is not None]
            if values:
                best = max(values) if direction == "maximize" else min(values)
                metrics.append(Metric(metric_key(f"best_{name}"), best, now, step))
        self.client.log_batch(self.parent_run_id, metrics=metrics, synchronous=True)
        logger.info("Pareto front: %d of %d trials", len(front), len(rows))

    def finish(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` (FINISHED, FAILED or KILLED)."""
        if status not in _END_STATUSES:
            raise ValueError(f"unknown end status {status!r}; use one of {_END_STATUSES}")
        self.client.set_terminated(self.parent_run_id, status=status)


_END_STATUSES = ("FINISHED", "FAILED", "KILLED")


def artifact_location(uri: str, study_name: str) -> str | None:
    """``file://<db folder>/artifacts/<study>`` for SQLite stores; None (server default) else."""
    if urllib.parse.urlsplit(uri).scheme.lower() != "sqlite":
        return None
    path, _ = _sqlite_path(uri)
    if path is None:
        return None
    safe = re.sub(r"[^\w.\-]", "_", study_name) or "study"
    return (path.resolve().parent / "artifacts" / safe).as_uri()


def _columns(rows: Iterable[Mapping[str, Any]], objectives: Sequence[tuple[str, str]]) -> list[str]:
    head = ["trial", "run_id", "pareto", *(name for name, _ in objectives), *FRONT_COLUMNS]
    seen = dict.fromkeys(head)
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def plot_front(
    rows: Sequence[Mapping[str, Any]],
    objectives: Sequence[tuple[str, str]],
    path: Path,
    *,
    title: str = "",
) -> Path:
    """PNG of the first two objectives: every trial grey, the Pareto rows in colour, joined by
    the staircase that bounds the region they dominate, each labelled with its trial number.

    With one objective the x axis is the trial number. Rows without finite values are skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(objectives) >= 2:
        (x_name, x_dir), (y_name, y_dir) = objectives[0], objectives[1]
    else:
        (x_name, x_dir), (y_name, y_dir) = ("trial", "maximize"), objectives[0]

    def point(row: Mapping[str, Any]) -> tuple[float, float] | None:
        x, y = _as_float(row.get(x_name)), _as_float(row.get(y_name))
        return None if x is None or y is None else (x, y)

    every = [p for p in map(point, rows) if p is not None]
    front = [(p, r["trial"]) for r in rows if r.get("pareto") and (p := point(r)) is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    try:
        if every:
            ax.scatter(
                [p[0] for p in every], [p[1] for p in every], color="0.7", s=18, label="trials"
            )
        if front:
            sign_x = -1.0 if x_dir == "maximize" else 1.0
            sign_y = -1.0 if y_dir == "maximize" else 1.0
            ordered = sorted(front, key=lambda f: (sign_x * f[0][0], sign_y * f[0][1]))
            xs, ys = _staircase([p for p, _ in ordered])
            ax.plot(xs, ys, color="tab:red", linewidth=1.2, zorder=2)
            ax.scatter(
                [p[0] for p, _ in ordered],
                [p[1] for p, _ in ordered],
                color="tab:red",
                s=30,
                zorder=3,
                label="Pareto front",
            )
            for (x, y), trial in ordered:
                ax.annotate(
                    f"#{trial}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
                )
        ax.set_xlabel(f"{x_name} ({x_dir})")
        ax.set_ylabel(f"{y_name} ({y_dir})")
        ax.set_title(title or "Pareto front")
        ax.grid(True, alpha=0.3)
        if every:
            ax.legend(loc="best", fontsize="small")
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _staircase(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Vertices of the attainment boundary through ``points`` ordered best-first on x.

    Between consecutive front points the corner ``(x_next, y_this)`` lies on the dominated side,
    so the line never cuts into the region the front does not reach.
    """
    xs, ys = [points[0][0]], [points[0][1]]
    for (_, y_prev), (x, y) in itertools.pairwise(points):
        xs += [x, x]
        ys += [y_prev, y]
    return xs, ys


# --------------------------------------------------------------------------------------------
# trial side


class TrialTracker:
    """The child run of one trial, created inside the trial's own process.

    ``with TrialTracker(...) as tracker:`` creates the run; leaving the block ends it FINISHED,
    or FAILED (KILLED for KeyboardInterrupt/SystemExit) with ``fail_reason`` when an exception
    escapes, which is re-raised.

    Per-epoch metrics are buffered and written as one ``log_batch`` at most every
    ``flush_every_s`` seconds (each write is a SQLite transaction, ~10-25 ms on a loaded 2-core
    machine), and always before the result is logged and before the run ends; 0 writes every
    epoch at once.
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        *,
        trial_number: int,
        run_name: str | None = None,
        flush_every_s: float = 2.0,
    ) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.trial_number = trial_number
        self.run_name = run_name or f"trial-{trial_number:04d}"
        self.flush_every_s = flush_every_s
        self.client = MlflowClient(tracking_uri=uri)
        self._run_id: str | None = None
        self._ended = False
        self._pending: list[Metric] = []
        self._last_flush = 0.0

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            raise RuntimeError("TrialTracker is used outside its with-block")
        return self._run_id

    def __enter__(self) -> TrialTracker:
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.run_name,
            tags={
                TAG_PARENT: self.parent_run_id,
                TAG_TRIAL_NUMBER: str(self.trial_number),
                TAG_KIND: "trial",
            },
        )
        self._run_id = run.info.run_id
        self._ended = False
        self._pending = []
        self._last_flush = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ended:
            return
        if exc is None:
            self._end("FINISHED")
            return
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        try:
            try:
                self.flush()  # the curves up to the failure help diagnose it
            finally:
                self._end(status, reason=_reason(exc))
        except Exception:  # never hide the trial's own exception behind a tracking error
            logger.exception("could not mark MLflow run %s %s", self._run_id, status)

    def _end(self, status: str, *, reason: str | None = None) -> None:
        if status == "FINISHED":
            self.flush()
        if reason is not None:
            self.client.set_tag(self.run_id, TAG_FAIL_REASON, reason)
        self.client.set_terminated(self.run_id, status=status)
        self._ended = True

    def fail(self, reason: str) -> None:
        """End the run FAILED with ``fail_reason`` (first line, truncated); exiting is a no-op."""
        lines = reason.strip().splitlines()
        text = lines[0] if lines else "failed"
        if len(text) > FAIL_REASON_CHARS:
            text = text[: FAIL_REASON_CHARS - 3] + "..."
        try:
            self.flush()
        finally:
            self._end("FAILED", reason=text)

    def flush(self) -> None:
        """Write the buffered per-epoch metrics now."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        for chunk in _chunks(pending, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)

    def log_params(self, flat_config: Mapping[str, Any]) -> None:
        """Every key of the resolved trial config, values as ``str()`` (None -> ``"None"``)."""
        params = [Param(metric_key(k), _param_value(v)) for k, v in flat_config.items()]
        for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk, synchronous=True)

    def log_epoch(self, log: EpochLog) -> None:
        """``epoch_loss, epoch_train_acc, epoch_test_acc, [epoch_val_acc], epoch_lr,
        epoch_seconds`` at ``step = log.epoch``."""
        values = {
            "epoch_loss": log.loss,
            "epoch_train_acc": log.train_acc,
            "epoch_test_acc": log.test_acc,
            "epoch_val_acc": log.val_acc,
            "epoch_lr": log.lr,
            "epoch_seconds": log.seconds,
        }
        now = _now_ms()
        self._pending += [
            Metric(k, float(v), now, int(log.epoch)) for k, v in values.items() if v is not None
        ]
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def log_result(
        self, result: TrialResult, *, objectives: Mapping[str, float] | None = None
    ) -> None:
        """Final metrics (names through :func:`metric_key`), artifacts and tags of a trial.

        Metrics: ``result.metrics()``, ``extras/<k>`` for ``result.extras`` and ``objectives``
        (the values reported to the sampler; same names as metrics). Artifacts: ``roc.png``
        (every attack, log-log), ``roc.npz`` (``attacks`` names, ``fpr/<a>``, ``tpr/<a>``,
        ``thresholds/<a>`` float arrays: loads with ``allow_pickle=False``), ``mask.json``
        (``{"mask": {group: protected}, "protected_groups": [...]}``) and ``history.csv``.
        Tags: ``operator``, ``strength``, ``protected_groups`` (comma separated).
        """
        self.flush()
        values: dict[str, float] = dict(result.metrics())
        values.update({f"extras/{k}": v for k, v in result.extras.items()})
        values.update(objectives or {})
        now = _now_ms()
        metrics = [Metric(metric_key(k), float(v), now, 0) for k, v in values.items()]
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
        tags = [
            RunTag("operator", result.config.protect.operator),
            RunTag("strength", str(result.config.protect.strength)),
            RunTag("protected_groups", _tag_value(",".join(result.protected_groups))),
        ]
        if objectives:
            tags.append(RunTag("objectives", ",".join(objectives)))
        self.client.log_batch(self.run_id, tags=tags, synchronous=True)
        with tempfile.TemporaryDirectory(prefix="pptp-trial-") as tmp:
            folder = Path(tmp)
            write_trial_artifacts(result, folder)
            self.client.log_artifacts(self.run_id, str(folder))


def write_trial_artifacts(result: TrialResult, folder: Path) -> list[Path]:
    """Write ``roc.png``, ``roc.npz``, ``mask.json`` and ``history.csv`` of ``result`` to
    ``folder`` (the ROC files only when the trial ran attacks); returns the paths."""
    written: list[Path] = []
    if result.attacks:
        curves = {name: m.roc for name, m in result.attacks.items()}
        written.append(
            plot_roc(
                curves,
                folder / "roc.png",
                title=f"{result.config.protect.operator} s={result.config.protect.strength:g}",
            )
        )
        arrays: dict[str, np.ndarray] = {"attacks": np.array(list(curves), dtype=str)}
        for name, roc in curves.items():
            arrays[f"fpr/{name}"] = np.asarray(roc.fpr, dtype=np.float64)
            arrays[f"tpr/{name}"] = np.asarray(roc.tpr, dtype=np.float64)
            arrays[f"thresholds/{name}"] = np.asarray(roc.thresholds, dtype=np.float64)
        np.savez_compressed(folder / "roc.npz", **arrays)  # type: ignore[arg-type]
        written.append(folder / "roc.npz")
    mask = {"mask": dict(result.mask), "protected_groups": list(result.protected_groups)}
    (folder / "mask.json").write_text(json.dumps(mask, indent=2) + "\n")
    written.append(folder / "mask.json")
    fields = [f.name for f in dataclasses.fields(EpochLog)]
    with (folder / "history.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for log in result.history:
            writer.writerow(["" if (v := getattr(log, f)) is None else v for f in fields])
    written.append(folder / "history.csv")
    return written
