"""pptp.fileio.atomic_write: all or nothing, durable, no debris on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pptp.fileio import atomic_write


def test_writes_bytes_and_text_and_creates_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "state.json"
    assert atomic_write(target, '{"a": 1}\n') == target
    assert target.read_text() == '{"a": 1}\n'
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]  # no temporary left


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")

    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_the_file_is_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1]
    )
    atomic_write(target, "x")
    assert events[:2] == ["fsync", "replace"]  # data on disk, then the rename
    assert events[2:] == ["fsync"]  # and the folder, so the rename is on disk too
