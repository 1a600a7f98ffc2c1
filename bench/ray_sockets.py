"""Which TCP sockets a local Ray (as ``search/run.py`` starts it) listens on, and on which address.

    .venv/bin/python bench/ray_sockets.py               # as run.py starts a local Ray
    .venv/bin/python bench/ray_sockets.py --as-before   # without the loopback setting
    .venv/bin/python bench/ray_sockets.py --as-before --node-ip 127.0.0.1   # _node_ip_address

It lists the listening sockets (``ss -ltnpH``) that appeared while Ray ran a task, by process,
with the local address: ``*`` or ``0.0.0.0`` is every interface, ``127.0.0.1`` is loopback only.
Run with RAY_TMPDIR set to a fresh folder; it calls ``ray.shutdown()`` at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def ours() -> set[int]:
    """This process, its descendants, and every process whose command line names RAY_TMPDIR
    (Ray's daemons of this run), so that other programs' sockets are left out."""
    parents: dict[int, int] = {}
    tmp = os.environ.get("RAY_TMPDIR", "\0")
    named = {os.getpid()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int(
                (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            )
            if tmp in (entry / "cmdline").read_bytes().decode(errors="replace"):
                named.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    found, grew = set(named), True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def listening() -> set[tuple[str, str]]:
    """``{(local address:port, process name)}`` of the listening TCP sockets of :func:`ours`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    pids = ours()
    found = set()
    for line in out.splitlines():
        parts = line.split()
        users = parts[-1]
        if not any(f"pid={pid}," in users for pid in pids):
            continue
        process = users.split('"')[1] if '"' in users else "?"
        found.add((parts[3], process))
    return found


def _pid() -> int:
    return os.getpid()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-ip", help="also pass _node_ip_address to ray.init")
    parser.add_argument(
        "--as-before", action="store_true", help="without run.py's loopback setting"
    )
    args = parser.parse_args()

    from search.cli.entry import LOOPBACK_RAY, local_ray_environment

    if args.as_before:
        os.environ.setdefault(LOOPBACK_RAY[0], "1")
    local_ray_environment()  # as search/run.py does for a local run, before importing ray
    import ray

    before = listening()
    kwargs = {
        "num_cpus": 1,
        "include_dashboard": False,
        "log_to_driver": False,
        "object_store_memory": 80 * 2**20,
        "configure_logging": False,
    }
    if args.node_ip:
        kwargs["_node_ip_address"] = args.node_ip
    context = ray.init(**kwargs)
    ray.get(ray.remote(_pid).remote())  # a worker process too
    time.sleep(1.0)
    new = sorted(listening() - before, key=lambda item: item[1])
    print(f"{LOOPBACK_RAY[0]}={os.environ.get(LOOPBACK_RAY[0])}")
    print(f"ray.init({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
    print(f"node address Ray reports: {context.address_info['node_ip_address']}")
    print(f"{'process':<16} {'listens on':<24} every interface?")
    everywhere = 0
    for address, process in new:
        wide = address.rsplit(":", 1)[0] in ("*", "0.0.0.0", "[::]")
        everywhere += wide
        print(f"{process:<16} {address:<24} {'yes' if wide else 'no'}")
    print(f"{len(new)} sockets, {everywhere} on every interface")
    ray.shutdown()


if __name__ == "__main__":
    main()
