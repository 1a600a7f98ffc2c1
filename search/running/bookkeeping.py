"""The driver's record of every trial that ends (a Ray Tune callback, run in the driver).

- **Every ended trial** is written to the run directory (``trials/trial-0007.json``,
  :mod:`search.study.records`) from the MLflow run the trial returned in its result, with what
  MLflow
  could not take (a trial never writes to the driver's disk itself). The result field is removed
  afterwards (it can hold artifacts).
- **A trial whose process died** (SIGKILL, an out-of-memory killer) reported nothing. Tune records
  the Ray error in the trial's error file; this callback reads it, names the real cause
  (:func:`search.study.failures.worker_death_reason`), tells Optuna FAIL with it
  (:meth:`search.running.samplers.StudySearch.fail`), ends the MLflow child run the dead worker left
  RUNNING as FAILED with the same reason and the error text as ``traceback.txt``, and writes the
  trial's record (pending when MLflow could not be written).
- **A worker that died with Ray's raylet or GCS** is not the trial's failure: the callback stops
  the session instead (:func:`search.running.stopping.stop_for_lost_ray`), and the trial is
  marked interrupted.
- **After every ended trial** ``study.db`` is copied to ``study.backup.db`` (SQLite's online
  backup, checked before it replaces the previous copy: :mod:`search.study.backup`), the copy a
  damaged ``study.db`` is restored from.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from search.running.progress import trial_error_text
from search.running.samplers import RECORD, TRIAL_NUMBER, StudySearch
from search.running.scheduler import FINAL, RUNG
from search.running.stopping import lost_ray_processes, stop_for_lost_ray
from search.running.trainable import stopped_reason
from search.study import backup, records
from search.study.failures import worker_death_reason
from search.tracking.names import (
    TAG_FAIL_REASON,
    TAG_KIND,
    TAG_PARENT,
    TAG_TRIAL_NUMBER,
    metric_key,
)
from search.tracking.spool import RunSpool

if TYPE_CHECKING:
    from search.tracking.study_tracker import StudyTracker

logger = logging.getLogger(__name__)


class Bookkeeper(Callback):
    """See module docstring. ``tracker``: the study's
    :class:`~search.tracking.study_tracker.StudyTracker`; ``flat_config(sampled)``: the full flat
    config of a trial from its sampled parameters (a dead trial's record carries it)."""

    def __init__(
        self,
        *,
        run_dir: Path,
        searcher: StudySearch,
        tracker: StudyTracker,
        flat_config: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.run_dir = Path(run_dir)
        self.searcher = searcher
        self.tracker = tracker
        self.flat_config = flat_config
        self.pending: list[int] = []  # trials whose MLflow run is incomplete

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        number = int(trial.config.get(TRIAL_NUMBER, -1))
        raw = result.pop(RECORD, None)
        if raw is None:
            return
        state = "FAIL" if result.get("failed") else "COMPLETE"
        record = records.from_spool_json(number, state, result.get("fail_reason"), json.loads(raw))
        records.write(self.run_dir, record)
        if record.pending:
            self.pending.append(number)
            logger.warning(
                "trial %d: MLflow lacks part of its run (%s); kept in %s",
                number,
                record.spool.error,
                records.path(self.run_dir, number),
            )

    def on_trial_complete(
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        """A trial ended: ``study.db`` is copied (:meth:`_back_up`). A trial the multi-fidelity
        scheduler stopped: its MLflow run ends KILLED with the reason, whether or not its process
        got to end it (Tune may end the process first)."""
        self._back_up()
        last = trial.last_result or {}
        run_id = last.get("mlflow_run_id")
        if last.get(RUNG) is None or last.get(FINAL, 1) or not run_id:
            return
        try:
            self.tracker.stop_child(str(run_id), stopped_reason(int(last[RUNG])))
        except Exception as error:  # MLflow down: sync ends runs left RUNNING
            logger.warning("trial run %s: could not end it KILLED (%s)", run_id, error)

    def _back_up(self) -> None:
        try:
            backup.back_up(self.run_dir)
        except (OSError, sqlite3.Error) as error:  # the study goes on; the old copy stays
            logger.warning("could not copy %s (%s)", self.run_dir / backup.STUDY_DB, error)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        lost = lost_ray_processes()
        if lost:  # the raylet or GCS died: the cluster's fault, the trial is interrupted
            stop_for_lost_ray(lost)
        text = trial_error_text(trial)
        reason = worker_death_reason(text)
        number = self.searcher.fail(trial.trial_id, reason)
        if number is None:
            number = int(trial.config.get(TRIAL_NUMBER, -1))
        run_id: str | None = None
        error: str | None = None
        try:
            run_id = self.tracker.fail_child(number, reason, traceback=text)
        except Exception as err:  # MLflow down: the record keeps it for --sync
            error = f"fail_child: {type(err).__name__}: {err}"
        sampled = {k: v for k, v in trial.config.items() if "." in k}
        spool = RunSpool(
            experiment_id=self.tracker.experiment_id,
            run_name=f"trial-{number:04d}",
            tags={
                TAG_PARENT: self.tracker.parent_run_id,
                TAG_TRIAL_NUMBER: str(number),
                TAG_KIND: "trial",
                TAG_FAIL_REASON: reason,
            },
            artifacts={"traceback.txt": text.encode()},
            status="FAILED",
            run_id=run_id,
            error=error if error else (None if run_id else "the worker died before its run"),
        )
        try:
            flat = self.flat_config(sampled)
        except Exception:  # a config that cannot be built: keep the sampled values
            flat = sampled
        spool.add_params({metric_key(k): v for k, v in flat.items()})
        record = records.TrialRecord(number, "FAIL", reason, spool.error is not None, spool)
        records.write(self.run_dir, record)
        if record.pending:
            self.pending.append(number)
        self._back_up()
