"""A damaged study.db is refused in one line naming the last good copy (search.study.backup);
the copy is SQLite's online backup, checked before it replaces the previous one."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution

from pptp.errors import ConfigError
from search.study import rundir
from search.study.backup import BACKUP, STUDY_DB, back_up, check_study_db


def _study(run: Path, n: int) -> optuna.Study:
    study = optuna.create_study(storage=rundir.storage(run), study_name="s", load_if_exists=True)
    for _ in range(n):
        trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
        study.tell(trial, trial.params["x"])
    return study


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated to half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage in the middle":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + b"\xa5" * 4096 + data[middle + 4096 :])
    elif how == "garbage from the start":
        path.write_bytes(b"not a database" * 100)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("truncated to half", "is damaged (SQLite:"),
        ("garbage in the middle", "is damaged (SQLite:"),
        ("garbage from the start", "is damaged (SQLite: file is not a database)"),
        ("empty", "is empty (0 bytes)"),
        ("missing", "is missing"),
    ],
)
def test_a_damaged_study_db_is_refused_naming_the_copy_and_the_copy_restores(
    tmp_path: Path, how: str, says: str
) -> None:
    _study(tmp_path, 12)
    assert back_up(tmp_path) == tmp_path / BACKUP
    check_study_db(tmp_path, "s")  # the live one is sound
    _damage(tmp_path / STUDY_DB, how)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError) as info:
        check_study_db(tmp_path, "s")
    message = str(info.value)
    assert says in message and "\n" not in message, message
    assert f"`cp {tmp_path / BACKUP} {tmp_path / STUDY_DB}`" in message
    assert "start the study anew under a new run directory" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    shutil.copy(tmp_path / BACKUP, tmp_path / STUDY_DB)  # the documented restore
    check_study_db(tmp_path, "s")
    assert len(_study(tmp_path, 0).trials) == 12


def test_without_a_copy_the_message_says_so_and_another_study_is_not_this_one(
    tmp_path: Path,
) -> None:
    _study(tmp_path, 1)
    with pytest.raises(ConfigError, match=re.escape("holds no study named 'other'")) as info:
        check_study_db(tmp_path, "other")
    assert "keeps no copy of it" in str(info.value)


def test_a_copy_that_fails_its_check_keeps_the_previous_one(tmp_path: Path) -> None:
    _study(tmp_path, 3)
    back_up(tmp_path)
    good = (tmp_path / BACKUP).read_bytes()
    _damage(tmp_path / STUDY_DB, "garbage in the middle")
    try:
        assert back_up(tmp_path) is None
    except Exception as error:  # SQLite may refuse to read it at all: the copy is kept too
        assert "malformed" in str(error) or "not a database" in str(error)
    assert (tmp_path / BACKUP).read_bytes() == good
    assert not list(tmp_path.glob(".*partial"))
    assert back_up(tmp_path / "nowhere") is None  # a study kept in a shared database
