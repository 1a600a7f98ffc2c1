"""Training throughput of pptp's loop against a plain ``DataLoader`` loop (images per second).

Both sides train the same model (same initial weights) on the same members of the same pool
(digits upscaled to 32x32, ``make_pool("digits", image_size=32)``, keep row 0: 700 images) with the
same recipe: SGD (momentum 0.9, Nesterov, weight decay 5e-4), the same per-step cosine learning
rate, batch 128, random crop after 4-pixel zero padding, no flips (digits), cross-entropy.

- ``pptp``: :func:`pptp.train.train`. Members stay in memory as one tensor on the device; each
  batch is an index slice, cropped for the whole batch at once (two ``gather`` calls) and laid out
  channels_last, as is the model. Throughput is ``TrainResult.images_per_second`` (evaluation
  excluded).
- ``plain wN``: the usual loop: a ``Dataset`` of CPU tensors whose ``__getitem__`` applies
  ``torchvision.transforms.v2.RandomCrop(32, padding=4)`` to one image, ``DataLoader(batch_size=128,
  shuffle=True, num_workers=N)`` (``persistent_workers=True`` for N > 0, which helps the baseline:
  workers start once, inside the first timed epoch), the model in the default NCHW layout.
  Throughput is images over the summed time of the epochs' training loops (no evaluation).

Runs are interleaved (each repeat runs every loop once, in rotated order) after one untimed
warm-up epoch per loop (oneDNN builds its kernels on first use); the table shows the median over
repeats and the ratio pptp / plain, the median of the per-repeat ratios, plus the fastest repeat
and the cores each run kept busy (CPU time / wall time; well below 2 means other processes took
the cores, and the figures of that run are not to be trusted). A second table splits an
epoch into its data part (batch assembly and augmentation alone) and its compute part (forward,
backward and step on one fixed batch, NCHW against channels_last), which is what explains the
ratio.

    .venv/bin/python bench/train_throughput.py            # ~2 minutes on 2 idle CPU cores
    .venv/bin/python bench/train_throughput.py --quick    # seconds: 1 epoch, 128 members, 1 repeat
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from printing import footer, parse_args, provenance
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from pptp.batches import augment, batches
from pptp.config import ModelConfig, TrainConfig
from pptp.data import Pool, make_pool
from pptp.device import channels_last
from pptp.models import build_model
from pptp.tables import format_table
from pptp.train import evaluate, train

# ------------------------------------------------------------------------------ the two loops


@dataclass(frozen=True)
class Run:
    images_per_second: float
    epoch_seconds: tuple[float, ...]
    test_acc: float
    cores: float = float("nan")  # CPU time / wall time of the whole run (evaluation included)


class CroppedImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The usual Dataset: CPU tensors ``x (n, C, H, W)``, ``y (n,)``, a per-sample transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[..., torch.Tensor]):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


def cosine_lr(cfg: TrainConfig, step: int, total: int) -> float:
    """pptp's cosine schedule, per step (``pptp.train``): lr * (1 + cos(pi * step / total)) / 2."""
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def plain_with_workers(
    pool: Pool, members: np.ndarray, workers: int, model_cfg: ModelConfig, cfg: TrainConfig
) -> Run:
    return run_plain(build_model(model_cfg, pool, seed=0), pool, members, cfg, workers=workers)


def with_cores(fn: Callable[[], Run]) -> Run:
    """Run ``fn`` and record the cores it kept busy: CPU time (workers included) / wall time."""
    keys = ("user", "system", "children_user", "children_system")
    before, start = os.times(), time.perf_counter()
    run = fn()
    after, wall = os.times(), time.perf_counter() - start
    cpu = sum(getattr(after, k) - getattr(before, k) for k in keys)
    return dataclasses.replace(run, cores=cpu / wall)


def run_pptp(model: nn.Module, pool: Pool, members: np.ndarray, cfg: TrainConfig) -> Run:
    result = train(model, pool, members, cfg, device=torch.device("cpu"))
    return Run(result.images_per_second, tuple(h.seconds for h in result.history), result.test_acc)


