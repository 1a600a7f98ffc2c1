"""The run directory's own record of every trial that ended: ``trials/trial-0007.json``.

Each trial returns what it logged to MLflow as data (its run spool,
:mod:`search.tracking.spool`) inside its result; the **driver** writes it here (a trial never
writes to the driver's disk: it may run on another machine). So the run directory alone can
rebuild the study's MLflow runs: when MLflow could not be written during a trial, when the
tracking store was lost mid-study, or when a worker died and never ended its run.
``--resume`` and ``--sync`` replay what MLflow lacks (:mod:`search.sync`).

One JSON file per trial, written atomically::

    {"trial": 7, "state": "COMPLETE" | "FAIL", "fail_reason": str | null,
     "pending": bool,            # MLflow may lack this run (or part of it): replay it
     "spool": {...}}             # RunSpool.to_json(): params, metrics with steps, tags,
                                 # artifacts (base64) while pending, the run id it had

Artifacts are kept only while the record is pending; after a replay the record is rewritten
without them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pptp.fileio import atomic_write
from search.tracking.spool import RunSpool

logger = logging.getLogger(__name__)

FOLDER = "trials"


@dataclass(frozen=True)
class TrialRecord:
    """One ended trial as the run directory keeps it (see module docstring)."""

    trial: int
    state: str  # "COMPLETE" or "FAIL" (Optuna's name)
    fail_reason: str | None
    pending: bool
    spool: RunSpool

    def to_json(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "state": self.state,
            "fail_reason": self.fail_reason,
            "pending": self.pending,
            "spool": self.spool.to_json(with_artifacts=self.pending),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(
            trial=int(data["trial"]),
            state=str(data["state"]),
            fail_reason=data.get("fail_reason"),
            pending=bool(data.get("pending")),
            spool=RunSpool.from_json(data.get("spool") or {}),
        )


def path(run_dir: Path, trial: int) -> Path:
    return Path(run_dir) / FOLDER / f"trial-{trial:04d}.json"


def write(run_dir: Path, record: TrialRecord) -> Path:
    """Write (or replace) the record of ``record.trial`` atomically."""
    return atomic_write(path(run_dir, record.trial), json.dumps(record.to_json()) + "\n")


def read_all(run_dir: Path) -> dict[int, TrialRecord]:
    """Every record of ``run_dir`` by trial number; an unreadable file is skipped with a
    warning (it was never completely written: writes are atomic)."""
    out: dict[int, TrialRecord] = {}
    for file in sorted((Path(run_dir) / FOLDER).glob("trial-*.json")):
        try:
            record = TrialRecord.from_json(json.loads(file.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("skipping unreadable trial record %s (%s)", file, error)
            continue
        out[record.trial] = record
    return out


def from_spool_json(
    trial: int, state: str, fail_reason: str | None, spool_json: dict[str, Any]
) -> TrialRecord:
    """The record of a trial from the spool it returned (pending unless MLflow has all of it)."""
    spool = RunSpool.from_json(spool_json)
    return TrialRecord(trial, state, fail_reason, not spool.complete_in_mlflow, spool)
