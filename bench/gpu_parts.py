"""The measurements of ``bench/gpu_check.py``: one function per part, each run in its own process.

Every part writes its figures through a :class:`Recorder` as soon as it has them (an atomic JSON
file per part), so a part stopped at its time budget still hands back what it measured. The parts
use only the project's public entry points: ``pptp.train.train`` and ``build_model`` (the loop and
its model), the :class:`pptp.data.Pool` dataclass (synthetic CIFAR-shaped data), ``ray.tune`` the
way ``search/run.py`` schedules trials, and the ``search/run.py`` command line.

Sizes: :data:`GPU` is sized to fit the check's 8-minute budget on one H200; :data:`SMOKE` runs the
same code paths on 2 CPU cores in seconds (``--cpu-smoke``, for CI).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pptp.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from pptp.data import Pool, check_data  # noqa: E402
from pptp.device import autocast  # noqa: E402
from pptp.fileio import atomic_write  # noqa: E402
from pptp.train import build_model, train  # noqa: E402

logger = logging.getLogger("gpu_check")

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


# ---------------------------------------------------------------------------------------------
# Part 1a: the bf16 peak of this machine.


def peak(sizes: Sizes, rec: Recorder) -> None:
    """The dense matrix-product rate this machine reaches, measured (not assumed).

    ``torch.matmul`` of two ``n x n`` matrices (``2 n^3`` FLOP) in bf16 on CUDA (fp32 on the CPU,
    where bf16 is slower), on random normal data (zeros run faster, METHOD.md), two input sets in
    turn. CUDA events time each product after 3 warm-ups; the median of the repeats is the peak
    the throughput part divides by. A relative error against an fp32 product of 64 rows checks
    that the product is right (bf16 operands: about 1e-3 to 1e-2).
    """
    dev = device()
    rec["device"] = describe_device(dev)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n = sizes.peak_n
    g = torch.Generator(device=dev).manual_seed(0)
    sets = [
        (
            torch.randn(n, n, generator=g, device=dev, dtype=dtype),
            torch.randn(n, n, generator=g, device=dev, dtype=dtype),
        )
        for _ in range(2)
    ]
    for i in range(3):
        a, b = sets[i % 2]
        torch.matmul(a, b)
    synchronize(dev)
    seconds = [_timed(functools.partial(torch.matmul, a, b), dev) for a, b in _cycle(sets, sizes)]
    a, b = sets[0]
    out = torch.matmul(a, b)[:64].float()
    ref = a[:64].float() @ b.float()
    rel_error = float((out - ref).norm() / ref.norm())
    tflops = [2 * n**3 / s / 1e12 for s in seconds]
    rec["peak"] = {
        "dtype": str(dtype).removeprefix("torch."),
        "n": n,
        "repeats": len(seconds),
        "tflops_median": statistics.median(tflops),
        "tflops_max": max(tflops),
        "tflops_min": min(tflops),
        "rel_error_vs_fp32": rel_error,
    }


def _cycle(sets: list[tuple[torch.Tensor, torch.Tensor]], sizes: Sizes) -> Iterator[Any]:
    for i in range(sizes.peak_repeats):
        yield sets[i % len(sets)]


def _timed(fn: Callable[[], object], dev: torch.device) -> float:
    """Seconds of one call: CUDA events on the GPU, the host clock on the CPU."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Part 1b: the training loop's throughput.


