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

While the driver cleans up after the first signal (seconds), :func:`end_at_once_on_another`
makes a second SIGINT or SIGTERM end the driver at once: the processes of the Ray it started
are killed (none is left behind), one line says so with the resume command, and it exits with
the same status. What the clean-up had not marked yet (trials still RUNNING in Optuna or MLflow)
is marked interrupted by the next ``--resume``, as after ``kill -9``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

logger = logging.getLogger(__name__)

#: the signals received, in order (the first says how the driver stopped)
_received: list[int] = []
#: whether the stop path took the first signal (:func:`end_at_once_on_another`)
_taken: list[bool] = []


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise :class:`KeyboardInterrupt` in the main thread from now on, and
    are recorded (call it from the main thread, again after ``ray.init``)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def raise_if_pending() -> None:
    """Raise :class:`KeyboardInterrupt` when a signal was received and the stop path has not
    taken it (the handler's exception was lost)."""
    if _received and not _taken:
        raise KeyboardInterrupt(f"signal {signal.Signals(_received[0]).name}")


def exit_status() -> int:
    """128 + the signal that stopped the driver: 143 after SIGTERM, 130 after SIGINT."""
    signum = _received[0] if _received else signal.SIGINT
    return 128 + int(signum)


def signal_name() -> str:
    """``SIGTERM`` or ``Ctrl-C``: what stopped the driver, for its messages."""
    return "SIGTERM" if _received and _received[0] == signal.SIGTERM else "Ctrl-C"


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
    """``ray.shutdown()``; when the Ray this driver started has lost its GCS or raylet (a
    SIGTERM to the whole process group reaches them too), its other processes are killed first,
    so that nothing waits for a GCS that is gone."""
    import ray

    if lost_ray_processes():
        _kill_local_ray()
    ray.shutdown()


def lost_ray_processes() -> list[str]:
    """The system processes of the Ray node this driver started that have died (``raylet``,
    ``gcs_server``, ...); empty when all live, or when the driver joined a cluster."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        if node is None or not node.head:
            return []
        return sorted({kind for kind, _ in node.dead_processes()})
    except Exception as error:
        logger.debug("could not read the local Ray's processes (%s)", error)
        return []


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
