"""search.study.lock: one driver per run directory; a live holder is named; a lock left by a driver
killed with SIGKILL is free (the kernel releases flock) and is taken over, reported as stale."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from search.study.lock import HOLDER_FILE, RunDirBusy, RunLock, read_holder

HOLD = """
import sys, time
from search.study.lock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_second_lock_is_refused_naming_the_holder_and_release_frees_it(tmp_path: Path) -> None:
    first = RunLock(tmp_path)
    assert first.acquire() is None  # nobody held it before
    holder = read_holder(tmp_path)
    assert holder is not None and holder.pid == os.getpid()
    with pytest.raises(RunDirBusy, match=f"PID {os.getpid()} on host {socket.gethostname()}"):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / HOLDER_FILE).exists()
    with RunLock(tmp_path) as again:
        assert again.held and again.stale is None


def test_a_live_holder_in_another_process_is_refused(tmp_path: Path) -> None:
    child = _holder(tmp_path)
    try:
        with pytest.raises(RunDirBusy, match=f"PID {child.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()


def test_a_lock_left_by_kill_9_is_taken_over_and_reported_stale(tmp_path: Path) -> None:
    child = _holder(tmp_path)
    os.kill(child.pid, signal.SIGKILL)  # no clean-up runs: driver.json stays, flock is freed
    child.wait()
    assert json.loads((tmp_path / HOLDER_FILE).read_text())["pid"] == child.pid
    lock = RunLock(tmp_path)
    stale = lock.acquire()
    try:
        assert stale is not None and stale.pid == child.pid
        assert "on host" in stale.describe()
        current = read_holder(tmp_path)
        assert current is not None and current.pid == os.getpid()
    finally:
        lock.release()
