"""A full disk is a clear stop: one line naming the path, the study stopped as on Ctrl-C, exit 1.

The driver writes the run directory (trial records, ``study.db``, its copy, the front CSV), and
Ray Tune wraps what a callback raises (``TuneError``), so a full disk used to end the study in a
long traceback with the trials and the MLflow parent left RUNNING. :func:`disk_full` finds the
``ENOSPC`` (or SQLite's "database or disk is full") in an exception's chain; the session then
stops Ray, marks what was running interrupted where the disk still lets it (each step on its own:
``--resume`` marks what could not be), ends the parent run KILLED and prints
:func:`describe`'s line and the resume command. Every file the driver writes is written whole or
not at all (``pptp.fileio.atomic_write``, SQLite's transactions), so once space is back
``--resume`` completes the study exactly once.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

#: what to free, at least: a trial's record, the study database and its copy take far less
FREE_AT_LEAST_MIB = 100


def disk_full(error: BaseException | None) -> BaseException | None:
    """The "no space left on device" error in ``error``'s chain (causes and contexts), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        if isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def describe(error: BaseException, run_dir: Path) -> str:
    """One line: the path that could not be written, the space free there, what to free."""
    path = Path(str(getattr(error, "filename", None) or run_dir))
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "its free space unknown"
    return (
        f"no space left on the device writing {path} ({free}); free at least "
        f"{FREE_AT_LEAST_MIB} MiB on it, then resume"
    )
