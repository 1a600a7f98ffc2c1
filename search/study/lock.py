"""One driver per run directory: an OS file lock held for the driver's whole life.

Two drivers on one run directory would both run the study (twice the trials, two parent runs), and
a ``--resume`` of a live run would mark the live driver's running trials interrupted. So the driver
takes the run directory's lock before it changes anything there, and a second driver (or a
``--resume``) refuses at once with :class:`RunDirBusy` (exit status 2), naming the holder::

    <run dir>/driver.lock   the lock (filelock's ``FileLock``: ``flock(2)`` on Linux and macOS)
    <run dir>/driver.json   who holds it: pid, host, start time, command line

**A dead holder never blocks.** The kernel releases a ``flock`` when the process holding it exits,
however it exits (kill -9 included), so a lock left by a killed driver is simply free: the next
driver takes it at once. ``driver.json`` is removed on a clean release, so when the next driver
finds one, the previous holder died holding the lock; :meth:`RunLock.acquire` returns it as
*stale* and the driver says it took over (``tests/test_lock.py`` checks this with a real kill -9).

Limit: ``flock`` is per host on network file systems (NFS clients lock locally); two drivers on
two hosts sharing one run directory over NFS are not kept apart. Run one study from one host.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from pptp.errors import ConfigError
from pptp.fileio import atomic_write

LOCK_FILE = "driver.lock"
HOLDER_FILE = "driver.json"


class RunDirBusy(ConfigError):
    """Another live driver holds the run directory's lock."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run directory's lock."""

    pid: int
    host: str
    started: str  # local time, ISO 8601
    command: str

    def describe(self) -> str:
        return f"PID {self.pid} on host {self.host}, since {self.started}"


def _me() -> Holder:
    return Holder(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        command=shlex.join([sys.executable, *sys.argv]),
    )


def read_holder(run_dir: Path) -> Holder | None:
    """``driver.json`` of ``run_dir``, or None when absent or unreadable."""
    try:
        data = json.loads((Path(run_dir) / HOLDER_FILE).read_text())
        return Holder(
            pid=int(data["pid"]),
            host=str(data["host"]),
            started=str(data["started"]),
            command=str(data.get("command", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RunLock:
    """The run directory's driver lock (``with RunLock(run_dir) as lock:``, or acquire/release).

    :meth:`acquire` never waits: the lock is free (taken, returns the stale holder if a previous
    driver died holding it) or held by a live process (:class:`RunDirBusy`).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock = FileLock(str(self.run_dir / LOCK_FILE), timeout=0)
        self.stale: Holder | None = None

    @property
    def held(self) -> bool:
        return bool(self._lock.is_locked)

    def acquire(self) -> Holder | None:
        """Take the lock and write ``driver.json``; returns the previous holder when it died
        holding the lock (a kill -9), else None. Raises :class:`RunDirBusy` naming the live
        holder's PID and host."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            holder = read_holder(self.run_dir)
            who = holder.describe() if holder else "a process that has not yet written driver.json"
            raise RunDirBusy(
                f"{self.run_dir} is in use by another driver ({who}); one driver per run "
                "directory: wait for it to finish, or stop it "
                f"({'kill ' + str(holder.pid) if holder else 'Ctrl-C'}) and run again with --resume"
            ) from None
        self.stale = read_holder(self.run_dir)
        atomic_write(self.run_dir / HOLDER_FILE, json.dumps(asdict(_me()), indent=1) + "\n")
        return self.stale

    def release(self) -> None:
        """Remove ``driver.json`` and release the lock (the lock file stays: flock needs one
        inode for every waiter)."""
        if not self.held:
            return
        try:
            (self.run_dir / HOLDER_FILE).unlink(missing_ok=True)
        finally:
            self._lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
