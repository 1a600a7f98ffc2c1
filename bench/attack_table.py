"""Membership attacks on undefended models: AUC and TPR at low FPR against K references.

Target and references follow the quickstart recipe (``spaces/quickstart.yaml``: small CNN with
GroupNorm on 8x8 digits, batch 64, lr 0.05, 1-pixel random crops) with more epochs (default 40,
against the quickstart's 15) so the models overfit enough for the attacks to separate. For each
seed ``s`` the pool is shuffled with ``data.seed = s`` (so the pool, the target's members and every
reference's members change) and the target trains with ``train.seed = s``; one bank of 8 reference
models per seed is trained (or reused from ``--bank-dir``), and K = 2, 4, 8 uses its first K
models, as ``pptp.trial.attack_target`` does with ``attack.n_references = K``.

Attacks: ``loss`` (Yeom et al. 2018; needs no references), ``lira_offline``, ``lira_online`` and
``lira_fixed_variance`` (online with one global variance per side, the paper's advice for few
references; Carlini et al. 2022), ``rmia_offline`` and ``rmia_online`` (Zarifzadeh et al. 2024),
all scored on the whole pool (members = the target's keep row). Targets and references are queried
as ``pptp.trial`` does (``pptp.signals.resolve_queries``: the queries follow training). The digits
pool holds 1,400 examples, 700 of them non-members, so the smallest non-zero FPR is 1/700 = 0.14%:
"TPR at 0.1% FPR" cannot be resolved and prints as "-" (``pptp.metrics`` reports it as NaN), and
"TPR at 1% FPR" allows 7 false positives.

    .venv/bin/python bench/attack_table.py                  # ~1 minute on 2 idle CPU cores
    .venv/bin/python bench/attack_table.py --quick          # seconds: 2 epochs, 1 seed, K 2,4
    .venv/bin/python bench/attack_table.py --bank-dir /tmp/bank   # keep the references
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from printing import footer, log_warnings, parse_args, provenance

from pptp.bank import ReferenceBank
from pptp.config import TrialConfig
from pptp.data import build_pool
from pptp.metrics import AttackMetrics
from pptp.models import build_model
from pptp.signals import compute_signals, resolve_queries
from pptp.tables import format_table
from pptp.train import train
from pptp.trial import attack_target
from search.space import load_space

# ------------------------------------------------------------------------------------- driver

ATTACK_NAMES = (
    "loss",
    "lira_offline",
    "lira_online",
    "lira_fixed_variance",
    "rmia_offline",
    "rmia_online",
)


def attack_one_seed(
    base: TrialConfig, seed: int, ks: Sequence[int], bank: ReferenceBank
) -> tuple[dict[int, dict[str, AttackMetrics]], dict[str, float]]:
    """Train (or load) the references and the target of ``seed``; attack with the first K refs."""
    cfg = base.replace(**{"data.seed": seed, "train.seed": seed})
    start = time.perf_counter()
    trained_refs = bank.ensure(cfg, max(ks))
    ref_seconds = time.perf_counter() - start
    pool = build_pool(cfg.data, device="cpu")
    members = np.flatnonzero(pool.keep(1)[0])
    model = build_model(cfg.model, pool, seed=seed)
    result = train(model, pool, members, cfg.train, device=torch.device("cpu"))
    signals = compute_signals(model, pool.x, pool.y, queries=resolve_queries(cfg))
    by_k: dict[int, dict[str, AttackMetrics]] = {}
    start = time.perf_counter()
    for k in ks:
        by_k[k] = attack_target(cfg.replace(**{"attack.n_references": k}), pool, signals, bank=bank)
    info = {
        "seed": seed,
        "train_acc": result.train_acc,
        "test_acc": result.test_acc,
        "train_s": result.train_seconds,
        "refs_trained": len(trained_refs),
        "refs_s": ref_seconds,
        "attack_s": time.perf_counter() - start,
        "ref_test_acc": float(np.mean(bank.load(cfg, max(ks)).test_acc)),
        "n_nonmembers": int((~pool.keep(1)[0]).sum()),
    }
    return by_k, info


def mean_sd(values: Sequence[float], scale: float = 1.0) -> str:
    if any(math.isnan(v) for v in values):
        return "-"  # not resolved by the pool (pptp.metrics)
    m = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{m:.3f}" if scale == 1 else f"{m:.1f}"
    sd = statistics.stdev(values) * scale
    return f"{m:.3f} ± {sd:.3f}" if scale == 1 else f"{m:.1f} ± {sd:.1f}"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--space", default="spaces/quickstart.yaml", help="recipe source")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ks", default="2,4,8", help="numbers of references")
    parser.add_argument("--bank-dir", default=None, help="default: a temporary folder")
    args = parse_args(parser, argv)
    wall0, cpu0 = time.perf_counter(), os.times()
    if args.quick:
        args.epochs, args.seeds, args.ks = 2, "0", "2,4"
    log_warnings()
    seeds = [int(s) for s in args.seeds.split(",")]
    ks = sorted(int(k) for k in args.ks.split(","))

    print("# attack_table: AUC and TPR at low FPR of undefended targets, K references")
    for line in provenance(["bench/attack_table.py", *argv]):
        print("#", line)
    base = (
        load_space(args.space)
        .base_config()
        .replace(
            **{
                "train.epochs": args.epochs,
                "train.device": "cpu",
                "attack.attacks": list(ATTACK_NAMES),
                "attack.n_references": max(ks),
            }
        )
    )
    t = base.train
    print(
        f"# recipe: {base.data.name} (pool seed = target seed), {base.model.name} width "
        f"{base.model.width} norm {base.model.norm}; {t.epochs} epochs, batch {t.batch_size}, "
        f"lr {t.lr}, crop_pad {t.crop_pad}, weight decay {t.weight_decay}; queries "
        f"{','.join(resolve_queries(base))}; seeds {seeds}; K {ks} (first K of one bank of "
        f"{max(ks)})",
        flush=True,
    )

    results: list[dict[int, dict[str, AttackMetrics]]] = []
    infos: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="pptp-bench-bank-") as tmp:
        bank = ReferenceBank(Path(args.bank_dir) if args.bank_dir else Path(tmp))
        for seed in seeds:
            by_k, info = attack_one_seed(base, seed, ks, bank)
            results.append(by_k)
            infos.append(info)
            print(
                f"# seed {seed}: target train_acc {info['train_acc']:.3f} test_acc "
                f"{info['test_acc']:.3f} ({info['train_s']:.1f}s); references: "
                f"{info['refs_trained']:.0f} trained in {info['refs_s']:.1f}s, mean test_acc "
                f"{info['ref_test_acc']:.3f}; attacks {info['attack_s']:.2f}s",
                flush=True,
            )

    rows = []
    for name in ATTACK_NAMES:
        for k in ks if name != "loss" else ks[:1]:
            ms = [r[k][name] for r in results]
            rows.append(
                [
                    name,
                    "-" if name == "loss" else str(k),
                    mean_sd([m.auc for m in ms]),
                    mean_sd([m.tpr_at_0_1pct_fpr for m in ms], 100),
                    mean_sd([m.tpr_at_1pct_fpr for m in ms], 100),
                    mean_sd([m.balanced_accuracy for m in ms]),
                    " ".join(f"{m.auc:.3f}" for m in ms),
                ]
            )
    print()
    print(f"# mean ± sd over {len(seeds)} seed(s); TPR in %")
    print(
        format_table(
            rows, ["attack", "K", "AUC", "TPR@0.1%FPR", "TPR@1%FPR", "bal. acc", "AUC per seed"]
        )
    )
    n_out = int(min(i["n_nonmembers"] for i in infos))
    print(
        f"# resolution: {n_out} non-members, so the smallest non-zero FPR is 1/{n_out} = "
        f"{100 / n_out:.2f}%; a TPR at a lower FPR is not resolved ('-'), and TPR@1%FPR "
        f"allows {int(0.01 * n_out + 1e-9)} false positives"
    )
    gap = statistics.fmean(i["train_acc"] - i["test_acc"] for i in infos)
    print(f"# mean train-test accuracy gap of the targets: {gap:.3f}")
    print("# " + footer(wall0, cpu0))


if __name__ == "__main__":
    main()
