"""What the three entry points (run.py, pick.py, localize.py) share: environment and bad input.

Bad input (:class:`~pptp.errors.ConfigError`, raised while preparing or running) is one line on
stderr and exit status 2, never a traceback. Call :func:`quiet_environment` before anything imports
ray or mlflow.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from pptp.errors import ConfigError

PlanT = TypeVar("PlanT")

ENVIRONMENT = {
    "RAY_AUTH_MODE": "disabled",  # no ~/.ray/auth_token
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # no "Creating initial tables" lines
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no Tune banners (the driver prints progress)
}


def quiet_environment() -> None:
    """Set the defaults above, unless the user set them."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def run_command(args: Any, prepare: Callable[[Any], PlanT], execute: Callable[[PlanT], int]) -> int:
    """``execute(prepare(args))`` with logging set up and bad input turned into exit status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("search").setLevel(logging.INFO)
    try:
        return execute(prepare(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
