"""Part ``peak``: the bf16 rate this machine reaches. Part ``throughput``: ``pptp.train.train`` on
synthetic CIFAR-shaped tensors held on the device, ResNet-18, in each precision and compilation
setting, against a bare step loop on the same model and batch.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gpu.workload import Recorder, Sizes, describe_device, device, synchronize, synthetic_pool
from pptp.config import ModelConfig, TrainConfig
from pptp.data import Pool
from pptp.device import autocast
from pptp.models import build_model
from pptp.train import train

logger = logging.getLogger("gpu_check")


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
