"""The registry of the GPU check's parts and how one part runs in its own process."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from gpu.loop import peak, throughput
from gpu.study import study
from gpu.trials import fractional
from gpu.workload import SIZES, Recorder

logger = logging.getLogger("gpu_check")

#: the parts in the order they run; their budgets (seconds) are in gpu_check.py
PARTS: dict[str, Callable[..., None]] = {
    "peak": peak,
    "throughput": throughput,
    "fractional": fractional,
    "study": study,
}


def run_part(name: str, mode: str, result: Path, *, data_dir: str | None = None) -> int:
    """Run one part in this process, its figures to ``result``; the exit status (0 ok, 1 error;
    the error is recorded under ``"error"``)."""
    sizes = SIZES[mode]
    rec = Recorder(result)
    rec["sizes"] = asdict(sizes)
    kwargs = {"data_dir": data_dir} if name == "study" else {}
    try:
        PARTS[name](sizes, rec, **kwargs)
    except Exception as error:
        logger.exception("part %s failed", name)
        rec["error"] = f"{type(error).__name__}: {error}"
        return 1
    return 0
