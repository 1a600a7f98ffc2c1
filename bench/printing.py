"""What every benchmark prints around its figures: provenance and CPU use (the figures
themselves as aligned columns: :func:`pptp.tables.format_table`); and the set-up they share:
``--threads`` (:func:`parse_args`) and library warnings as comment lines (:func:`log_warnings`).

Imported by the scripts in ``bench/`` (``python bench/<script>.py`` puts this folder on the path).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
import torchvision


def provenance(argv: Sequence[str]) -> list[str]:
    """Where the numbers come from: command, date, versions, threads, device, load."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    try:
        git = ["git", "-C", os.path.dirname(os.path.abspath(__file__))]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "../pptp", "../search"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += " (pptp/ and search/ modified)" if dirty else " (pptp/ and search/ clean)"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [
        f"command: {' '.join([os.path.basename(sys.executable), *argv])}",
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}; git commit {commit}",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy "
        f"{np.__version__}, python {platform.python_version()}",
        f"device: {device} ({cpu}, {os.cpu_count()} logical CPUs); torch threads "
        f"{torch.get_num_threads()}, interop {torch.get_num_interop_threads()}",
        "load average (1, 5, 15 min) at start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
    ]


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--threads N`` added and applied
    (``torch.set_num_threads(N)``; without it, torch's own default)."""
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def log_warnings() -> None:
    """Library warnings as ``# log`` comment lines on stdout, between the figures; the attacks'
    per-example fallback notices (frequent at small K) left out."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format="# log %(name)s: %(message)s"
    )
    logging.getLogger("pptp.attacks").setLevel(logging.ERROR)


def footer(wall0: float, cpu0: os.times_result) -> str:
    """Wall time, this process's CPU time (children included) and the load average at the end.

    CPU time / wall time near the thread count means the benchmark had the cores to itself; far
    below it means other processes competed for them (the figures are then slower and noisier).
    """
    now = os.times()
    wall = time.perf_counter() - wall0
    cpu = sum(getattr(now, k) - getattr(cpu0, k)
              for k in ("user", "system", "children_user", "children_system"))  # fmt: skip
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"wall {wall:.0f}s, CPU {cpu:.0f}s: {cpu / wall:.2f} cores busy on average "
        f"(torch threads {torch.get_num_threads()}); load average at end: {load}"
    )
