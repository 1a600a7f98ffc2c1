"""A trial's child run in MLflow, created inside the trial's own (Ray worker) process.

Child run (``pptp.kind=trial``, tag ``mlflow.parentRunId`` = the study's parent run): the trial
config as params, per-epoch curves, final metrics, ``roc.png``, ``roc.npz``, ``mask.json``,
``history.csv`` (``traceback.txt`` when it failed); ``pareto=true|false`` is set later by the
driver (:meth:`~search.tracking.study_tracker.StudyTracker.log_front`). What MLflow could not take
is kept in the tracker's spool (:mod:`search.tracking.spool`) and returned to the driver.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pptp.exposure import Exposure, thumbnail_grid
from pptp.metrics import plot_roc
from pptp.result import TrialResult
from pptp.train import EpochLog
from pptp.treatment import treatment_of
from search.tracking.names import (
    TAG_FAIL_REASON,
    TAG_KIND,
    TAG_PARENT,
    TAG_TRIAL_NUMBER,
    metric_key,
)
from search.tracking.spool import RunSpool
from search.tracking.store import log_metric_entities, log_params, now_ms, set_tags
from search.tracking.uris import sqlite_path

logger = logging.getLogger(__name__)

#: longest ``fail_reason`` kept (the full traceback belongs in the trial's log)
FAIL_REASON_CHARS = 500


def reason(exc: BaseException) -> str:
    """``Type: first line of the message``, at most :data:`FAIL_REASON_CHARS` characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= FAIL_REASON_CHARS else text[: FAIL_REASON_CHARS - 3] + "..."


