"""Worst-case attack numbers of one undefended trial, with the queries the code chooses or forced.

Why: query augmentations (shifts, flips) averaged into the attack of a model that never trained
on them hide leakage. This script runs one trial of a space's fixed keys (searched keys at their
defaults: no protection, no defense) with a fresh reference bank and prints the worst-case attack
AUC and TPR at 1% FPR, per attack too, and the queries that were used. It only uses
``run_trial``, ``TrialResult.metrics()`` and ``search.space.load_space``, so it also runs against an
older checkout of ``pptp`` for a before/after comparison::

    .venv/bin/python bench/query_follow.py                               # this checkout
    .venv/bin/python bench/query_follow.py --query-augment true          # force shifted queries
    cd /work/baseline && PYTHONPATH=/work/baseline /work/main/.venv/bin/python \\
        /work/main/bench/query_follow.py                                 # the older code

~1 minute on 2 idle CPU cores with ``spaces/quickstart_memorising.yaml`` (5 trainings of 40
epochs: the target and 4 references).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from printing import footer, log_warnings, parse_args, provenance

import pptp
from pptp.bank import ReferenceBank
from pptp.tables import format_table
from pptp.trial import run_trial
from search.space import load_space


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="spaces/quickstart_memorising.yaml")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of the target")
    parser.add_argument(
        "--query-augment",
        choices=("default", "true", "false"),
        default="default",
        help="attack.query_augment: the code's default, or forced on/off",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--bank-dir", default=None, help="default: a fresh temporary folder")
    args = parse_args(parser, argv)
    wall0, cpu0 = time.perf_counter(), os.times()
    log_warnings()

    print("# query_follow: worst-case attack numbers of one undefended trial")
    for line in provenance(["bench/query_follow.py", *argv]):
        print("#", line)
    print(f"# pptp imported from {Path(pptp.__file__).parent}")
    space = load_space(args.space)
    changes: dict[str, object] = {"train.seed": args.seed}
    if args.query_augment != "default":
        changes["attack.query_augment"] = args.query_augment == "true"
    if args.epochs is not None:
        changes["train.epochs"] = args.epochs
    cfg = space.base_config().replace(**changes)
    t = cfg.train
    print(
        f"# {args.space} fixed keys, searched keys at defaults; {cfg.data.name}, {cfg.model.name} "
        f"norm {cfg.model.norm}; {t.epochs} epochs, augment {t.augment}, crop_pad {t.crop_pad}; "
        f"attack.query_augment {cfg.attack.query_augment}; K {cfg.attack.n_references}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="pptp-bench-bank-") as tmp:
        bank = ReferenceBank(Path(args.bank_dir) if args.bank_dir else Path(tmp))
        result = run_trial(cfg, bank=bank)
    metrics = result.metrics()
    queries = getattr(result, "queries", None)
    print(
        f"# target: train_acc {result.train_acc:.4f}, test_acc {result.test_acc:.4f}; queries "
        f"{','.join(queries) if queries else '(not recorded by this code)'}"
    )
    rows = [
        [name, f"{m.auc:.4f}", f"{100 * m.tpr_at_0_1pct_fpr:.2f}", f"{100 * m.tpr_at_1pct_fpr:.2f}"]
        for name, m in result.attacks.items()
    ]
    rows.append(
        [
            "worst case (attack_*)",
            f"{metrics['attack_auc']:.4f}",
            f"{100 * metrics['attack_tpr@0.1%fpr']:.2f}",
            f"{100 * metrics['attack_tpr@1%fpr']:.2f}",
        ]
    )
    print(format_table(rows, ["attack", "AUC", "TPR@0.1%FPR (%)", "TPR@1%FPR (%)"]))
    print("# " + footer(wall0, cpu0))


if __name__ == "__main__":
    main()
