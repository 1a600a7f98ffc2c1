"""TEST-ONLY fault injection into a running study: ``PPTP_TEST_FAULT`` (never set it otherwise).

The fault suite (``tests/test_faults.py``) runs real studies through ``search/run.py`` in
subprocesses and must make a given trial fail in a given way inside its Ray worker. Ray workers
inherit the driver's environment, so the suite sets :data:`ENV` for the driver and the trainable
(:mod:`search.running.trainable`) asks :func:`faults_for` which faults apply to its trial number.

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
  lost mid-study).

Nothing here runs unless the variable is set; an unparsable value raises at once, so a typo in a
test never passes silently.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

ENV = "PPTP_TEST_FAULT"
KINDS = ("raise", "oom", "memory", "nan_loss", "nan_metric", "kill", "slow", "delete_store")


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


def faults_for(trial: int) -> tuple[Fault, ...]:
    """The faults :data:`ENV` injects into trial ``trial`` (none when the variable is unset)."""
    text = os.environ.get(ENV, "")
    if not text:
        return ()
    return tuple(f for f in parse(text) if f.trial is None or f.trial == trial)


def on_epoch_fault(faults: tuple[Fault, ...], *, first: bool) -> None:
    """Called by the trainable after every epoch (``first``: the trial's first one): raise, kill
    (both after the first epoch) or sleep as injected."""
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


def has(faults: tuple[Fault, ...], kind: str) -> bool:
    return any(f.kind == kind for f in faults)
