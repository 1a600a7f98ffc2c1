"""Training cost of each protection operator at strength 0.5, relative to plain training.

Every operator of :data:`pptp.operators.OPERATORS` trains the same small CNN (GroupNorm, so the
``noise`` operator's per-example gradients are defined; default width 32) on the same members
(keep row 0 of the digits pool) with the quickstart recipe (batch 64, lr 0.05, 2 warm-up epochs,
random crops), protecting the first two groups (``split 2 prefix``: block1, block2) or the last two
(``split 2 suffix``: block4, head). ``none`` is the plain loop and the reference for the ratios.

The figure is ``TrainResult.train_seconds``: all training epochs, evaluation excluded. For
``rewind`` it includes the ``finetune_epochs`` (default 2) epochs of fine-tuning the free groups
after the rewind, so ``rewind`` runs epochs + 2 epochs; the ``s/epoch`` column shows the cost per
epoch. Each repeat runs every configuration once, in rotated order, after an untimed one-epoch
warm-up of each operator; the table shows medians over repeats, the median of the per-repeat
ratios to ``none`` and, as a check on a shared noisy machine, the ratio of the fastest repeats.
Default sizes: 8x8 digits for 15 epochs (the quickstart) and 32x32 for 4 epochs (so the run stays
within minutes; rewind's 2 extra epochs then weigh 1.5x, against 17/15 at 15 epochs).

    .venv/bin/python bench/operator_cost.py                 # 8x8 and 32x32, ~3 min on 2 cores
    .venv/bin/python bench/operator_cost.py --quick         # seconds: 8x8, 1 epoch, 1 repeat
    .venv/bin/python bench/operator_cost.py --sizes 8:15    # image size:epochs, comma separated
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
from printing import footer, provenance, table

from pptp.config import DataConfig, ModelConfig, ProtectConfig, TrainConfig
from pptp.data import Pool
from pptp.operators import OPERATORS
from pptp.train import TrainResult, build_model, build_pool, train

# ------------------------------------------------------------------------------------- driver

SELECTIONS = (("prefix", 2), ("suffix", 2))


def train_once(
    pool: Pool, members: np.ndarray, cfg: TrainConfig, protect: ProtectConfig
) -> TrainResult:
    model = build_model(ModelConfig(name="small_cnn", norm="group"), pool, seed=cfg.seed)
    return train(model, pool, members, cfg, protect=protect, device=torch.device("cpu"))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--sizes", default="8:15,32:4", help="image_size:epochs,...")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    wall0, cpu0 = time.perf_counter(), os.times()
    if args.quick:
        args.sizes, args.repeats = "8:1", 1
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]

    print("# operator_cost: training seconds of each operator relative to none")
    for line in provenance(["bench/operator_cost.py", *argv]):
        print("#", line)
    operators = [name for name in OPERATORS if name != "none"]
    rows = []
    for size, epochs in sizes:
        data = DataConfig(name="digits", image_size=None if size == 8 else size)
        pool = build_pool(data, device="cpu")
        members = np.flatnonzero(pool.keep(1)[0])
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=64,
            lr=0.05,
            warmup_epochs=min(2, epochs - 1),
            crop_pad=1 if size <= 8 else 4,
            seed=0,
            device="cpu",
        )
        configs = [("none", "-", ProtectConfig(operator="none"))]
        for op in operators:
            for direction, split in SELECTIONS:
                protect = ProtectConfig(
                    operator=op, strength=args.strength, split=split, direction=direction
                )
                configs.append((op, f"split {split} {direction}", protect))
        print(
            f"# digits {size}x{size}: {len(members)} members, small_cnn norm=group, "
            f"{epochs} epochs (warm-up {cfg.warmup_epochs}), batch {cfg.batch_size}, "
            f"strength {args.strength}, {args.repeats} interleaved repeats",
            flush=True,
        )
        if not args.quick:  # untimed: oneDNN kernels and the vmap path are built on first use
            warm = dataclasses.replace(cfg, epochs=1, warmup_epochs=0)
            for _, _, protect in configs[:: len(SELECTIONS)]:
                train_once(pool, members, warm, protect)
        results: list[list[TrainResult]] = [[] for _ in configs]
        for rep in range(args.repeats):
            order = list(range(len(configs)))
            shift = rep * len(configs) // max(args.repeats, 1)
            for i in order[shift:] + order[:shift]:
                results[i].append(train_once(pool, members, cfg, configs[i][2]))
        base = results[0]
        for (op, selection, _), rs in zip(configs, results, strict=True):
            seconds = [r.train_seconds for r in rs]
            ratio = statistics.median(
                r.train_seconds / b.train_seconds for r, b in zip(rs, base, strict=True)
            )
            best_ratio = min(seconds) / min(b.train_seconds for b in base)
            rows.append(
                [
                    f"{size}x{size}",
                    op,
                    selection,
                    f"{statistics.median(seconds):.2f}",
                    f"{min(seconds):.2f}",
                    str(rs[0].epochs_run),
                    f"{statistics.median(r.train_seconds / r.epochs_run for r in rs):.3f}",
                    f"{ratio:.2f}x",
                    f"{best_ratio:.2f}x",
                    f"{statistics.median(r.test_acc for r in rs):.3f}",
                    ",".join(rs[0].protected_groups) or "-",
                ]
            )
    print()
    print(
        table(
            [
                "images",
                "operator",
                "selection",
                "train s",
                "best s",
                "epochs",
                "s/epoch",
                "/ none",
                "best / best",
                "test_acc",
                "protected",
            ],
            rows,
        )
    )
    print("# train s: median over repeats of TrainResult.train_seconds (evaluation excluded);")
    print("#   best s: fastest repeat; / none: median of the per-repeat ratios to none; best /")
    print("#   best: fastest over none's fastest; rewind's epochs include its 2 fine-tuning epochs")
    print("# " + footer(wall0, cpu0))


if __name__ == "__main__":
    main()
