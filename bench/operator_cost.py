"""Training cost of each protection operator at strength 0.5, relative to plain training; and the
peak memory of the ``noise`` operator on a ResNet-18 at batch 256.

**Time** (default). Every operator of :data:`pptp.operators.OPERATORS` trains the same small CNN
(GroupNorm, so the ``noise`` operator's per-example gradients are defined; default width 32) on the
same members (keep row 0 of the digits pool) with the quickstart recipe (batch 64, lr 0.05, 2
warm-up epochs, random crops), protecting the first two groups (``split 2 prefix``: block1, block2)
or the last two (``split 2 suffix``: block4, head). ``none`` is the plain loop and the reference for
the ratios. The figure is ``TrainResult.train_seconds``: all training epochs, evaluation excluded;
for ``rewind`` it includes its ``finetune_epochs`` (default 2) epochs of fine-tuning, so the
``s/epoch`` column shows the cost per epoch. Each repeat runs in a fresh process per code tree and
image size: an untimed one-epoch warm-up of each operator, then every configuration once, in an
order rotated from repeat to repeat. The table shows medians over repeats, the median of the
per-repeat ratios to ``none`` and, as checks on a shared noisy machine, the ratio of the fastest
repeats and the median ratio of the process CPU time spent in ``train()``. Default sizes: 8x8
digits for 15 epochs (the quickstart) and 32x32 for 4 epochs.

``--trees A,B`` runs the same measurement with each tree's own ``pptp`` (``PYTHONPATH=<tree>``),
repeats interleaved across trees, and prints them side by side: a before/after in one run.

**Memory** (``--memory``). ResNet-18 (width 64, GroupNorm) on digits upscaled to 32x32, batch 256,
one epoch of 512 members (2 steps), ``none`` against ``noise`` at strength 0.5 with ``split 2
suffix`` (layer4 + head, 8.4M parameters). Each runs in a fresh process; the figure is the
process's peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``: the high-water mark of
the pages the process really touched, which on the CPU is where torch's tensors live), and the
peak minus the resident size just before training (the training's own growth).

    .venv/bin/python bench/operator_cost.py                        # 8x8 and 32x32, ~4 min
    .venv/bin/python bench/operator_cost.py --trees /work/baseline,.   # before | after
    .venv/bin/python bench/operator_cost.py --memory               # ~2 min on 2 cores
    .venv/bin/python bench/operator_cost.py --quick                # seconds: 8x8, 1 epoch
    .venv/bin/python bench/operator_cost.py --sizes 8:15           # image size:epochs, ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from printing import footer, provenance

from pptp.tables import format_table

SELECTIONS = (("prefix", 2), ("suffix", 2))
OPERATORS = ("none", "noise", "damp", "anchor", "rewind", "feature_noise")


def configs() -> list[tuple[str, str, str | None]]:
    """``(operator, selection label, direction)``; ``none`` once, as the reference."""
    out: list[tuple[str, str, str | None]] = [("none", "-", None)]
    for op in OPERATORS[1:]:
        out += [(op, f"split {k} {d}", d) for d, k in SELECTIONS]
    return out


# ------------------------------------------------------------------------------------- workers
# Run in a subprocess whose PYTHONPATH names the tree to measure; they print one JSON line.


def _builders() -> tuple[Any, Any]:
    """``build_pool`` and ``build_model`` of the tree on the path: ``pptp.data`` and
    ``pptp.models`` now, ``pptp.train`` in trees from before they moved (``--trees`` compares
    with older code)."""
    try:
        from pptp.data import build_pool
        from pptp.models import build_model
    except ImportError:
        from pptp.train import build_model, build_pool  # type: ignore[attr-defined,no-redef]
    return build_pool, build_model


def time_worker(job: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    import numpy as np
    import torch

    from pptp.config import DataConfig, ModelConfig, ProtectConfig, TrainConfig
    from pptp.train import train

    build_pool, build_model = _builders()

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    size, epochs = job["size"], job["epochs"]
    pool = build_pool(DataConfig(name="digits", image_size=None if size == 8 else size))
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

    def protect(op: str, direction: str | None) -> ProtectConfig:
        if direction is None:
            return ProtectConfig(operator=op)
        return ProtectConfig(operator=op, strength=job["strength"], split=2, direction=direction)

    def once(cfg: TrainConfig, p: ProtectConfig) -> Any:
        model = build_model(ModelConfig(name="small_cnn", norm="group"), pool, seed=cfg.seed)
        return train(model, pool, members, cfg, protect=p, device=torch.device("cpu"))

    table_ = configs()
    if job["warm"]:  # untimed: oneDNN kernels and per-operator paths are built on first use
        warm = dataclasses.replace(cfg, epochs=1, warmup_epochs=0)
        for op, _, direction in table_[:: len(SELECTIONS)]:
            once(warm, protect(op, direction))
    out: dict[str, Any] = {}
    for i in job["order"]:
        op, label, direction = table_[i]
        cpu = time.process_time()
        r = once(cfg, protect(op, direction))
        cpu = time.process_time() - cpu
        out[f"{op}|{label}"] = [r.train_seconds, r.epochs_run, r.test_acc, cpu]
    out["_members"] = len(members)
    return out


def memory_worker(job: dict[str, Any]) -> dict[str, Any]:
    import resource

    import numpy as np
    import torch

    from pptp.config import DataConfig, ModelConfig, ProtectConfig, TrainConfig
    from pptp.train import train

    build_pool, build_model = _builders()

    pool = build_pool(DataConfig(name="digits", image_size=32))
    members = np.flatnonzero(pool.keep(1)[0])[: job["members"]]
    model = build_model(ModelConfig(name="resnet18", norm="group"), pool, seed=0)
    cfg = TrainConfig(
        epochs=1, batch_size=job["batch"], warmup_epochs=0, augment=False, device="cpu"
    )
    if job["operator"] == "none":
        protect = ProtectConfig()
    else:
        protect = ProtectConfig(operator="noise", strength=0.5, split=2, direction="suffix")
    start_kib = _rss_kib()
    t0 = time.perf_counter()
    r = train(model, pool, members, cfg, protect=protect, device=torch.device("cpu"))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "start_mib": start_kib / 1024,
        "peak_mib": peak_kib / 1024,
        "train_s": r.train_seconds,
        "wall_s": time.perf_counter() - t0,
        "protected": ",".join(r.protected_groups) or "-",
    }


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def run_worker(tree: str, kind: str, job: dict[str, Any]) -> dict[str, Any]:
    """One worker process with ``tree``'s pptp first on the path."""
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    cmd = [sys.executable, __file__, f"--{kind}-worker", json.dumps(job)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed in {tree}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------------------- main


def time_table(args: argparse.Namespace, trees: list[str]) -> None:
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    table_ = configs()
    rows = []
    for size, epochs in sizes:
        print(
            f"# digits {size}x{size}, small_cnn norm=group, {epochs} epochs (warm-up "
            f"{min(2, epochs - 1)}), batch 64, strength {args.strength}, {args.repeats} "
            f"interleaved repeats; trees: {', '.join(trees)}",
            flush=True,
        )
        # seconds[tree][config] = list over repeats of (seconds, epochs, test_acc)
        seconds: dict[str, dict[str, list[list[float]]]] = {t: {} for t in trees}
        for rep in range(args.repeats):
            shift = rep * len(table_) // max(args.repeats, 1)
            order = list(range(len(table_)))
            order = order[shift:] + order[:shift]
            for tree in trees if rep % 2 == 0 else trees[::-1]:
                job = {
                    "size": size,
                    "epochs": epochs,
                    "order": order,
                    "strength": args.strength,
                    "threads": args.threads,
                    "warm": not args.quick,
                }
                for key, value in run_worker(tree, "time", job).items():
                    if not key.startswith("_"):
                        seconds[tree].setdefault(key, []).append(value)
        for op, label, _ in table_:
            key = f"{op}|{label}"
            row: list[object] = [f"{size}x{size}, {epochs}", op, label]
            for tree in trees:
                runs, base = seconds[tree][key], seconds[tree]["none|-"]
                ratio = statistics.median(r[0] / b[0] for r, b in zip(runs, base, strict=True))
                best = min(r[0] for r in runs) / min(b[0] for b in base)
                cpu = statistics.median(r[3] / b[3] for r, b in zip(runs, base, strict=True))
                row += [
                    f"{statistics.median(r[0] for r in runs):.2f}",
                    f"{statistics.median(r[0] / r[1] for r in runs):.3f}",
                    f"{ratio:.2f}x",
                    f"{best:.2f}x",
                    f"{cpu:.2f}x",
                    f"{statistics.median(r[2] for r in runs):.3f}",
                ]
            rows.append(row)
    headers = ["images, epochs", "operator", "selection"]
    for tree in trees:
        tag = f" [{tree}]" if len(trees) > 1 else ""
        headers += [f"train s{tag}", "s/epoch", "/ none", "best/best", "CPU / none", "test_acc"]
    print()
    print(format_table(rows, headers))
    print("# train s: median over repeats of TrainResult.train_seconds (evaluation excluded);")
    print("#   / none: median of the per-repeat ratios to none; best/best: fastest over none's")
    print("#   fastest; CPU / none: the same for the process CPU time of train() (evaluation")
    print("#   included; steadier than wall time when other processes share the cores);")
    print("#   rewind's epochs include its 2 fine-tuning epochs (s/epoch per epoch)")


def memory_table(args: argparse.Namespace, trees: list[str]) -> None:
    rows = []
    for tree in trees:
        for batch in args.batches:
            results = {}
            for op in ("none", "noise"):
                job = {"operator": op, "batch": batch, "members": 2 * batch}
                results[op] = run_worker(tree, "memory", job)
                print(f"# {tree} batch {batch} {op}: {results[op]}", flush=True)
            base = results["none"]
            base_growth = base["peak_mib"] - base["start_mib"]
            for op, r in results.items():
                rows.append(
                    [
                        tree,
                        batch,
                        op,
                        r["protected"],
                        f"{r['start_mib']:.0f}",
                        f"{r['peak_mib']:.0f}",
                        f"{r['peak_mib'] - r['start_mib']:.0f}",
                        f"{r['peak_mib'] / base['peak_mib']:.2f}x",
                        f"{(r['peak_mib'] - r['start_mib']) / base_growth:.2f}x",
                        f"{r['train_s']:.1f}",
                    ]
                )
    print()
    print(
        format_table(
            rows,
            [
                "tree",
                "batch",
                "operator",
                "protected",
                "RSS before MiB",
                "peak RSS MiB",
                "growth MiB",
                "peak / none",
                "growth / none",
                "train s (2 steps)",
            ],
        )
    )
    print(
        "# ResNet-18 w64 GroupNorm, digits 32x32, one epoch of 2 steps; peak RSS = ru_maxrss of a"
    )
    print("#   fresh process per row; growth = peak - RSS just before train()")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--time-worker", "--memory-worker"):
        worker = time_worker if argv[0] == "--time-worker" else memory_worker
        print(json.dumps(worker(json.loads(argv[1]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--memory", action="store_true", help="ResNet-18 peak memory instead")
    parser.add_argument("--sizes", default="8:15,32:4", help="image_size:epochs,...")
    parser.add_argument("--batches", default="256", help="--memory: batch sizes, comma separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--trees", default=".", help="code trees to compare, comma separated")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    wall0, cpu0 = time.perf_counter(), os.times()
    if args.quick:
        args.sizes, args.repeats, args.batches = "8:1", 1, [16]
    trees = args.trees.split(",")
    kind = "peak memory of noise against none" if args.memory else "training seconds"
    print(f"# operator_cost: {kind}")
    for line in provenance(["bench/operator_cost.py", *argv]):
        print("#", line)
    if args.memory:
        memory_table(args, trees)
    else:
        time_table(args, trees)
    print("# " + footer(wall0, cpu0))


if __name__ == "__main__":
    main()
