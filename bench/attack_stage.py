"""Cost of a trial's attack stage with a cold reference bank against a warm one.

The trial is the quickstart's first enqueued trial (``spaces/quickstart.yaml``, loaded with
:func:`search.space.load_space`; ``space.trial_config(space.study.enqueue[0])``: small CNN on 8x8
digits, 15 epochs, K = 4 references, attacks loss, lira_offline and rmia_online). Each repeat uses
a fresh temporary bank folder and runs :func:`pptp.trial.run_trial` twice:

- cold: the bank is empty, so the ``references`` stage trains the K reference models (one after
  another, in this process) and stores them;
- warm: the same trial again; the ``references`` stage only loads the stored entries, reading and
  checksumming each once (``ReferenceBank.load(..., train_missing=True)``).

The table shows ``TrialResult.timings`` per stage (medians over repeats) and each stage's share of
the trial. The attack cost of a trial is the ``references`` plus ``attack`` stages; the target
(issue) is that with a warm bank it is at most 5% of the trial's time. A second table splits the
warm attack cost into the bank's load (``ReferenceBank.load``, what a trial pays) and each
attack's scoring plus metrics, and shows the driver's check (``ReferenceBank.missing``) apart.

    .venv/bin/python bench/attack_stage.py            # ~20 s on 2 idle CPU cores
    .venv/bin/python bench/attack_stage.py --quick    # seconds: 2 epochs, 1 repeat
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from printing import footer, log_warnings, parse_args, provenance

from pptp.attacks import ATTACKS, AttackInput, attack_names
from pptp.bank import ReferenceBank
from pptp.config import TrialConfig
from pptp.data import build_pool
from pptp.metrics import evaluate
from pptp.models import build_model
from pptp.result import TrialResult
from pptp.signals import compute_signals, resolve_queries
from pptp.tables import format_table
from pptp.train import train
from pptp.trial import references_needed, run_trial
from search.space import load_space

# ------------------------------------------------------------------------------------- stages

STAGES = ("data", "train", "signals", "references", "attack")


def median_ms(fn: Callable[[], object], *, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def attack_parts(cfg: TrialConfig, bank: ReferenceBank, *, repeats: int) -> list[list[str]]:
    """Milliseconds of the warm attack cost's parts, each measured on its own."""
    pool = build_pool(cfg.data, device="cpu")
    members = np.flatnonzero(pool.keep(1)[0])
    model = build_model(cfg.model, pool, seed=cfg.train.seed)
    train(model, pool, members, cfg.train, device=torch.device("cpu"))
    signals = compute_signals(model, pool.x, pool.y, queries=resolve_queries(cfg))
    k = references_needed(cfg)
    refs = bank.load(cfg, k, pool=pool)
    inputs = AttackInput(signals.logits, signals.labels, refs.logits, refs.keep)
    n, n_aug, n_classes = signals.logits.shape
    is_member = pool.keep(1)[0]

    def build_input() -> AttackInput:
        return AttackInput(signals.logits, signals.labels, refs.logits, refs.keep)

    rows = [
        [f"(driver only) bank.missing ({k} entries: sha256 + np.load)",
         f"{median_ms(lambda: bank.missing(cfg, k), repeats=repeats):.1f}"],
        [f"bank.load ({k} entries: sha256 + np.load + keep rows)",
         f"{median_ms(lambda: bank.load(cfg, k, pool=pool), repeats=repeats):.1f}"],
        [f"AttackInput ({n} examples x {n_aug} queries x {n_classes} classes, K = {k})",
         f"{median_ms(build_input, repeats=repeats):.1f}"],
    ]  # fmt: skip

    def score(name: str) -> object:
        return evaluate(ATTACKS[name](inputs), is_member)

    for name in attack_names(cfg.attack):
        ms = median_ms(functools.partial(score, name), repeats=repeats)
        rows.append([f"{name} (scores + ROC/AUC/TPR)", f"{ms:.1f}"])
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--space", default="spaces/quickstart.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    args = parse_args(parser, argv)
    wall0, cpu0 = time.perf_counter(), os.times()
    if args.quick:
        args.repeats, args.epochs = 1, args.epochs or 2
    log_warnings()

    print("# attack_stage: run_trial with a cold reference bank against a warm one")
    for line in provenance(["bench/attack_stage.py", *argv]):
        print("#", line)
    space = load_space(args.space)
    cfg = space.trial_config(space.study.enqueue[0])
    overrides: dict[str, object] = {"train.device": "cpu"}
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
        overrides["train.warmup_epochs"] = min(cfg.train.warmup_epochs, args.epochs)
    cfg = cfg.replace(**overrides)
    print(
        f"# trial: {args.space} enqueue[0] = {space.study.enqueue[0]}; {cfg.data.name}, "
        f"{cfg.model.name} (norm {cfg.model.norm}), {cfg.train.epochs} epochs, batch "
        f"{cfg.train.batch_size}, K = {cfg.attack.n_references} references, attacks "
        f"{', '.join(attack_names(cfg.attack))}, queries {','.join(resolve_queries(cfg))}; "
        f"{args.repeats} repeats, each cold then warm",
        flush=True,
    )

    cold: list[TrialResult] = []
    warm: list[TrialResult] = []
    with tempfile.TemporaryDirectory(prefix="pptp-bench-bank-") as tmp:
        for rep in range(args.repeats):
            bank = ReferenceBank(Path(tmp) / f"bank-{rep}")
            run = cfg.replace(**{"attack.bank_dir": str(bank.root)})
            cold.append(run_trial(run, bank=bank))
            warm.append(run_trial(run, bank=bank))
        parts = attack_parts(cfg, bank, repeats=5 if not args.quick else 1)

    def med(rs: list[TrialResult], stage: str) -> float:
        return statistics.median(r.timings.get(stage, 0.0) for r in rs)

    def total(r: TrialResult) -> float:
        return sum(r.timings.values())

    rows = []
    cold_total = statistics.median(total(r) for r in cold)
    warm_total = statistics.median(total(r) for r in warm)
    for stage in STAGES:
        c, w = med(cold, stage), med(warm, stage)
        rows.append(
            [stage, f"{c:.3f}", f"{100 * c / cold_total:.1f}%", f"{w:.3f}",
             f"{100 * w / warm_total:.1f}%", f"{c / w:.1f}x" if w > 0 else "-"]
        )  # fmt: skip
        if stage == "train":  # the epochs' training loops alone (TrainResult.train_seconds)
            c = statistics.median(sum(h.seconds for h in r.history) for r in cold)
            w = statistics.median(sum(h.seconds for h in r.history) for r in warm)
            rows.append(
                ["  of which training loops", f"{c:.3f}", f"{100 * c / cold_total:.1f}%",
                 f"{w:.3f}", f"{100 * w / warm_total:.1f}%", "-"]
            )  # fmt: skip
    attack_cold = [r.timings["references"] + r.timings["attack"] for r in cold]
    attack_warm = [r.timings["references"] + r.timings["attack"] for r in warm]
    share_warm = [a / total(r) for a, r in zip(attack_warm, warm, strict=True)]
    a_cold, a_warm = statistics.median(attack_cold), statistics.median(attack_warm)
    rows.append(
        ["references + attack", f"{a_cold:.3f}", f"{100 * a_cold / cold_total:.1f}%",
         f"{a_warm:.3f}", f"{100 * a_warm / warm_total:.1f}%", f"{a_cold / a_warm:.0f}x"]
    )  # fmt: skip
    rows.append(
        ["trial (sum of stages)", f"{cold_total:.3f}", "100%", f"{warm_total:.3f}", "100%",
         f"{cold_total / warm_total:.1f}x"]
    )  # fmt: skip
    print()
    print(
        format_table(rows, ["stage", "cold s", "cold share", "warm s", "warm share", "cold / warm"])
    )
    worst = max(share_warm)
    verdict = "met" if statistics.median(share_warm) <= 0.05 else "NOT met"
    print(
        f"# target: warm references + attack <= 5% of the trial: {verdict} (median "
        f"{100 * statistics.median(share_warm):.2f}%, worst repeat {100 * worst:.2f}%)"
    )
    accs = ", ".join(f"{r.test_acc:.3f}" for r in warm)
    aucs = ", ".join(f"{k} {m.auc:.3f}" for k, m in warm[0].attacks.items())
    print(f"# warm trials: test_acc {accs}; first repeat's AUC: {aucs}")
    print()
    print("# training loops = the epochs without per-epoch evaluation (TrainResult.train_seconds);")
    print("#   the rest of the train stage is model setup and evaluation after every epoch")
    print()
    print("# the warm attack cost, part by part (median ms of 5 calls each)")
    print(format_table(parts, ["part", "ms"]))
    print("# " + footer(wall0, cpu0))


if __name__ == "__main__":
    main()
