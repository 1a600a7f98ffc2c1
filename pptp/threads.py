"""Torch's CPU threads, set explicitly to the CPUs a training was given.

Torch sizes its intra-op thread pool from ``OMP_NUM_THREADS`` or, without it, from every core of
the machine. A Ray worker inherits whatever Ray put in its environment (Ray sets
``OMP_NUM_THREADS`` only for some tasks, and not in every version), so two trials of 1 CPU each on a
2-core machine can each run 2 threads: measured with direct ``run_trial`` calls on 2 busy cores,
an epoch then costs 5x the CPU time of one thread per trial. Every training therefore runs inside
:func:`torch_threads` with the CPUs it reserved: a search trial and a reference task with
``study.resources.cpus``, pick's re-training and a localisation with the CPUs of their process
(:func:`process_cpus`).

Fractional CPUs round down, with at least one thread (0.5 CPU: 1 thread, 2.5 CPUs: 2).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

logger = logging.getLogger(__name__)


def threads_for(cpus: float) -> int:
    """Torch threads for a training given ``cpus`` CPUs: ``floor(cpus)``, at least 1."""
    if not cpus > 0:
        raise ValueError(f"a training needs a positive number of CPUs, not {cpus!r}")
    return max(1, math.floor(cpus))


def process_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one: a container or
    ``taskset`` limit counts, unlike :func:`os.cpu_count`)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextmanager
def torch_threads(cpus: float) -> Iterator[int]:
    """Run the block with :func:`threads_for` ``(cpus)`` torch threads, and restore the previous
    count after it (a reused Ray worker runs the next trial with its own setting). Yields the
    number of threads set."""
    n = threads_for(cpus)
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
        logger.debug("torch threads %d -> %d (%g CPUs)", before, n, cpus)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


__all__ = ["process_cpus", "threads_for", "torch_threads"]
