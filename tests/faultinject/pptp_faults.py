"""Fault injection into a running study, for the fault suite (``tests/test_faults.py``) only.

The suite runs real studies through ``search/run.py`` in subprocesses and must make a given trial
fail in a given way inside its Ray worker. :func:`fault_env` gives the environment for such a
subprocess: ``PPTP_TEST_FAULT`` (what to inject) and this folder on ``PYTHONPATH``, so that every
process of the study, Ray's workers included, runs ``sitecustomize.py`` here, which calls
:func:`install` on ``search.running.trainable`` as it is imported. :func:`install` wraps three of
its functions; nothing in the product reads the variable.

Grammar: faults separated by ``;``, each ``<kind>@<trial number or *>[=<number>]``::

    PPTP_TEST_FAULT="raise@1;nan_loss@2;nan_metric@3;oom@4;kill@5;slow@*=2.0"

Kinds (:data:`KINDS`):

- ``raise``: a RuntimeError after the first epoch;
- ``oom``: ``torch.OutOfMemoryError`` after the first epoch (what CUDA raises);
- ``memory``: ``MemoryError`` after the first epoch (what the CPU allocator raises);
- ``nan_loss``: the trial trains with ``train.lr = 1e12``, so its loss really diverges;
- ``nan_metric``: the trial's ``attack_auc`` is replaced by NaN after the attack;
- ``kill``: the worker process sends itself SIGKILL after the first epoch (a dead worker);
- ``slow``: sleep ``number`` seconds (default 1) after every epoch (keeps a trial running);
- ``delete_store``: delete the SQLite tracking store's file when the trial starts (the store
  lost mid-study);
- ``disk_full``: in the driver, writing the trial's record in the run directory fails with
  ENOSPC (the run directory's disk is full), once per driver.

An unparsable value raises at once, so a typo in a test never passes silently.
"""

from __future__ import annotations

import contextvars
import dataclasses
import errno
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ENV = "PPTP_TEST_FAULT"
KINDS = (
    "raise", "oom", "memory", "nan_loss", "nan_metric", "kill", "slow", "delete_store", "disk_full"
)
HERE = Path(__file__).resolve().parent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` for trial ``trial`` (None: every trial), with ``value``."""

    kind: str
    trial: int | None
    value: float | None = None


def parse(text: str) -> tuple[Fault, ...]:
    """The faults of a :data:`ENV` value (grammar in the module docstring)."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        kind, at, rest = item.partition("@")
        where, _, value = rest.partition("=")
        if kind not in KINDS or not at or not (where == "*" or where.isdigit()):
            raise ValueError(
                f"{ENV}: cannot read {item!r}; write <kind>@<trial|*>[=<number>] with kind in "
                f"{', '.join(KINDS)}"
            )
        trial = None if where == "*" else int(where)
        out.append(Fault(kind, trial, float(value) if value else None))
    return tuple(out)


def fault_env(spec: str) -> dict[str, str]:
    """Environment for a study subprocess that injects ``spec`` (checked here, in the test)."""
    parse(spec)
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {ENV: spec, "PYTHONPATH": path}


def faults_for(trial: int) -> tuple[Fault, ...]:
    """The faults :data:`ENV` injects into trial ``trial`` (none when the variable is unset)."""
    text = os.environ.get(ENV, "")
    if not text:
        return ()
    return tuple(f for f in parse(text) if f.trial is None or f.trial == trial)


def has(faults: tuple[Fault, ...], kind: str) -> bool:
    return any(f.kind == kind for f in faults)


def on_epoch_fault(faults: tuple[Fault, ...], *, first: bool) -> None:
    """After every epoch (``first``: the trial's first one): raise, kill (both after the first
    epoch) or sleep as injected."""
    import torch

    for fault in faults:
        if fault.kind == "slow":
            time.sleep(fault.value if fault.value is not None else 1.0)
        if not first:
            continue
        if fault.kind == "raise":
            raise RuntimeError("injected fault (PPTP_TEST_FAULT=raise)")
        if fault.kind == "oom":
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (injected: PPTP_TEST_FAULT=oom)"
            )
        if fault.kind == "memory":
            raise MemoryError("injected: PPTP_TEST_FAULT=memory")
        if fault.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class _Trial:
    """The faults of the trial running in this process, and how far it got."""

    faults: tuple[Fault, ...]
    seeds: int = 0  # trainings started (one per training seed)
    epochs: int = 0  # epochs of the first seed
    scored: int = 0  # seeds whose metrics were read


_CURRENT: contextvars.ContextVar[_Trial | None] = contextvars.ContextVar("fault", default=None)


def install(trainable: ModuleType) -> None:
    """Wrap ``search.running.trainable``'s ``run_search_trial`` (the trial: delete the store when
    it starts, train it with a diverging lr), ``run_trial`` (each training: the epoch faults of the
    first seed) and ``_flat_metrics`` (each seed's metrics: a NaN objective on the first)."""
    run_search_trial: Callable[..., Any] = trainable.run_search_trial
    run_trial: Callable[..., Any] = trainable.run_trial
    flat_metrics: Callable[[Any], dict[str, float]] = trainable._flat_metrics

    def faulty_search_trial(sampled: dict[str, Any], ctx: Any, **kwargs: Any) -> Any:
        injected = faults_for(int(sampled.get("trial_number", -1)))
        if has(injected, "delete_store"):
            _delete_sqlite_store(ctx.tracking_uri)
        if has(injected, "nan_loss"):
            ctx = dataclasses.replace(ctx, overrides={**ctx.overrides, "train.lr": 1.0e12})
        token = _CURRENT.set(_Trial(injected))
        try:
            return run_search_trial(sampled, ctx, **kwargs)
        finally:
            _CURRENT.reset(token)

    def faulty_run_trial(
        cfg: Any, *, on_epoch: Callable[[Any], None] | None = None, **kwargs: Any
    ) -> Any:
        trial = _CURRENT.get()
        if trial is None or not trial.faults:
            return run_trial(cfg, on_epoch=on_epoch, **kwargs)
        trial.seeds += 1
        first_seed = trial.seeds == 1

        def epoch(log: Any) -> None:
            if on_epoch is not None:
                on_epoch(log)
            if first_seed:
                trial.epochs += 1
            on_epoch_fault(trial.faults, first=first_seed and trial.epochs == 1)

        return run_trial(cfg, on_epoch=epoch, **kwargs)

    def faulty_flat_metrics(result: Any) -> dict[str, float]:
        metrics = flat_metrics(result)
        trial = _CURRENT.get()
        if trial is not None:
            trial.scored += 1
            if trial.scored == 1 and has(trial.faults, "nan_metric"):
                metrics["attack_auc"] = math.nan
        return metrics

    trainable.run_search_trial = faulty_search_trial
    trainable.run_trial = faulty_run_trial
    trainable._flat_metrics = faulty_flat_metrics


def install_records(records: ModuleType) -> None:
    """Wrap ``search.study.records.write`` (the driver's record of an ended trial): ``disk_full``
    raises ENOSPC naming the record's path, as a full disk does, the first time it is asked."""
    write: Callable[..., Any] = records.write
    failed: set[int] = set()

    def faulty_write(run_dir: Path, record: Any) -> Any:
        number = int(record.trial)
        if has(faults_for(number), "disk_full") and number not in failed:
            failed.add(number)
            path = records.path(run_dir, number)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(run_dir, record)

    records.write = faulty_write


def _delete_sqlite_store(uri: str) -> None:
    """``delete_store``: the tracking store lost mid-study."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        path.unlink(missing_ok=True)
        logger.warning("%s: deleted the tracking store %s", ENV, path)