def run_plain(
    model: nn.Module, pool: Pool, members: np.ndarray, cfg: TrainConfig, *, workers: int
) -> Run:
    """The plain loop; only the epochs' ``for x, y in loader`` loops are timed."""
    idx = torch.as_tensor(members)
    data = CroppedImages(
        pool.x[idx].clone(), pool.y[idx].clone(), v2.RandomCrop(32, padding=cfg.crop_pad)
    )
    torch.manual_seed(cfg.seed)
    loader = DataLoader(
        data,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    total, step, seconds = cfg.epochs * len(loader), 0, []
    model.train()
    for _ in range(cfg.epochs):
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        start = time.perf_counter()
        for x, y in loader:
            for g in optimizer.param_groups:
                g["lr"] = cosine_lr(cfg, step, total)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            step += 1
        seconds.append(time.perf_counter() - start)
    del loader  # stops persistent workers
    test_acc = evaluate(model, pool.x_test, pool.y_test)
    return Run(cfg.epochs * len(members) / sum(seconds), tuple(seconds), test_acc)


# ----------------------------------------------------------------------- the parts of an epoch


def interleaved_medians(fns: dict[str, Callable[[], object]], *, repeats: int) -> dict[str, float]:
    """Median seconds of each function, calls alternating (A, B, A, B, ...) after one warm-up.

    Alternating spreads bursts of load from other processes over all functions alike.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def data_epoch_pptp(pool: Pool, members: np.ndarray, cfg: TrainConfig) -> Callable[[], None]:
    """pptp's batch assembly for one epoch: index slice, batch crop, channels_last."""
    x_members = pool.x[torch.as_tensor(members)]
    gen = torch.Generator().manual_seed(0)

    def epoch() -> None:
        for idx in batches(len(members), cfg.batch_size, generator=gen):
            channels_last(augment(x_members[idx], generator=gen, crop_pad=cfg.crop_pad, flip=False))

    return epoch


def data_epoch_plain(pool: Pool, members: np.ndarray, cfg: TrainConfig) -> Callable[[], None]:
    """The plain loop's batch assembly for one epoch: DataLoader(num_workers=0), per-sample crop."""
    idx = torch.as_tensor(members)
    data = CroppedImages(pool.x[idx], pool.y[idx], v2.RandomCrop(32, padding=cfg.crop_pad))
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True)

    def epoch() -> None:
        for _ in loader:
            pass

    return epoch


def compute_step(
    model_cfg: ModelConfig, pool: Pool, cfg: TrainConfig, *, layout: torch.memory_format
) -> Callable[[], None]:
    """Forward, backward and SGD step on one fixed batch of ``cfg.batch_size`` images."""
    model = build_model(model_cfg, pool, seed=0).to(memory_format=layout)
    x = pool.x[: cfg.batch_size].contiguous(memory_format=layout)
    y = pool.y[: cfg.batch_size]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=1e-3, momentum=cfg.momentum, nesterov=cfg.nesterov
    )

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


# ------------------------------------------------------------------------------------- driver


