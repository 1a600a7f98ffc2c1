"""What a run was asked to log, kept beside MLflow so that nothing is lost when MLflow is not there.

The tracking store is not a single point of failure: a trial writes its child run
through :class:`~search.tracking.trial_tracker.TrialTracker`, which records every param, metric
(with its step and time), tag and artifact in a :class:`RunSpool` as well. When an MLflow call
fails, the tracker stops calling MLflow, the trial goes on, and the spool travels back to the
driver in the trial's result (never written by the worker to the driver's disk: trials may run on
other machines). The driver keeps it in the run directory (:mod:`search.study.records`), and
:func:`replay` re-creates the run from it later (``--resume``, ``--sync``: :mod:`search.sync`).

JSON form (:meth:`RunSpool.to_json`): plain data; artifacts as base64 strings, kept only while
the run is not safely in MLflow (they can be megabytes).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from search.tracking.store import chunks, param_value, tag_value

logger = logging.getLogger(__name__)
#: the MLflow tag that names a run (what ``run_name`` sets)
RUN_NAME_TAG = "mlflow.runName"


@dataclass
class RunSpool:
    """One MLflow run as data: what was (or should have been) logged to it.

    ``metrics``: ``(key, value, timestamp_ms, step)`` in MLflow's names; ``artifacts``: file name
    -> bytes; ``status``: the end status (None while the run is open); ``error``: the first MLflow
    failure (None when everything reached MLflow); ``run_id``/``artifact_uri``: of the run in
    MLflow when it was created.
    """

    experiment_id: str
    run_name: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    status: str | None = None
    run_id: str | None = None
    artifact_uri: str | None = None
    error: str | None = None

    @property
    def complete_in_mlflow(self) -> bool:
        """The run was created, everything was logged and it was ended, with no failure."""
        return self.error is None and self.run_id is not None and self.status is not None

    def add_tags(self, tags: Mapping[str, Any]) -> None:
        self.tags.update({k: tag_value(v) for k, v in tags.items()})

    def add_params(self, params: Mapping[str, Any]) -> None:
        self.params.update({k: param_value(v) for k, v in params.items()})

    def add_metrics(self, metrics: list[Metric]) -> None:
        self.metrics += [(m.key, float(m.value), int(m.timestamp), int(m.step)) for m in metrics]

    def add_artifacts(self, folder: Path, prefix: str = "") -> None:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                self.artifacts[prefix + str(path.relative_to(folder))] = path.read_bytes()

    def to_json(self, *, with_artifacts: bool) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "run_name": self.run_name,
            "run_id": self.run_id,
            "artifact_uri": self.artifact_uri,
            "status": self.status,
            "error": self.error,
            "tags": dict(self.tags),
            "params": dict(self.params),
            "metrics": [list(m) for m in self.metrics],
            "artifacts": (
                {k: base64.b64encode(v).decode("ascii") for k, v in self.artifacts.items()}
                if with_artifacts
                else {}
            ),
            "artifact_names": sorted(self.artifacts),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSpool:
        return cls(
            experiment_id=str(data.get("experiment_id") or ""),
            run_name=str(data.get("run_name") or ""),
            tags={str(k): str(v) for k, v in (data.get("tags") or {}).items()},
            params={str(k): str(v) for k, v in (data.get("params") or {}).items()},
            metrics=[
                (str(k), float(v), int(t), int(s)) for k, v, t, s in data.get("metrics") or []
            ],
            artifacts={
                str(k): base64.b64decode(v) for k, v in (data.get("artifacts") or {}).items()
            },
            status=data.get("status"),
            run_id=data.get("run_id"),
            artifact_uri=data.get("artifact_uri"),
            error=data.get("error"),
        )


def replay(
    client: MlflowClient,
    spool: RunSpool,
    *,
    experiment_id: str,
    tags: Mapping[str, str] | None = None,
    artifacts_from: Path | None = None,
) -> str:
    """Create a run from ``spool`` in ``experiment_id`` and log all of it; returns its id.

    ``tags`` override the spool's (the parent run id when the parent was re-created).
    ``artifacts_from``: a folder holding the artifacts of an earlier copy of the run (a local
    artifact store that outlived its database), used when the spool holds none. The run ends with
    the spool's status (FAILED when it has none: the trial never ended it).
    """
    run_tags = {**spool.tags, **dict(tags or {})}
    # a run renamed while it ran (its mlflow.runName tag, search/study/naming.py) keeps its last
    # name:
    # MLflow refuses a run_name that differs from that tag
    name = run_tags.get(RUN_NAME_TAG) or spool.run_name
    run = client.create_run(experiment_id, run_name=name, tags=run_tags)
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in spool.params.items()]
    for part in chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=part, synchronous=True)
    metrics = [Metric(k, v, t, s) for k, v, t, s in spool.metrics]
    for part in chunks(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=part, synchronous=True)
    if spool.artifacts:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pptp-replay-") as tmp:
            for name, data in spool.artifacts.items():
                target = Path(tmp) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            client.log_artifacts(run_id, tmp)
    elif artifacts_from is not None and artifacts_from.is_dir():
        client.log_artifacts(run_id, str(artifacts_from))
    status = spool.status or "FAILED"
    client.set_terminated(run_id, status=status)
    logger.info("replayed MLflow run %s as %s (%s)", name, run_id, status)
    return run_id


def local_artifact_dir(artifact_uri: str | None) -> Path | None:
    """The folder of a ``file://`` artifact URI (None for any other scheme or when absent)."""
    if not artifact_uri or not artifact_uri.startswith("file://"):
        return None
    path = Path(unquote(urlsplit(artifact_uri).path))
    return path if path.is_dir() else None


__all__ = ["RunSpool", "local_artifact_dir", "replay"]
