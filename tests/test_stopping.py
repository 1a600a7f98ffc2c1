"""SIGTERM takes the Ctrl-C path, and a second signal during the clean-up ends at once
(search.running.stopping), in a subprocess without Ray (the fault suite checks a real study)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from search.running import stopping

    stopping.stop_on_signals()
    try:
        os.kill(os.getpid(), signal.{first})
        time.sleep(5)
        sys.exit("the first signal did not interrupt")
    except KeyboardInterrupt:
        print("stopping", stopping.signal_name(), stopping.exit_status(), flush=True)
    stopping.end_at_once_on_another("Resume with: ...")
    stopping.raise_if_pending()  # the stop path took the signal: not raised again
    print("cleaning up", flush=True)
    os.kill(os.getpid(), signal.{second})
    time.sleep(5)
    sys.exit("the second signal did not end the process")
    """
)


@pytest.mark.parametrize(
    ("first", "second", "status", "name"),
    [("SIGTERM", "SIGTERM", 143, "SIGTERM"), ("SIGTERM", "SIGINT", 143, "SIGTERM"),
     ("SIGINT", "SIGTERM", 130, "Ctrl-C")],
)  # fmt: skip
def test_a_second_signal_ends_at_once_with_the_first_ones_status(
    first: str, second: str, status: int, name: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(first=first, second=second)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == status, done.stdout + done.stderr
    assert f"stopping {name} {status}" in done.stdout and "cleaning up" in done.stdout
    assert f"{second} again: stopped at once" in done.stderr and "Resume with:" in done.stderr


def test_a_signal_the_handler_could_not_raise_is_raised_again() -> None:
    """A KeyboardInterrupt raised where Python ignores it (a weakref callback) is not lost."""
    script = textwrap.dedent(
        """
        import os, signal
        from search.running import stopping

        stopping.stop_on_signals()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pass  # as if lost
        try:
            stopping.raise_if_pending()
        except KeyboardInterrupt:
            print("raised again", stopping.exit_status())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "raised again 143" in done.stdout, done.stdout + done.stderr
