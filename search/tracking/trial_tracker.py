"""A trial's child run in MLflow, created inside the trial's own (Ray worker) process.

Child run (``pptp.kind=trial``, tag ``mlflow.parentRunId`` = the study's parent run): the trial
config as params, per-epoch curves, final metrics, ``roc.png``, ``roc.npz``, ``mask.json``,
``history.csv``; ``pareto=true|false`` is set later by the driver
(:meth:`~search.tracking.study_tracker.StudyTracker.log_front`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pptp.metrics import plot_roc
from pptp.train import EpochLog
from pptp.trial import TrialResult
from search.tracking.store import (
    TAG_FAIL_REASON,
    TAG_KIND,
    TAG_PARENT,
    TAG_TRIAL_NUMBER,
    log_metric_entities,
    log_metrics,
    log_params,
    metric_key,
    now_ms,
    set_tags,
)

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
                self._end(status, reason=reason(exc))
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
        log_metric_entities(self.client, self.run_id, pending)

    def log_params(self, flat_config: Mapping[str, Any]) -> None:
        """Every key of the resolved trial config, values as ``str()`` (None -> ``"None"``)."""
        log_params(self.client, self.run_id, flat_config)

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
        now = now_ms()
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
        Tags: ``operator``, ``strength``, ``protected_groups`` (comma separated), and
        :meth:`~pptp.trial.TrialResult.tags` through :func:`metric_key`: ``queries`` (the query
        names the attacks used), ``attack_worst``, ``attack_worst/tpr_at_1pct_fpr``, ... (the
        attack and score direction that gave each worst case).
        """
        self.flush()
        values: dict[str, float] = dict(result.metrics())
        values.update({f"extras/{k}": v for k, v in result.extras.items()})
        values.update(objectives or {})
        log_metrics(self.client, self.run_id, values)
        tags = {
            "operator": result.config.protect.operator,
            "strength": str(result.config.protect.strength),
            "protected_groups": ",".join(result.protected_groups),
            **{metric_key(k): v for k, v in result.tags().items()},
        }
        if objectives:
            tags["objectives"] = ",".join(objectives)
        set_tags(self.client, self.run_id, tags)
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
