"""What a study can run on, checked before anything starts: the Ray address and the concurrency.

- :func:`probe_ray_address`: ``--address`` must reach a Ray head within seconds. ``ray.init`` to a
  port where no Ray runs keeps retrying for minutes (it waits for a GCS to come up), so the driver
  first opens a TCP connection and checks that the port speaks gRPC (HTTP/2), as Ray's GCS and its
  client server do; a Redis or web server on that port is refused too. ``auto`` resolves as Ray
  does for a cluster started with ``ray start``: ``$RAY_ADDRESS``, else the address Ray wrote to
  ``<RAY_TMPDIR, else TMPDIR, else /tmp>/ray/ray_current_cluster``.
- :func:`concurrency_cap`: ``study.max_concurrent`` above what the resources can run at once (CPUs
  and GPUs of this machine, or of the cluster, divided by what each trial reserves) is capped,
  with a warning: beyond it, Optuna would hand out parameters to trials that only wait.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from pptp.errors import ConfigError

#: the client preface of HTTP/2 (RFC 9113 §3.4) and an empty SETTINGS frame
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04
_RAY_CLIENT_PORT = 10001
_LOCAL = ("local",)


class RayUnreachable(ConfigError):
    """``--address`` names no reachable Ray cluster."""


def ray_address_file() -> Path:
    """Where ``ray start`` records the address of the last cluster it started (Ray's own rule:
    ``$RAY_TMPDIR``, else ``$TMPDIR`` on Linux, else ``/tmp``; then ``ray/ray_current_cluster``)."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    else:
        base = "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def resolve_address(address: str) -> str | None:
    """``host:port`` (or ``ray://host:port``) that ``address`` names; None for ``local``.

    ``auto``: ``$RAY_ADDRESS`` when set, else the address file of :func:`ray_address_file`;
    neither is a :class:`RayUnreachable`.
    """
    chosen = address.strip()
    if chosen in _LOCAL:
        return None
    if chosen == "auto":
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if env and env != "auto":
            return env
        path = ray_address_file()
        try:
            recorded = path.read_text().strip()
        except OSError:
            recorded = ""
        if not recorded:
            raise RayUnreachable(
                "--address auto: no running Ray cluster found ($RAY_ADDRESS is not set and "
                f"{path} does not exist); start one with `ray start --head` or give its "
                "address, e.g. --address 10.0.0.5:6379"
            )
        return recorded
    return chosen


def _host_port(address: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname:
        raise RayUnreachable(f"--address {address!r}: expected host:port or ray://host:port")
    if port is None:
        if parts.scheme == "ray":
            port = _RAY_CLIENT_PORT
        else:
            raise RayUnreachable(f"--address {address!r}: give the port, e.g. {address}:6379")
    return parts.hostname, port


def probe_ray_address(address: str, *, timeout_s: float = 5.0) -> str | None:
    """Check within ``timeout_s`` that ``address`` reaches a Ray head; returns the resolved
    address (None for ``local``). Raises :class:`RayUnreachable` (exit status 2) when nothing
    listens there or what listens does not speak gRPC."""
    resolved = resolve_address(address)
    if resolved is None:
        return None
    host, port = _host_port(resolved)
    shown = f"--address {address}" + (f" ({resolved})" if resolved != address else "")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            conn.sendall(_H2_PREFACE)
            head = _read(conn, 9)
    except OSError as err:
        raise RayUnreachable(
            f"{shown}: no Ray cluster answers at {host}:{port} ({err}; waited at most "
            f"{timeout_s:g} s); start it (`ray start --head --port {port}`) or fix --address"
        ) from err
    if len(head) < 9 or head[3] != _H2_SETTINGS:
        raise RayUnreachable(
            f"{shown}: {host}:{port} answers but is not a Ray head (it does not speak gRPC; "
            "another service uses that port); give the Ray head's GCS address (the one "
            "`ray start --head` prints) or ray://host:10001 for the Ray client"
        )
    return resolved


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        try:
            chunk = conn.recv(n - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def concurrency_cap(
    max_concurrent: int, *, cpus: float, gpus: float, available: Mapping[str, float]
) -> tuple[int, str | None]:
    """``(concurrency, warning)``: ``max_concurrent`` capped to the trials ``available`` resources
    (``{"CPU": n, "GPU": m}``) can run at once when each reserves ``cpus`` and ``gpus``; the
    warning says why when it was capped (None otherwise). At least 1 (a trial that does not fit
    at all is refused earlier, as a resources error)."""
    fits = []
    for name, need in (("CPU", cpus), ("GPU", gpus)):
        if need > 0:
            fits.append((math.floor(available.get(name, 0.0) / need + 1e-9), name, need))
    if not fits:
        return max_concurrent, None
    cap, name, need = min(fits)
    cap = max(cap, 1)
    if max_concurrent <= cap:
        return max_concurrent, None
    have = available.get(name, 0.0)
    return cap, (
        f"study.max_concurrent = {max_concurrent} capped to {cap}: {have:g} {name}s are "
        f"available and each trial reserves {need:g}; more would only wait (and hold Optuna "
        "trials RUNNING)"
    )