class TrialTracker:
    """The child run of one trial, created inside the trial's own process.

    ``with TrialTracker(...) as tracker:`` creates the run; leaving the block ends it FINISHED,
    or FAILED (KILLED for KeyboardInterrupt/SystemExit) with ``fail_reason`` when an exception
    escapes, which is re-raised.

    **MLflow failures never fail the trial.** Everything is recorded in :attr:`spool`
    (:class:`~search.tracking.spool.RunSpool`) as well as sent to MLflow. The first MLflow call
    that raises (store deleted, server down, disk full) is logged once as a warning, recorded as
    ``spool.error``, and no MLflow call is made after it: the trial goes on, and
    :meth:`record` (which the trial returns to the driver) carries what MLflow lacks, artifacts
    included, for the driver to keep and replay (:mod:`search.sync`).

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
        self._client: MlflowClient | None = None
        self.spool = RunSpool(experiment_id=experiment_id, run_name=self.run_name)
        self._run_id: str | None = None
        self._entered = False
        self._ended = False
        self._pending: list[Metric] = []
        self._last_flush = 0.0

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id; None when MLflow could not create it (see :attr:`spool`)."""
        if not self._entered:
            raise RuntimeError("TrialTracker is used outside its with-block")
        return self._run_id

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, created on first use (creating it opens, and may migrate, the
        store: it fails when the store does, inside :meth:`_mlflow`'s guard)."""
        if self._client is None:
            path, _ = sqlite_path(self.uri) if self.uri.lower().startswith("sqlite") else (None, "")
            if path is not None and not path.exists():
                # MLflow would create an empty store here (every worker at once, racing on the
                # schema): the study's store was deleted; keep the run for replay instead
                raise FileNotFoundError(f"the SQLite tracking store {path} does not exist")
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def offline(self) -> bool:
        """An MLflow call failed: nothing more is sent; the spool holds everything."""
        return self.spool.error is not None

    def _mlflow(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()`` unless offline; the first exception makes the tracker offline (see class
        docstring) and returns None."""
        if self.offline:
            return None
        try:
            return call()
        except Exception as error:
            first = (str(error).strip().splitlines() or [""])[0][:300]
            self.spool.error = f"{what}: {type(error).__name__}: {first}"
            logger.warning(
                "MLflow is not writable (%s); trial %d goes on and its run is kept for replay",
                self.spool.error,
                self.trial_number,
            )
            return None

    def __enter__(self) -> TrialTracker:
        tags = {
            TAG_PARENT: self.parent_run_id,
            TAG_TRIAL_NUMBER: str(self.trial_number),
            TAG_KIND: "trial",
        }
        self.spool.add_tags(tags)
        self._entered = True
        self._ended = False
        self._pending = []
        self._last_flush = time.monotonic()
        run = self._mlflow(
            "create_run",
            lambda: self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags),
        )
        if run is not None:
            self._run_id = run.info.run_id
            self.spool.run_id = run.info.run_id
            self.spool.artifact_uri = run.info.artifact_uri
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
        self.flush()  # the curves up to the failure help diagnose it
        self._end(status, reason=reason(exc))

    def _end(self, status: str, *, reason: str | None = None) -> None:
        self.flush()
        if reason is not None:
            self.set_tags({TAG_FAIL_REASON: reason})
        self.spool.status = status
        run_id = self._run_id
        if run_id is not None:
            self._mlflow(
                "set_terminated", lambda: self.client.set_terminated(run_id, status=status)
            )
        elif not self.offline:
            self.spool.error = "create_run: the run was never created"
        self._ended = True

    def stop(self, reason: str) -> None:
        """End the run KILLED with ``fail_reason``: the trial was stopped early on purpose (the
        multi-fidelity scheduler); exiting the block is then a no-op."""
        self._end("KILLED", reason=reason)

    def fail(self, reason: str, *, traceback: str | None = None) -> None:
        """End the run FAILED with ``fail_reason`` (first line, truncated) and the traceback as
        the artifact ``traceback.txt``; exiting the block is then a no-op."""
        lines = reason.strip().splitlines()
        text = lines[0] if lines else "failed"
        if len(text) > FAIL_REASON_CHARS:
            text = text[: FAIL_REASON_CHARS - 3] + "..."
        if traceback:
            self.log_text("traceback.txt", traceback)
        self._end("FAILED", reason=text)

    def flush(self) -> None:
        """Write the buffered per-epoch metrics now."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        run_id = self._run_id
        if pending and run_id is not None:
            self._mlflow("log_batch", lambda: log_metric_entities(self.client, run_id, pending))

    def log_params(self, flat_config: Mapping[str, Any]) -> None:
        """Every key of the resolved trial config, values as ``str()`` (None -> ``"None"``)."""
        params = {metric_key(k): v for k, v in flat_config.items()}
        self.spool.add_params(params)
        run_id = self._run_id
        if run_id is not None:
            self._mlflow("log_params", lambda: log_params(self.client, run_id, params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.spool.add_tags(tags)
        run_id = self._run_id
        if run_id is not None:
            self._mlflow("set_tags", lambda: set_tags(self.client, run_id, tags))

    def log_metrics(self, values: Mapping[str, float], *, step: int = 0) -> None:
        """``name: value`` metrics at ``step`` (names through :func:`metric_key`)."""
        now = now_ms()
        metrics = [Metric(metric_key(k), float(v), now, step) for k, v in values.items()]
        self.spool.add_metrics(metrics)
        run_id = self._run_id
        if run_id is not None:
            self._mlflow("log_batch", lambda: log_metric_entities(self.client, run_id, metrics))

    def log_text(self, name: str, text: str) -> None:
        """A small text artifact (``traceback.txt``)."""
        with tempfile.TemporaryDirectory(prefix="pptp-trial-") as tmp:
            (Path(tmp) / name).write_text(text)
            self._log_folder(Path(tmp))

    def _log_folder(self, folder: Path) -> None:
        self.spool.add_artifacts(folder)
        run_id = self._run_id
        if run_id is not None:
            self._mlflow("log_artifacts", lambda: self.client.log_artifacts(run_id, str(folder)))

    def log_epoch(self, log: EpochLog, *, prefix: str = "") -> None:
        """``epoch_loss, epoch_train_acc, epoch_test_acc, [epoch_val_acc], epoch_lr,
        epoch_seconds`` at ``step = log.epoch`` (``prefix`` + name: ``seed1/epoch_loss`` for a
        trial's second training seed)."""
        values = {
            "epoch_loss": log.loss,
            "epoch_train_acc": log.train_acc,
            "epoch_test_acc": log.test_acc,
            "epoch_val_acc": log.val_acc,
            "epoch_lr": log.lr,
            "epoch_seconds": log.seconds,
        }
        now = now_ms()
        metrics = [
            Metric(metric_key(prefix + k), float(v), now, int(log.epoch))
            for k, v in values.items()
            if v is not None
        ]
        self.spool.add_metrics(metrics)
        self._pending += metrics
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def log_result(
        self,
        result: TrialResult,
        *,
        objectives: Mapping[str, float] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Final metrics (names through :func:`metric_key`), artifacts and tags of a trial.

        Metrics: ``metrics`` when given (a trial over several seeds logs its means and spreads,
        :mod:`search.running.repeats`), else ``result.metrics()`` and ``extras/<k>`` for
        ``result.extras``; then ``objectives`` (the values reported to the sampler; same names as
        metrics). Artifacts (of ``result``): ``roc.png`` (every attack, log-log), ``roc.npz``
        (``attacks`` names, ``fpr/<a>``, ``tpr/<a>``, ``thresholds/<a>`` float arrays: loads with
        ``allow_pickle=False``), ``mask.json`` (``{"mask": {group: protected},
        "protected_groups": [...]}``), who leaks (``exposed.csv``, ``class_tpr.csv``,
        ``exposed.png``: :func:`write_exposure`) and ``history.csv``. Tags: what it trained with
        (:meth:`pptp.treatment.Treatment.flat`: ``operator``, ``strength``, ``protected_groups``,
        ``defense``), and :meth:`~pptp.result.TrialResult.tags` through
        :func:`metric_key`: ``queries`` (the query names the attacks used), ``attack_worst``,
        ``attack_worst/tpr_at_1pct_fpr``, ... (the attack and score direction that gave each
        worst case).
        """
        self.flush()
        if metrics is not None:
            values: dict[str, float] = dict(metrics)
        else:
            values = dict(result.metrics())
            values.update({f"extras/{k}": v for k, v in result.extras.items()})
        values.update(objectives or {})
        self.log_metrics(values)
        treatment = treatment_of(result.config, result.protected_groups)
        tags = {
            **{k: str(v) for k, v in treatment.flat().items()},
            **{metric_key(k): v for k, v in result.tags().items()},
        }
        if objectives:
            tags["objectives"] = ",".join(objectives)
        self.set_tags(tags)
        with tempfile.TemporaryDirectory(prefix="pptp-trial-") as tmp:
            folder = Path(tmp)
            write_trial_artifacts(result, folder)
            self._log_folder(folder)

    def record(self) -> dict[str, Any]:
        """The run as JSON data for the driver (:mod:`search.study.records`): artifacts included
        only when MLflow does not hold the whole run."""
        return self.spool.to_json(with_artifacts=not self.spool.complete_in_mlflow)


def write_exposure(exposure: Exposure, folder: Path) -> list[Path]:
    """Who leaks (:mod:`pptp.exposure`): ``exposed.csv`` (the most exposed members),
    ``class_tpr.csv`` (TPR at 1% FPR per class) and, for image data, ``exposed.png`` (their
    thumbnails, most exposed first, row by row); returns the paths."""
    written = [folder / "exposed.csv", folder / "class_tpr.csv"]
    written[0].write_text(exposure.records_csv())
    written[1].write_text(exposure.class_csv())
    grid = thumbnail_grid(exposure)
    if grid is not None:
        (folder / "exposed.png").write_bytes(grid)
        written.append(folder / "exposed.png")
    return written


def write_trial_artifacts(result: TrialResult, folder: Path) -> list[Path]:
    """Write ``roc.png``, ``roc.npz``, ``mask.json``, the who-leaks files
    (:func:`write_exposure`) and ``history.csv`` of ``result`` to ``folder`` (the ROC and
    who-leaks files only when the trial ran attacks); returns the paths."""
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
    if result.exposure is not None:
        written += write_exposure(result.exposure, folder)
    fields = [f.name for f in dataclasses.fields(EpochLog)]
    with (folder / "history.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for log in result.history:
            writer.writerow(["" if (v := getattr(log, f)) is None else v for f in fields])
    written.append(folder / "history.csv")
    return written
