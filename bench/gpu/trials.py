"""Part ``fractional``: trials per hour with 1 trial per GPU against 4 trials at 0.25 GPU, through
Ray Tune's fractional GPU resources the way ``search/run.py`` schedules trials.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpu.workload import BENCH, REPO, Recorder, Sizes, describe_device, device, synthetic_pool
from pptp.config import ModelConfig, TrainConfig
from pptp.models import build_model
from pptp.train import train


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
            reported = [r.metrics or {} for r in ended if r.error is None]
            metrics = [m for m in reported if "train_s" in m]
            errors = [f"{type(r.error).__name__}: {r.error}"[:300] for r in ended if r.error]
            if len(metrics) + len(errors) < n:  # Tune caught a SIGINT (the budget) and ended
                errors.append(f"{n - len(metrics) - len(errors)} trials did not finish")
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
            if errors:  # stopped or broken: the next configuration would measure nothing
                break
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
