"""A full disk is found in a wrapped exception's chain and said in one line
(search.running.disk_full); the fault suite checks a real study."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from search.running.disk_full import describe, disk_full


def test_enospc_is_found_under_the_exceptions_that_wrap_it(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "trials" / "t.json"))
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("TuneError: a callback failed") from inner
    except RuntimeError as outer:
        assert disk_full(outer) is full
    assert disk_full(RuntimeError("other")) is None
    assert disk_full(OSError(errno.EACCES, "denied")) is None
    sqlite_full = sqlite3.OperationalError("database or disk is full")
    assert disk_full(sqlite_full) is sqlite_full
    line = describe(full, tmp_path)
    assert line.startswith(f"no space left on the device writing {tmp_path / 'trials' / 't.json'}")
    assert "MiB free there" in line and "free at least 100 MiB" in line and "\n" not in line
    assert str(tmp_path) in describe(sqlite_full, tmp_path)  # no file name: the run directory
