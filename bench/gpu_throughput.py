"""GPU training throughput of pptp's loop: CIFAR-shaped data, ResNet-18, bf16 + channels_last.

Needs a CUDA device (it says so and exits 2 otherwise). Data are random CIFAR-shaped tensors
(3x32x32, 10 classes) held on the GPU, so nothing downloads; the loop, augmentation and model are
the real ones (``pptp.train.train``). Each configuration trains ``--epochs`` epochs; the first epoch
(cuDNN autotuning, ``torch.compile``) is reported apart from the steady state.

Fraction of peak: a CIFAR ResNet-18 costs about 0.56 GFLOP (multiply-adds) = 1.1 GFLOP per image
forward, about 3x that to train, so ``images/s x 3.3e9 / peak``; ``--peak-tflops`` defaults to the
H200's dense bf16 figure this workplace measured (about 790 TFLOP/s).

    .venv/bin/python bench/gpu_throughput.py --images 50000 --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pptp.config import ModelConfig, TrainConfig
from pptp.data import Pool
from pptp.train import build_model, train

TRAIN_FLOP_PER_IMAGE = 3 * 1.1e9


def synthetic_pool(n: int, *, device: torch.device, seed: int = 0) -> Pool:
    """Random CIFAR-shaped pool and test set on ``device`` (the loop cannot tell the difference)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n + 1000, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (n + 1000,), generator=g).to(device)
    empty = torch.empty(0, 3, 32, 32, device=device)
    return Pool(
        dataset="synthetic-cifar",
        seed=seed,
        x=x[:n],
        y=y[:n],
        x_test=x[n:],
        y_test=y[n:],
        x_val=empty,
        y_val=torch.empty(0, dtype=torch.long, device=device),
        num_classes=10,
        flip=True,
        pool_index=np.arange(n),
        test_index=np.arange(n, n + 1000),
        val_index=np.arange(0),
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50_000, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--peak-tflops", type=float, default=790.0)
    p.add_argument("--quick", action="store_true", help="5,000 images, 2 epochs")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device; this benchmark measures the GPU path", file=sys.stderr)
        return 2
    n, epochs = (5_000, 2) if args.quick else (args.images, args.epochs)
    device = torch.device("cuda")
    pool = synthetic_pool(n, device=device)
    members = np.arange(n)
    print(
        f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, ResNet-18 width "
        f"{args.width}, {n} images x {epochs} epochs, batch {args.batch_size}"
    )
    print(f"{'config':<28} {'first epoch img/s':>18} {'steady img/s':>13} {'% of peak':>10}")
    base = TrainConfig(
        epochs=epochs, batch_size=args.batch_size, lr=0.1, warmup_epochs=0, device="cuda"
    )
    configs = {
        "fp32": dataclasses.replace(base, bf16=False),
        "bf16 + channels_last": base,
        "bf16 + channels_last + compile": dataclasses.replace(base, compile=True),
    }
    for name, cfg in configs.items():
        model = build_model(ModelConfig(name="resnet18", width=args.width), pool, seed=0)
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = train(model, pool, members, cfg, device=device)
        torch.cuda.synchronize()
        first = result.history[0]
        steady = [h.seconds for h in result.history[1:]] or [first.seconds]
        steady_ips = n / float(np.median(steady))
        peak = steady_ips * TRAIN_FLOP_PER_IMAGE / (args.peak_tflops * 1e12)
        print(
            f"{name:<28} {n / first.seconds:>18,.0f} {steady_ips:>13,.0f} {100 * peak:>9.1f}%"
            f"   ({time.perf_counter() - start:.0f}s total)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
