"""How a search stops on a signal: SIGTERM is Ctrl-C, and a second signal ends at once.

systemd, Kubernetes, Slurm and ``timeout`` stop a process with SIGTERM. The driver routes it into
the Ctrl-C path (:func:`stop_on_signals`: the handler raises :class:`KeyboardInterrupt` in the
main thread), so both stop the same way: Ray is shut down, the running trials are marked
interrupted, the MLflow parent run KILLED, the resume command printed. The exit status says which
signal it was (:func:`exit_status`): 130 for SIGINT, 143 for SIGTERM (128 + the signal number, as
a shell reports a process the signal killed).

``ray.init`` installs its own SIGTERM handler in the driver (``sys.exit``, which tears the core
worker down under Tune's threads: a C++ abort, exit 134), so :func:`stop_on_signals` is called
again after it. An exception a signal handler raises can land where Python ignores it (a weakref
callback, a ``__del__``: "Exception ignored in ..."), so the signal is also recorded, and
:func:`raise_if_pending` (a Tune callback, :class:`search.running.stop_check.PendingStop`, at
every step of Tune's loop) raises it again until the stop path has taken it.

A SIGTERM to the whole process group (systemd's default, Slurm) reaches the Ray this driver
started too; :func:`stop_ray` then kills what is left of it instead of waiting for its GCS.

**Ray's own processes.** When the raylet or the GCS of the Ray this driver started dies, the
trials' workers die with it: that is the cluster's fault, not the trials'. :func:`watch_ray` (a
thread) sees it within a second and interrupts the main thread (or, when the main thread waits
inside Ray's client for a dead GCS, runs the stop path itself after a few seconds), and the
driver's callback that
hears of a dead worker asks :func:`lost_ray_processes` before blaming the trial
(:func:`stop_for_lost_ray`); either way the session stops as on Ctrl-C, with the trials that
were running marked interrupted (never FAIL), one line naming what died (:func:`ray_lost`), and
exit status 1. A worker killed alone (the raylet and GCS alive) stays a trial failure. For a
cluster joined with ``--address`` the driver cannot see the processes; Ray's own errors apply.

While the driver cleans up after the first signal (seconds), :func:`end_at_once_on_another`
makes a second SIGINT or SIGTERM end the driver at once: the processes of the Ray it started
are killed (none is left behind), one line says so with the resume command, and it exits with
the same status. What the clean-up had not marked yet (trials still RUNNING in Optuna or MLflow)
is marked interrupted by the next ``--resume``, as after ``kill -9``. (While ``ray.shutdown``
runs, Ray's core worker has put SIGTERM back to its default: a second SIGTERM then ends the
driver by the signal itself, status 143 all the same, and Ray's processes, which Ray ties to
the driver's life, end with it; the one line is not printed.)
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

#: the signals received, in order (the first says how the driver stopped)
_received: list[int] = []
#: whether the stop path took the first signal (:func:`end_at_once_on_another`)
_taken: list[bool] = []
#: the system processes of the local Ray that died, when that is why the driver stops
_lost: list[str] = []
#: set when the driver shuts Ray down itself (its processes then end on purpose)
_shutting_down: list[bool] = []
#: the processes whose death ends the node (Ray's names for them)
VITAL = ("gcs_server", "raylet")


Handlers = dict[signal.Signals, Any]


def stop_on_signals() -> Handlers:
    """SIGTERM and SIGINT raise :class:`KeyboardInterrupt` in the main thread from now on, and
    are recorded (call it from the main thread, again after ``ray.init``); returns the handlers
    it replaced, for :func:`restore`."""
    return {
        signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGINT)
    }


def restore(handlers: Handlers) -> None:
    """Put back the handlers :func:`stop_on_signals` replaced, and forget what was received (a
    driver run in-process, as the tests do, leaves the process as it found it)."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    _received.clear()
    _taken.clear()
    _lost.clear()
    _shutting_down.clear()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    first = not _received
    _received.append(signum)
    if first:  # the ones after it (Python runs each pending handler in turn) are recorded only:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")  # no raise mid-clean-up


def ray_lost() -> list[str]:
    """The Ray system processes whose death stopped the driver (empty: it was not that, or a
    SIGTERM came too: sent to the whole process group, it stopped Ray's processes as well)."""
    return [] if signal.SIGTERM in _received else list(_lost)


def stop_for_lost_ray(lost: list[str]) -> None:
    """Record that Ray lost ``lost`` and raise :class:`KeyboardInterrupt` (from the main thread:
    a Tune callback), so the session stops through the stop path."""
    if not _lost:
        _lost.extend(lost)
    raise KeyboardInterrupt(f"Ray lost {', '.join(lost)}")


#: how long the watch waits for the main thread to take a lost Ray before it stops the driver
#: itself (the main thread can be blocked inside Ray's C++ client, waiting for a dead GCS)
GRACE_S = 5.0


