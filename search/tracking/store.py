"""Writing to an MLflow store: names MLflow accepts, experiments, batched params, metrics, tags.

Trials run in Ray worker processes, so nothing here relies on MLflow's global "active run"
state: every call goes through :class:`mlflow.MlflowClient` with an explicit run id. The study,
its trials, a pick and a localisation all write through these helpers:

- :mod:`search.tracking.names`: tag keys and :func:`metric_key` (no MLflow import, so that
  ``--help`` and the UI launcher do not pay for it);
- :func:`experiment_id`: get or create (or restore) an experiment by name;
- :func:`log_params`, :func:`log_metrics`, :func:`set_tags`: ``log_batch`` calls in MLflow's
  batch sizes, values cut to MLflow's length limits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from search.tracking.names import metric_key
from search.tracking.uris import REPO_ROOT, artifact_location

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# names and values


def param_value(value: Any) -> str:
    """``str(value)`` cut to MLflow's longest param value."""
    return str(value)[:MAX_PARAM_VAL_LENGTH]


def tag_value(value: Any) -> str:
    """``str(value)`` cut to MLflow's longest tag value."""
    return str(value)[:MAX_TAG_VAL_LENGTH]


def now_ms() -> int:
    """MLflow's timestamps: milliseconds since the epoch."""
    return int(time.time() * 1000)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def as_float(value: Any) -> float | None:
    """``float(value)`` when it is a finite number, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def plain(value: Any) -> Any:
    """``value`` as YAML/JSON-safe data: mappings, lists, str, int, float, bool, None."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    return str(value)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (empty mappings are kept as values)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


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
# experiments and batched writes


def experiment_id(
    client: MlflowClient, name: str, *, uri: str, tags: Mapping[str, str] | None = None
) -> str:
    """The id of experiment ``name``: restored if it was deleted, created if missing.

    A new experiment gets :func:`~search.tracking.uris.artifact_location` (artifacts beside a
    SQLite store) and ``tags``. Two processes creating it at once both get the same id.
    """
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            logger.warning("MLflow experiment %r was deleted; restoring it", name)
            client.restore_experiment(existing.experiment_id)
        return str(existing.experiment_id)
    try:
        return str(
            client.create_experiment(
                name, artifact_location=artifact_location(uri, name), tags=dict(tags or {})
            )
        )
    except MlflowException:  # another process created it in between
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Every ``name: value`` as a param: names through :func:`metric_key`, values as ``str()``
    cut to MLflow's limit (None -> ``"None"``), in batches MLflow accepts."""
    items = [Param(metric_key(k), param_value(v)) for k, v in params.items()]
    for chunk in chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=chunk, synchronous=True)


def log_metrics(
    client: MlflowClient, run_id: str, metrics: Mapping[str, float], *, step: int = 0
) -> None:
    """Every ``name: value`` as a metric at ``step`` (names through :func:`metric_key`)."""
    now = now_ms()
    items = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items()]
    log_metric_entities(client, run_id, items)


def log_metric_entities(client: MlflowClient, run_id: str, metrics: Sequence[Metric]) -> None:
    """Already built :class:`mlflow.entities.Metric` values, in batches MLflow accepts."""
    for chunk in chunks(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk, synchronous=True)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Every ``name: value`` as a tag (values cut to MLflow's limit), in batches."""
    items = [RunTag(k, tag_value(v)) for k, v in tags.items()]
    for chunk in chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=chunk, synchronous=True)
