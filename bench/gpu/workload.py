"""What the GPU check's parts run on: their sizes, synthetic CIFAR-shaped data, the device, and the
:class:`Recorder` through which every part writes its figures as soon as it has them (an atomic
JSON file per part), so that a part stopped at its time budget still hands back what it measured.

Sizes: :data:`GPU` fits the check's 8-minute budget on one H200; :data:`SMOKE` runs the same code
paths on 2 CPU cores in seconds (``--cpu-smoke``, for CI).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pptp.data import Pool  # noqa: E402
from pptp.fileio import atomic_write  # noqa: E402

CIFAR_SHAPE = (3, 32, 32)  # synthetic data: CIFAR-10's image shape and 10 classes
CIFAR_CLASSES = 10


@dataclass(frozen=True)
class Sizes:
    """Every size the parts use. Images are CIFAR-shaped (3x32x32) unless a field says not."""

    mode: str  # "gpu" | "cpu-smoke"
    # peak: an n x n x n matrix product, timed `peak_repeats` times after 3 warm-ups
    peak_n: int
    peak_repeats: int
    # throughput: ResNet-18 of this width and norm, `images` per epoch, `epochs` epochs
    width: int
    norm: str
    batch_size: int
    images: int
    epochs: int
    test_images: int  # the synthetic test set evaluated after every epoch (not timed)
    # fractional: a trial trains ResNet-18 on `trial_images` synthetic images for `trial_epochs`
    trial_images: int
    trial_epochs: int
    single_trials: int  # trials at 1 GPU each, one at a time
    shared_trials: int  # trials at `shared_gpu` each, `shared_concurrent` at a time
    shared_gpu: float
    shared_concurrent: int
    cpus_per_trial: float
    # study: search/run.py on digits at `study_image_size` (or CIFAR-10 when on disk)
    study_image_size: int
    study_width: int
    study_epochs: int
    study_batch_size: int
    study_trials: int
    study_references: int
    study_concurrent: int
    study_cpus: float
    study_gpus: float


#: one H200. Throughput: about a CIFAR-10 target's member set per epoch (24,500 images), rounded
#: to 96 batches of 256 so that ``torch.compile`` sees one batch shape (a short last batch would
#: compile a second graph inside the timed epochs). A trial: the member set for 2 epochs.
GPU = Sizes(
    mode="gpu",
    peak_n=8192,
    peak_repeats=10,
    width=64,
    norm="group",
    batch_size=256,
    images=24_576,
    epochs=3,
    test_images=1000,
    trial_images=24_500,
    trial_epochs=2,
    single_trials=3,
    shared_trials=8,
    shared_gpu=0.25,
    shared_concurrent=4,
    cpus_per_trial=4,
    study_image_size=32,
    study_width=64,
    study_epochs=15,
    study_batch_size=64,
    study_trials=3,
    study_references=2,
    study_concurrent=3,
    study_cpus=4,
    study_gpus=0.25,
)

#: 2 CPU cores, seconds per part (CI): the same code paths with tiny sizes
SMOKE = Sizes(
    mode="cpu-smoke",
    peak_n=256,
    peak_repeats=3,
    width=8,
    norm="group",
    batch_size=32,
    images=64,
    epochs=2,
    test_images=32,
    trial_images=32,
    trial_epochs=1,
    single_trials=1,
    shared_trials=2,
    shared_gpu=0.25,
    shared_concurrent=2,
    cpus_per_trial=0.5,
    study_image_size=16,  # 3 epochs of ResNet-18 w8 learn digits at 16x16 (~0.7), not at 8x8
    study_width=8,
    study_epochs=3,
    study_batch_size=32,
    study_trials=1,
    study_references=2,
    study_concurrent=1,
    study_cpus=1,
    study_gpus=0,
)

SIZES = {s.mode: s for s in (GPU, SMOKE)}


class Recorder:
    """A part's figures: ``rec[key] = value`` rewrites the part's JSON file atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.figures: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.figures[key] = value
        atomic_write(self.path, json.dumps(self.figures, indent=1, default=str))

    def __getitem__(self, key: str) -> Any:
        return self.figures[key]

    def update(self, figures: dict[str, Any]) -> None:
        self.figures.update(figures)
        atomic_write(self.path, json.dumps(self.figures, indent=1, default=str))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def synthetic_pool(n: int, *, device: torch.device, seed: int = 0, n_test: int = 1000) -> Pool:
    """Random CIFAR-shaped pool ``x: (n, 3, 32, 32)`` with random labels of 10 classes, and a test
    set of ``n_test``, on ``device``: the loop's costs without a download (accuracy is chance)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    total = n + n_test
    x = torch.randn(total, *CIFAR_SHAPE, generator=g).to(device)
    y = torch.randint(0, CIFAR_CLASSES, (total,), generator=g).to(device)
    return Pool(
        dataset="synthetic-cifar",
        seed=seed,
        x=x[:n],
        y=y[:n],
        x_test=x[n:],
        y_test=y[n:],
        x_val=torch.empty(0, *CIFAR_SHAPE, device=device),
        y_val=torch.empty(0, dtype=torch.long, device=device),
        num_classes=CIFAR_CLASSES,
        flip=True,
        pool_index=np.arange(n),
        test_index=np.arange(n, total),
        val_index=np.arange(0),
    )


def describe_device(dev: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    out: dict[str, Any] = {
        "device": dev.type,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        out.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return out