def watch_ray(on_stuck: Callable[[list[str]], int], interval: float = 0.5) -> None:
    """Start a daemon thread that, when a vital process of the local Ray dies, records it and
    interrupts the main thread (nothing for a cluster joined with ``--address``). When the main
    thread does not take it within :data:`GRACE_S` (blocked in Ray's client on a dead GCS, which
    would end the process after 60 s of silence), the thread kills what is left of the local
    Ray, runs ``on_stuck(lost)`` (the session's stop path) and exits with the status it
    returns."""
    if not _local_head():
        return

    def watch() -> None:
        while not (_received or _lost or _shutting_down) and _local_head():
            lost = lost_ray_processes()
            if lost and not _shutting_down and _ended_by_sigterm():
                # a SIGTERM to the whole process group reached Ray's processes before the
                # driver's handler ran (it runs only when the main thread is back in Python):
                # the same signal is on its way to the driver, so this is that stop, not a
                # lost Ray
                if not _received:
                    _received.append(signal.SIGTERM)
                    _thread.interrupt_main()
                    _stop_if_stuck([], on_stuck)  # nothing lost: a stop on a signal
                return
            if lost and not _shutting_down:  # not the driver's own shutdown
                _lost.extend(lost)
                if not _received:  # a signal is stopping the driver already otherwise
                    _thread.interrupt_main()
                    _stop_if_stuck(lost, on_stuck)
                return
            time.sleep(interval)

    threading.Thread(target=watch, name="pptp-ray-watch", daemon=True).start()


def _stop_if_stuck(lost: list[str], on_stuck: Callable[[list[str]], int]) -> None:
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        if _taken:  # the main thread is stopping the session
            return
        time.sleep(0.2)
    _taken.append(True)
    _shutting_down.append(True)
    _kill_local_ray()
    status = 1
    try:
        status = on_stuck(lost)
    except BaseException as error:  # ending: say it, never hang here
        logger.warning("could not finish the stop (%s)", error)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _local_head() -> bool:
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        return node is not None and bool(node.head)
    except Exception:
        return False


def raise_if_pending() -> None:
    """Raise :class:`KeyboardInterrupt` when a signal was received and the stop path has not
    taken it (the handler's exception was lost)."""
    if _received and not _taken:
        raise KeyboardInterrupt(f"signal {signal.Signals(_received[0]).name}")


def exit_status() -> int:
    """128 + the signal that stopped the driver: 143 after SIGTERM, 130 after SIGINT."""
    return 128 + int(signal.SIGTERM if signal.SIGTERM in _received else signal.SIGINT)


def signal_name() -> str:
    """``SIGTERM`` or ``Ctrl-C``: what stopped the driver, for its messages."""
    return "SIGTERM" if signal.SIGTERM in _received else "Ctrl-C"


def end_at_once_on_another(resume_hint: str) -> None:
    """From now on a SIGINT or SIGTERM kills the Ray processes this driver started and exits at
    once (the first signal's clean-up is under way)."""
    _taken.append(True)

    def end(signum: int, frame: FrameType | None) -> None:
        _kill_local_ray()
        name = signal.Signals(signum).name
        os.write(
            sys.stderr.fileno(),
            f"\n{name} again: stopped at once (trials still RUNNING are marked interrupted by "
            f"--resume). {resume_hint}\n".encode(),
        )
        os._exit(exit_status())

    signal.signal(signal.SIGINT, end)
    signal.signal(signal.SIGTERM, end)


def stop_ray() -> None:
    """``ray.shutdown()``, the driver's only way to stop Ray (so :func:`watch_ray` knows it is on
    purpose); when the Ray this driver started has lost its GCS or raylet (a SIGTERM to the whole
    process group reaches them too), its other processes are killed first, so that nothing waits
    for a GCS that is gone."""
    import ray

    _shutting_down.append(True)  # from here a dead raylet or GCS is no news (watch_ray)
    if lost_ray_processes():
        _kill_local_ray()
    ray.shutdown()


def lost_ray_processes() -> list[str]:
    """The vital processes (:data:`VITAL`) of the Ray node this driver started that have died;
    empty when they live, or when the driver joined a cluster."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        if node is None or not node.head:
            return []
        return sorted({kind for kind, _ in node.dead_processes() if kind in VITAL})
    except Exception as error:
        logger.debug("could not read the local Ray's processes (%s)", error)
        return []


def _ended_by_sigterm() -> bool:
    """Whether a vital process of the local Ray ended by SIGTERM (what a signal to the whole
    process group does), rather than dying some other way (SIGKILL, a crash)."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        if node is None or not node.head:
            return False
        return any(
            kind in VITAL and process.returncode == -signal.SIGTERM
            for kind, process in node.dead_processes()
        )
    except Exception as error:
        logger.debug("could not read the local Ray's processes (%s)", error)
        return False


def _kill_local_ray() -> None:
    """SIGKILL the processes of the Ray node this driver started (raylet, GCS, workers); nothing
    when it joined a cluster (``--address``) or started none."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        if node is not None and node.head:
            node.kill_all_processes(check_alive=False, allow_graceful=False, wait=False)
    except Exception as error:  # ending at once: never stop here
        logger.debug("could not kill the local Ray processes (%s)", error)
