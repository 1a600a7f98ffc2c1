"""The run directory's ``study.db``: its last good copy, and the check a resumed one must pass.

A damaged ``study.db`` (a disk that failed, a file truncated or overwritten) must never be
replaced silently: Optuna would create an empty study in it and ``--resume`` would run the whole
study again under the old MLflow parent. So ``--resume`` checks it first
(:func:`check_study_db`: present, not empty, SQLite's ``PRAGMA quick_check`` passes, it holds
the study) and refuses a damaged one in one line (exit 2, nothing written), naming the last good
copy and how to restore it.

The copy: after every trial that ends, the driver copies ``study.db`` with SQLite's online backup
(:meth:`sqlite3.Connection.backup`, a consistent snapshot while Optuna writes), checks the copy
(``quick_check``), and only then renames it over ``study.backup.db`` (:func:`back_up`), so the
copy is always a database that passed the check. Restoring it::

    cp <run dir>/study.backup.db <run dir>/study.db
    python search/run.py --space <space> --resume --output <run dir>

Trials that ended after the copy are not in it: their records stay in ``trials/``, and the
resumed study runs them again.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from pptp.errors import ConfigError

STUDY_DB = "study.db"
BACKUP = "study.backup.db"


def back_up(run_dir: Path) -> Path | None:
    """Copy ``run_dir/study.db`` to ``run_dir/study.backup.db`` (online backup, checked, renamed
    into place); None when there is no ``study.db`` (a study in a shared database) or the copy
    did not pass the check (the previous copy is kept)."""
    source = run_dir / STUDY_DB
    if not source.is_file():
        return None
    target = run_dir / BACKUP
    partial = run_dir / f".{BACKUP}.partial"
    partial.unlink(missing_ok=True)
    with (
        closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as db,
        closing(sqlite3.connect(partial)) as copy,
    ):
        db.backup(copy)
        good = _quick_check(copy) is None
    if not good:
        partial.unlink(missing_ok=True)
        return None
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    return target


def check_study_db(run_dir: Path, study_name: str) -> None:
    """Raise :class:`ConfigError` (one line: what is wrong, the last good copy and how to restore
    it, how to start anew) unless ``run_dir/study.db`` is a sound SQLite database holding the
    Optuna study ``study_name``. Reads only."""
    path = run_dir / STUDY_DB
    problem = _problem(path, study_name)
    if problem is None:
        return
    raise ConfigError(f"--resume: {path} {problem}; nothing was changed. {_remedy(run_dir)}")


def _problem(path: Path, study_name: str) -> str | None:
    if not path.is_file():
        return "is missing"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            damage = _quick_check(db)
            if damage is not None:
                return f"is damaged (SQLite: {damage})"
            names = {row[0] for row in db.execute("SELECT study_name FROM studies")}
    except sqlite3.DatabaseError as error:
        return f"is damaged (SQLite: {error})"
    if study_name not in names:
        return f"holds no study named {study_name!r}"
    return None


def _quick_check(db: sqlite3.Connection) -> str | None:
    """None when SQLite's ``PRAGMA quick_check`` passes, else its first complaint."""
    try:
        first = db.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as error:
        return str(error)
    if first and first[0] == "ok":
        return None
    text = str(first[0]) if first else "no answer"
    return " ".join(text.replace("*** in database main ***", "").split())  # one line


def _remedy(run_dir: Path) -> str:
    fresh = "or start the study anew under a new run directory (without --resume)"
    backup = run_dir / BACKUP
    if not backup.is_file():
        return f"This run keeps no copy of it: {fresh}"
    taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(backup.stat().st_mtime))
    return (
        f"Its last good copy ({taken}, trials that ended later run again): restore it with "
        f"`cp {backup} {run_dir / STUDY_DB}` and resume again, {fresh}"
    )
