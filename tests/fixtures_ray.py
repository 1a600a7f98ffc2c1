"""Helpers for tests that start Ray or run ``search/run.py`` in subprocesses.

Each test gives Ray its own short temporary folder (``RAY_TMPDIR``) so that every process Ray
started for it can be found afterwards and stopped **by PID**: after a SIGKILL of a driver,
``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` survive, reparented to PID 1
(docs/stack-notes.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "search" / "run.py"


@pytest.fixture
def ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short private RAY_TMPDIR; afterwards, stop every process whose command line names it."""
    folder = tempfile.mkdtemp(prefix="pptp-ray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield folder
    import ray

    ray.shutdown()
    kill_processes_naming(folder)


def kill_processes_naming(text: str) -> list[int]:
    """SIGKILL every process (but this one) whose command line contains ``text``; their PIDs."""
    killed = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_dir.name), signal.SIGKILL)
                killed.append(int(pid_dir.name))
    return killed


def start_driver(
    args: list[str], log: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``search/run.py args`` in its own session (so its process group can be killed), stdout
    and stderr to ``log``."""
    handle = log.open("w")
    return subprocess.Popen(
        [sys.executable, str(RUN), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run_driver(
    args: list[str], log: Path, *, env: dict[str, str] | None = None, timeout: float = 240
) -> int:
    """Run ``search/run.py args`` to its end; returns the exit status."""
    driver = start_driver(args, log, env=env)
    try:
        return driver.wait(timeout=timeout)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()


def wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, alive: subprocess.Popen | None
) -> None:
    """Poll ``condition`` every 0.3 s until it holds; fail naming ``what`` after ``timeout`` or
    when ``alive`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if alive is not None and alive.poll() is not None:
            pytest.fail(f"the driver exited ({alive.returncode}) before {what}")
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