def parse_model(text: str) -> ModelConfig:
    """``small_cnn``, ``resnet18:16`` or ``small_cnn::group``: name[:width[:norm]]."""
    name, width, norm = [*text.split(":"), "", ""][:3]
    return ModelConfig(name=name, width=int(width) if width else None, norm=norm or "batch")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--models", default="small_cnn,resnet18:16", help="name[:width[:norm]],...")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", default="0,2", help="plain-loop num_workers values")
    parser.add_argument("--members", type=int, default=None, help="use only this many members")
    args = parse_args(parser, argv)
    wall0, cpu0 = time.perf_counter(), os.times()
    if args.quick:
        args.epochs, args.repeats, args.members = 1, 1, args.members or 128
    workers = [int(w) for w in args.workers.split(",") if w != ""]

    print("# train_throughput: pptp.train.train against a plain DataLoader loop")
    for line in provenance(["bench/train_throughput.py", *argv]):
        print("#", line)
    pool = make_pool("digits", seed=0, test_size=297, val_size=100, image_size=32)
    members = np.flatnonzero(pool.keep(1)[0])[: args.members]
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=128,
        lr=0.05,
        warmup_epochs=0,
        augment=True,
        crop_pad=4,
        seed=0,
        device="cpu",
    )
    print(
        f"# data: digits 32x32, {len(members)} members (keep row 0), batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs per run, {args.repeats} interleaved repeats; img/s excludes "
        "evaluation on both sides"
    )

    loops: dict[str, Callable[[ModelConfig, TrainConfig], Run]] = {
        "pptp": lambda m, c: run_pptp(build_model(m, pool, seed=0), pool, members, c)
    }
    for w in workers:
        loops[f"plain w{w}"] = functools.partial(plain_with_workers, pool, members, w)

    throughput_rows, part_rows = [], []
    for model_text in args.models.split(","):
        model_cfg = parse_model(model_text)
        if not args.quick:  # one untimed epoch per loop: oneDNN kernel creation
            for run in loops.values():
                run(model_cfg, dataclasses.replace(cfg, epochs=1))
        runs: dict[str, list[Run]] = {name: [] for name in loops}
        names = list(loops)
        for rep in range(args.repeats):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                runs[name].append(with_cores(functools.partial(loops[name], model_cfg, cfg)))
        pptp_runs = runs["pptp"]
        for name, rs in runs.items():
            ips = [r.images_per_second for r in rs]
            ratio = statistics.median(
                p.images_per_second / r.images_per_second
                for p, r in zip(pptp_runs, rs, strict=True)
            )
            best_ratio = max(r.images_per_second for r in pptp_runs) / max(ips)
            throughput_rows.append(
                [
                    model_text,
                    name,
                    f"{statistics.median(ips):.0f}",
                    f"{max(ips):.0f}",
                    f"{1e3 * statistics.median(s for r in rs for s in r.epoch_seconds):.0f}",
                    f"{statistics.median(r.cores for r in rs):.2f}",
                    f"{statistics.median(r.test_acc for r in rs):.3f}",
                    "-" if name == "pptp" else f"{ratio:.2f}x",
                    "-" if name == "pptp" else f"{best_ratio:.2f}x",
                ]
            )
        reps = 1 if args.quick else 15
        data = interleaved_medians(
            {
                "pptp": data_epoch_pptp(pool, members, cfg),
                "plain": data_epoch_plain(pool, members, cfg),
            },
            repeats=reps,
        )
        step = interleaved_medians(
            {
                "nchw": compute_step(model_cfg, pool, cfg, layout=torch.contiguous_format),
                "cl": compute_step(model_cfg, pool, cfg, layout=torch.channels_last),
            },
            repeats=reps,
        )
        data_pptp, data_plain, step_nchw, step_cl = (
            data["pptp"], data["plain"], step["nchw"], step["cl"]
        )  # fmt: skip
        steps = math.ceil(len(members) / cfg.batch_size)
        part_rows.append(
            [
                model_text,
                f"{1e3 * data_pptp:.1f}",
                f"{1e3 * data_plain:.1f}",
                f"{1e3 * step_cl:.1f}",
                f"{1e3 * step_nchw:.1f}",
                f"{step_nchw / step_cl:.2f}x",
                f"{1e3 * steps * step_cl:.0f}",
            ]
        )

    print()
    print(
        format_table(
            throughput_rows,
            [
                "model",
                "loop",
                "img/s",
                "best img/s",
                "epoch ms",
                "cores",
                "test_acc",
                "pptp / loop",
                "best / best",
            ],
        )
    )
    print(
        "# img/s: median over repeats of (epochs x members / summed epoch seconds); best: fastest"
    )
    print(
        "#   repeat; epoch ms: median epoch; cores: median CPU time / wall time of a run (2 = both"
    )
    print(
        "#   cores ours; lower = other processes competed); pptp / loop: median of the per-repeat"
    )
    print("#   ratios; best / best: pptp's fastest repeat over the loop's fastest (noise-robust);")
    print(f"#   test_acc after {cfg.epochs} epochs: a sanity check (own crops and order per loop)")
    print()
    print("# where an epoch's time goes (medians; data = batch assembly + crop, no model;")
    print(f"#   step = forward + backward + SGD step on one batch of {cfg.batch_size})")
    print(
        format_table(
            part_rows,
            [
                "model",
                "data/epoch pptp ms",
                "data/epoch plain w0 ms",
                "step channels_last ms",
                "step NCHW ms",
                "NCHW / cl",
                "steps/epoch x step cl ms",
            ],
        )
    )
    print("# target (issue): pptp's loop at least 1.5x the plain loop on 2 CPU cores")
    print("# " + footer(wall0, cpu0))


if __name__ == "__main__":
    main()