def training_flop_per_image(model_cfg: ModelConfig, pool: Pool, dev: torch.device) -> float:
    """FLOP of one training step per image (forward + backward, as counted by
    ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, 2 per
    multiply-add; normalisation and element-wise work not counted), measured on a batch of 4."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_cfg, pool, seed=0).to(dev).train()
    x, y = pool.x[:4].to(dev), pool.y[:4].to(dev)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / len(y)


BARE_LOOP = "bare step loop, bf16 + channels_last"


def throughput_configs(
    sizes: Sizes, dev: torch.device
) -> list[tuple[str, TrainConfig | None, str]]:
    """(name, train config, why it is skipped or ""), in the order they run: the riskiest and
    slowest (``torch.compile``) last. A None config is the bare step loop (:func:`bare_loop`)."""
    base = TrainConfig(
        epochs=sizes.epochs,
        batch_size=sizes.batch_size,
        lr=0.05,
        warmup_epochs=0,
        device=dev.type,
        bf16=True,
        compile=False,
    )
    on_cpu = dev.type != "cuda"
    return [
        ("fp32", replace(base, bf16=False), ""),
        ("bf16 + channels_last", base, ""),
        (BARE_LOOP, None, ""),
        (
            "bf16 + channels_last + compile",
            replace(base, compile=True),
            "pptp applies train.compile on CUDA only (compiling for the CPU would take minutes "
            "of a CI run and measure nothing the GPU does)"
            if on_cpu
            else "",
        ),
    ]


def throughput(sizes: Sizes, rec: Recorder) -> None:
    """``pptp.train.train`` on synthetic CIFAR-shaped tensors held on the device, ResNet-18.

    Each configuration trains a fresh model for ``sizes.epochs`` epochs of ``sizes.images``
    images (no evaluation in the timed seconds: ``EpochLog.seconds``). The first epoch carries
    cuDNN's algorithm search and ``torch.compile``'s compilation; the steady rate is the median
    of the later epochs. The loop uses channels_last in every configuration (pptp.train); on the
    CPU, bf16 autocast is off (pptp.device.autocast), so its rows there are fp32. The bare step
    loop (:func:`bare_loop`) on the same model and batch is the ceiling the loop can approach.
    A configuration that fails is recorded as such and the next one runs; the part then fails.
    """
    dev = device()
    rec["device"] = describe_device(dev)
    pool = synthetic_pool(sizes.images, device=dev, n_test=sizes.test_images)
    members = np.arange(sizes.images)
    model_cfg = ModelConfig(name="resnet18", width=sizes.width, norm=sizes.norm)
    rec["setup"] = {
        "model": f"resnet18 width {sizes.width}, norm {sizes.norm}",
        "images_per_epoch": sizes.images,
        "epochs": sizes.epochs,
        "batch_size": sizes.batch_size,
    }
    rec["flop_per_image"] = training_flop_per_image(model_cfg, pool, dev)
    results: dict[str, Any] = {}
    for name, cfg, skipped in throughput_configs(sizes, dev):
        results[name] = (
            {"status": "skipped", "reason": skipped} if skipped else {"status": "running"}
        )
        rec["configs"] = results
        if skipped:
            continue
        _reset_memory(dev)
        t0 = time.perf_counter()
        try:
            if cfg is None:
                epochs = bare_loop(model_cfg, pool, sizes, dev)
            else:
                model = build_model(model_cfg, pool, seed=0)
                trained = train(model, pool, members, cfg, device=dev)
                epochs = [h.seconds for h in trained.history]
            synchronize(dev)
        except Exception as error:
            logger.exception("throughput: %s failed", name)
            results[name] = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
            rec["configs"] = results
            continue
        results[name] = _rates(sizes.images, epochs) | {
            "status": "ok",
            "wall_s": time.perf_counter() - t0,
            "max_memory_gib": _max_memory(dev),
            "bf16_active": dev.type == "cuda" and (cfg is None or cfg.bf16),
            "compiled": dev.type == "cuda" and cfg is not None and cfg.compile,
        }
        rec["configs"] = results
    failed = [n for n, r in results.items() if r["status"] == "failed"]
    if failed:
        raise RuntimeError(f"{', '.join(failed)}: {results[failed[0]]['reason']}")


def bare_loop(model_cfg: ModelConfig, pool: Pool, sizes: Sizes, dev: torch.device) -> list[float]:
    """Seconds per epoch of the least a step can do: forward, backward and SGD on pre-shuffled
    slices of ``pool.x`` (index drawn on the device, no augmentation), bf16 autocast on CUDA,
    channels_last, one synchronisation per epoch."""
    model = build_model(model_cfg, pool, seed=0).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    x = pool.x.contiguous(memory_format=torch.channels_last)
    g = torch.Generator(device=dev).manual_seed(0)
    seconds = []
    for _ in range(sizes.epochs):
        synchronize(dev)
        t0 = time.perf_counter()
        order = torch.randperm(len(x), generator=g, device=dev)
        for start in range(0, len(x), sizes.batch_size):
            idx = order[start : start + sizes.batch_size]
            opt.zero_grad(set_to_none=True)
            with autocast(dev):
                loss = F.cross_entropy(model(x[idx]).float(), pool.y[idx])
            loss.backward()
            opt.step()
        synchronize(dev)
        seconds.append(time.perf_counter() - t0)
    return seconds


def _rates(images: int, epochs: list[float]) -> dict[str, Any]:
    steady = epochs[1:] or epochs
    return {
        "epoch_seconds": epochs,
        "first_epoch_img_s": images / epochs[0],
        "steady_img_s": images / statistics.median(steady),
    }


def _reset_memory(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _max_memory(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None


# ---------------------------------------------------------------------------------------------
# Part 2: trials per hour, 1 trial per GPU against 4 trials at 0.25 GPU, through Ray Tune.


def fractional_configs(sizes: Sizes) -> list[tuple[str, float, int, int]]:
    """(name, GPU per trial, trials, trials at once)."""
    return [
        ("single: 1 trial per GPU", 1.0, sizes.single_trials, 1),
        (
            f"shared: {sizes.shared_concurrent} trials at {sizes.shared_gpu:g} GPU",
            sizes.shared_gpu,
            sizes.shared_trials,
            sizes.shared_concurrent,
        ),
    ]


def fractional_trial(config: dict[str, Any], sizes: Sizes) -> None:
    """One Tune trial: ResNet-18 trained by ``pptp.train.train`` on synthetic CIFAR-shaped data
    (the train stage, 86% of a warm-bank trial's time in bench/attack_stage.py), reported once."""
    from ray import tune

    began = time.time()
    torch.set_num_threads(max(1, math.floor(sizes.cpus_per_trial)))
    dev = device()
    pool = synthetic_pool(
        sizes.trial_images, device=dev, seed=int(config["seed"]), n_test=sizes.test_images
    )
    model_cfg = ModelConfig(name="resnet18", width=sizes.width, norm=sizes.norm)
    model = build_model(model_cfg, pool, seed=int(config["seed"]))
    cfg = TrainConfig(
        epochs=sizes.trial_epochs, batch_size=sizes.batch_size, warmup_epochs=0, device=dev.type
    )
    trained = time.time()
    result = train(model, pool, np.arange(sizes.trial_images), cfg, device=dev)
    tune.report(
        {
            "setup_s": trained - began,
            "train_s": result.train_seconds,
            "trial_s": time.time() - began,
            "img_s": result.images_per_second,
            "device": dev.type,
            "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        }
    )


def fractional(sizes: Sizes, rec: Recorder) -> None:
    """Trials per hour with each configuration of :func:`fractional_configs`, scheduled the way
    ``search/run.py`` schedules trials: ``tune.with_resources(..., {"cpu": c, "gpu": g})`` with a
    concurrency cap and ``reuse_actors=True``. Without CUDA (``--cpu-smoke``) Ray is given one
    logical GPU, so the fractional scheduling is the same and the trials train on the CPU."""
    import ray
    from ray import tune

    dev = device()
    rec["device"] = describe_device(dev)
    rec["setup"] = {
        "trial": f"resnet18 width {sizes.width}, {sizes.trial_images} synthetic images x "
        f"{sizes.trial_epochs} epochs, batch {sizes.batch_size}",
        "cpus_per_trial": sizes.cpus_per_trial,
    }
    _export_import_path()
    results: dict[str, Any] = {}
    storage = Path(tempfile.mkdtemp(prefix="gpu-check-tune-"))
    t0 = time.perf_counter()
    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=torch.cuda.device_count() if dev.type == "cuda" else 1,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
        object_store_memory=256 * 1024 * 1024,
    )
    rec["ray_start_s"] = time.perf_counter() - t0
    try:
        for name, gpu, n, at_once in fractional_configs(sizes):
            results[name] = {"status": "running", "gpu_per_trial": gpu, "trials": n}
            rec["configs"] = results
            tuner = tune.Tuner(
                tune.with_resources(
                    tune.with_parameters(fractional_trial, sizes=sizes),
                    {"cpu": sizes.cpus_per_trial, "gpu": gpu},
                ),
                param_space={"seed": tune.grid_search(list(range(n)))},
                tune_config=tune.TuneConfig(max_concurrent_trials=at_once, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=re.sub(r"\W+", "-", name),
                    storage_path=str(storage),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
            t0 = time.perf_counter()
            grid = tuner.fit()
            wall = time.perf_counter() - t0
            ended = [grid[i] for i in range(len(grid))]
            metrics = [r.metrics for r in ended if r.error is None and r.metrics]
            errors = [f"{type(r.error).__name__}: {r.error}"[:300] for r in ended if r.error]
            devices = sorted({str(m["device"]) for m in metrics})
            if dev.type == "cuda" and devices != ["cuda"]:
                errors.append(f"trials ran on {devices}, not on the GPU Ray gave them")
            results[name] = {
                "status": "ok" if not errors else "failed",
                "gpu_per_trial": gpu,
                "max_concurrent": at_once,
                "trials": n,
                "trials_ok": len(metrics),
                "wall_s": wall,
                "trials_per_hour": len(metrics) / wall * 3600,
                "median_setup_s": _median(m["setup_s"] for m in metrics),
                "median_train_s": _median(m["train_s"] for m in metrics),
                "median_trial_s": _median(m["trial_s"] for m in metrics),
                "median_img_s": _median(m["img_s"] for m in metrics),
                # what a long study converges to: the GPU's training rate over concurrent trials
                "aggregate_img_s": (_median(m["img_s"] for m in metrics) or 0.0) * at_once,
                "trial_devices": devices,
                "errors": errors,
            }
            rec["configs"] = results
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    failed = [n for n, r in results.items() if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"trials failed in {', '.join(failed)}: {results[failed[0]]['errors']}")


def _median(values: Any) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _export_import_path() -> None:
    """Ray's worker processes inherit the environment, not ``sys.path``: they need the repository
    (pptp, search) and bench/ (this module, for the trial function) on ``PYTHONPATH``."""
    paths = [str(REPO), str(BENCH)]
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))


# ---------------------------------------------------------------------------------------------
# Part 3: a short ResNet-18 study end to end through search/run.py.


def study_data(sizes: Sizes, data_dir: str | None) -> dict[str, Any]:
    """The ``fixed.data`` section: CIFAR-10 (a 10,000-image pool) when it is on disk under
    ``data_dir``, else scikit-learn's bundled digits resized to ``study_image_size`` (nothing is
    ever downloaded)."""
    if data_dir is not None and sizes.mode == "gpu":
        cifar = DataConfig(
            name="cifar10", data_dir=data_dir, test_size=2000, val_size=500, pool_size=10000
        )
        try:
            check_data(cifar)
            keys = ("name", "data_dir", "test_size", "val_size", "pool_size")
            return {k: getattr(cifar, k) for k in keys}
        except Exception as error:  # not on disk: the bundled data instead, said in the log
            logger.info("CIFAR-10 not used (%s); digits instead", str(error).splitlines()[0])
    return {"name": "digits", "image_size": sizes.study_image_size}


def study_space(sizes: Sizes, data: dict[str, Any], *, bank_dir: Path) -> dict[str, Any]:
    """A space file (as a mapping) for a short ResNet-18 study: the undefended baseline and a
    ``noise`` trial enqueued, the rest sampled; references trained into ``bank_dir``."""
    crop_pad = 4 if data["name"] == "cifar10" else max(1, sizes.study_image_size // 16)
    return {
        "study": {
            "name": f"gpu-check-{sizes.mode}",
            "objectives": {"test_acc": "maximize", "attack_auc": "minimize"},
            "sampler": "random",
            "seed": 0,
            "n_trials": sizes.study_trials,
            "max_concurrent": sizes.study_concurrent,
            "resources": {"cpus": sizes.study_cpus, "gpus": sizes.study_gpus},
            "enqueue": [
                {
                    "protect.operator": "damp",
                    "protect.strength": 0.0,
                    "protect.split": 1,
                    "protect.direction": "prefix",
                },
                {
                    "protect.operator": "noise",
                    "protect.strength": 0.5,
                    "protect.split": 2,
                    "protect.direction": "suffix",
                },
            ][: sizes.study_trials],
        },
        "fixed": {
            "data": data,
            "model": {"name": "resnet18", "width": sizes.study_width, "norm": "group"},
            "train": {
                "epochs": sizes.study_epochs,
                "batch_size": sizes.study_batch_size,
                "lr": 0.05,
                "crop_pad": crop_pad,
                "device": "auto",
            },
            "attack": {"n_references": sizes.study_references, "bank_dir": str(bank_dir)},
        },
        "params": {
            "protect.operator": {
                "type": "categorical",
                "choices": ["noise", "damp", "anchor", "rewind", "feature_noise"],
            },
            "protect.strength": {"type": "float", "low": 0.0, "high": 1.0},
            "protect.split": {"type": "int", "low": 1, "high": 5},
            "protect.direction": {"type": "categorical", "choices": ["prefix", "suffix"]},
        },
    }


_FIRST_TRIAL = re.compile(r"trial \d+ started")


def study(sizes: Sizes, rec: Recorder, *, data_dir: str | None = None) -> None:
    """``python search/run.py --space <generated>`` with its own run directory, MLflow store
    (SQLite) and reference bank in a temporary folder; passes when it exits 0 with a non-empty
    Pareto front (read back from the run's Optuna storage and ``pareto_front.csv``)."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix="gpu-check-study-"))
    try:
        space = study_space(sizes, study_data(sizes, data_dir), bank_dir=work / "bank")
        path = work / "space.yaml"
        path.write_text(yaml.safe_dump(space, sort_keys=False))
        rec["space"] = space
        run_dir = work / "run"
        cmd = [
            sys.executable,
            str(REPO / "search" / "run.py"),
            "--space",
            str(path),
            "--output",
            str(run_dir),
            "--tracking-uri",
            f"sqlite:///{work / 'mlflow.db'}",
        ]
        rec["command"] = " ".join(cmd)
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", RAY_AUTH_MODE="disabled")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        t0 = time.perf_counter()
        first_trial = None
        with subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                elapsed = time.perf_counter() - t0
                print(f"[{elapsed:6.1f}s] {line}", end="", flush=True)
                if first_trial is None and _FIRST_TRIAL.search(line):
                    first_trial = elapsed
                    rec["first_trial_started_s"] = first_trial
        rec["exit_code"] = proc.returncode
        rec["wall_s"] = time.perf_counter() - t0
        rec.update(read_study(run_dir, space["study"]["name"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"search/run.py exited with status {proc.returncode}")
    if not rec["pareto_size"]:
        raise RuntimeError("the study ended with an empty Pareto front")


def read_study(run_dir: Path, name: str) -> dict[str, Any]:
    """Trial states and the Pareto front of a finished run directory (Optuna's public API)."""
    import csv

    import optuna

    out: dict[str, Any] = {"pareto_size": 0, "states": {}, "front": []}
    db = run_dir / "study.db"
    if not db.exists():
        return out
    found = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    states: dict[str, int] = {}
    for t in found.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    out["states"] = states
    out["pareto_size"] = len(found.best_trials) if states.get("COMPLETE") else 0
    front_csv = run_dir / "pareto_front.csv"
    if front_csv.exists():
        with front_csv.open() as f:
            out["front"] = list(csv.DictReader(f))
    return out


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
