"""What the entry points (run.py, sync.py, pick.py, localize.py, compare.py) share: environment,
output verbosity and bad input.

Bad input (:class:`~pptp.errors.ConfigError`, raised while preparing or running) is one line on
stderr and exit status 2, never a traceback. Call :func:`quiet_environment` before anything imports
ray or mlflow.

Verbosity (:func:`add_output_flags`): the default prints one whole line per event (a trial
started or ended, a reference trained) with the elapsed time and an estimate of the time left,
and keeps worker logs off the terminal; ``--quiet`` prints only warnings, errors and the final
tables; ``--verbose`` adds the library logs (INFO) and, in a search, the Ray workers' own output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from pptp.errors import ConfigError

PlanT = TypeVar("PlanT")

ENVIRONMENT = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # no "Creating initial tables" lines
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no Tune banners (the driver prints progress)
    # Ctrl-C: Tune's own SIGINT handler waits for trials to stop; the driver stops Ray itself
    # and records what was running (search/run.py), within seconds
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # an unreachable tracking server costs seconds, not MLflow's default minutes of retries: what
    # a trial cannot log is kept and replayed (search/sync.py)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


#: set (unless the user set them) only for the Ray a driver starts itself on this machine, by
#: :func:`local_ray_environment`; a cluster joined with ``--address`` gets the user's environment
#: as it is (Ray then uses token authentication when the user set ``RAY_AUTH_MODE=token`` or
#: has a token in ``~/.ray/auth_token``, and none otherwise)
LOCAL_RAY_ENVIRONMENT = {
    # the local Ray listens on 127.0.0.1 only (below), so no token: without this Ray 2.60 writes
    # ~/.ray/auth_token and enables token authentication for every local run
    "RAY_AUTH_MODE": "disabled",
}
#: Ray's switch for a machine-local Ray (its default on macOS and Windows): the node's address is
#: 127.0.0.1 instead of the routable one, and then the GCS, the raylet, the driver and the workers
#: listen on 127.0.0.1 only (measured with ``ss -ltnp``: bench/ray_sockets.py). Ray reads it when
#: ``ray`` is imported, so it is set only while ``ray`` is not imported yet in this process
LOOPBACK_RAY = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def quiet_environment() -> None:
    """Set the defaults above, unless the user set them."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def local_ray_environment() -> None:
    """Set :data:`LOCAL_RAY_ENVIRONMENT` and, while ``ray`` is not imported yet,
    :data:`LOOPBACK_RAY` (each unless the user set it): call it before a ``ray.init()`` that
    starts Ray on this machine (as early as possible: before anything imports ray), never before
    joining a cluster."""
    for key, value in LOCAL_RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    if "ray" not in sys.modules:  # once imported, Ray keeps the value it read: never mix them
        os.environ.setdefault(*LOOPBACK_RAY)


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--verbose`` (mutually exclusive), read by :func:`run_command`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quiet",
        action="store_true",
        help="print only warnings, errors and the final tables (no progress lines)",
    )
    group.add_argument(
        "--verbose",
        action="store_true",
        help="also print the library logs and the Ray workers' own output",
    )


def verbosity(args: argparse.Namespace) -> int:
    """-1 quiet, 0 default, 1 verbose (from :func:`add_output_flags`; 0 without them)."""
    if getattr(args, "quiet", False):
        return -1
    return 1 if getattr(args, "verbose", False) else 0


def run_command(
    args: argparse.Namespace,
    prepare: Callable[[argparse.Namespace], PlanT],
    execute: Callable[[PlanT], int],
) -> int:
    """``execute(prepare(args))`` with logging set up and bad input turned into exit status 2."""
    level = verbosity(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # entry points print what a person reads; library INFO logs only with --verbose
    logging.getLogger("search").setLevel(logging.INFO if level > 0 else logging.WARNING)
    if level > 0:
        logging.getLogger().setLevel(logging.INFO)
    try:
        return execute(prepare(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
