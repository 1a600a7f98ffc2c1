"""Headless Chromium for the browser tests: Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium with the system browser (no browser download; ``.ci/setup`` installs both).

:func:`headless_chromium` starts chromedriver and one Chromium with the flags a root user on a
machine without network needs (docs/stack-notes.md: ``--no-sandbox``, no background networking, no
component updates, no sync, a fresh profile), and afterwards stops them: ``driver.quit()``, then
SIGKILL, by PID, to any process chromedriver started that is still alive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=2200,1100",  # wide enough that the grid renders every column
)


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")"
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@contextlib.contextmanager
def headless_chromium(profile: Path) -> Iterator[Any]:
    """A Selenium ``webdriver.Chrome`` on the system Chromium, stopped (by PID) on exit."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(bash .ci/setup does, as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    driver_pid = service.process.pid
    started = _children(driver_pid)
    try:
        yield driver
    finally:
        started |= _children(driver_pid)
        try:
            driver.quit()
        finally:
            service.stop()
            for pid in sorted(started | {driver_pid}):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(profile, ignore_errors=True)


def wait_for(
    what: str, check: Callable[[], Any], *, timeout_s: float = 30.0, every_s: float = 0.25
) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as error:  # the page is still rendering: try again
            last = error
        else:
            if last:
                return last
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")
