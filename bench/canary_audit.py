"""The auditor's epsilon (``eps_lb``, pptp/audit.py) of each defense, for each canary kind.

A reduced Fashion-MNIST recipe that fits 2 shared CPU cores (the study recipe of
``spaces/fashion.yaml`` scaled down: a 1,000-image pool instead of 2,000, so 500 members, 200
canaries instead of 100 so the bound has more guesses to work with, small CNN width 16 instead of
32, 20 epochs instead of 30, 2 reference models instead of 8, 1,000 test images). For each canary
kind (``data.canary_kind``: mislabeled, ood) it trains one target per row and prints test accuracy,
the canaries' AUC, ``eps_lb`` (95%, delta 1e-5) with the guessing rule that gave it, DP-SGD's
accountant epsilon, and whether the audit contradicts it:

- undefended;
- the best PPTP point of the README's Fashion-MNIST study (``feature_noise`` 0.75 on
  block1+block2);
- RelaxLoss at ``defense.strength`` 0.5 (alpha 1.0);
- DP-SGD at noise multipliers 0.5 and 1.5 (clipping norm 1.0, learning rate 0.5);
- "broken" DP-SGD: Opacus adds no noise while the accountant counts noise multiplier 20, as
  ``tests/test_dp_claim.py`` does on digits.

    nice -n 10 .venv/bin/python bench/canary_audit.py --threads 1     # ~15 min on 2 shared cores
    .venv/bin/python bench/canary_audit.py --quick                    # digits, 8 epochs: ~1 min

``--json PATH`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from printing import footer, log_warnings, parse_args, provenance

from pptp.audit import claim_check, format_eps_lb
from pptp.bank import ReferenceBank
from pptp.config import TrialConfig
from pptp.defenses import DPSGD
from pptp.hooks import TrainContext
from pptp.tables import format_table
from pptp.trial import run_trial

RECIPE: dict[str, Any] = {
    "data.name": "fashion_mnist",
    "data.data_dir": "/usr/share/datasets/fashion-mnist",
    "data.pool_size": 1000,
    "data.test_size": 1000,
    "data.val_size": 0,
    "data.canaries": 200,
    "model.name": "small_cnn",
    "model.width": 16,
    "model.norm": "group",
    "train.epochs": 20,
    "train.batch_size": 64,
    "train.lr": 0.05,
    "train.augment": False,
    "train.device": "cpu",
    "attack.n_references": 2,
}

QUICK: dict[str, Any] = {
    "data.name": "digits",
    "data.data_dir": "data",
    "data.pool_size": 600,
    "data.test_size": 300,
    "data.canaries": 100,
    "train.epochs": 8,
}

#: DP-SGD rows: clipping norm 1.0 and a learning rate 10x the recipe's (clipped, noised gradients
#: are small: at lr 0.05 DP-SGD reached 0.51 accuracy at noise 0.5 and 0.33 at 1.5)
DP: dict[str, Any] = {"defense.name": "dpsgd", "defense.max_grad_norm": 1.0, "train.lr": 0.5}

#: row name -> the keys it changes, and whether the noise is switched off under the accountant
ROWS: dict[str, tuple[dict[str, Any], bool]] = {
    "undefended": ({}, False),
    "PPTP feature_noise 0.75 block1+block2": (
        {"protect.operator": "feature_noise", "protect.strength": 0.75, "protect.split": 2},
        False,
    ),
    "RelaxLoss 0.5": ({"defense.name": "relaxloss", "defense.strength": 0.5}, False),
    "DP-SGD noise 0.5": ({**DP, "defense.noise_multiplier": 0.5}, False),
    "DP-SGD noise 1.5": ({**DP, "defense.noise_multiplier": 1.5}, False),
    "DP-SGD noise off, claims 20": ({**DP, "defense.noise_multiplier": 20.0}, True),
}


@contextmanager
def noise_switched_off() -> Iterator[None]:
    """Opacus adds no noise while its accountant counts the configured noise multiplier."""
    original = DPSGD.wrap_optimizer

    def noiseless(self: DPSGD, ctx: TrainContext, optimizer: Any) -> torch.optim.Optimizer:
        private = original(self, ctx, optimizer)
        claimed = private.noise_multiplier
        rate = 1 / math.ceil(ctx.n_members / ctx.cfg.batch_size)
        private.noise_multiplier = 0.0
        private.attach_step_hook(
            lambda _: self.engine.accountant.step(noise_multiplier=claimed, sample_rate=rate)
        )
        return private  # type: ignore[no-any-return]

    DPSGD.wrap_optimizer = noiseless  # type: ignore[method-assign]
    try:
        yield
    finally:
        DPSGD.wrap_optimizer = original  # type: ignore[method-assign]


def run_row(base: Mapping[str, Any], keys: Mapping[str, Any], broken: bool, bank: Path) -> dict:
    cfg = TrialConfig.from_flat({**base, **keys, "attack.bank_dir": str(bank)})
    start = time.perf_counter()
    if broken:
        with noise_switched_off():
            result = run_trial(cfg, bank=ReferenceBank(bank))
    else:
        result = run_trial(cfg, bank=ReferenceBank(bank))
    metrics = result.metrics()
    audit = result.audit
    assert audit is not None
    return {
        "test_acc": metrics["test_acc"],
        "canary_auc": metrics["canary_auc"],
        "eps_lb": audit.eps_lb,
        "rule": audit.best.describe() if audit.best is not None else "",
        "rules": audit.rules,
        "epsilon": result.epsilon,
        "dp_claim": claim_check(audit, result.epsilon) if result.epsilon is not None else "",
        "seconds": time.perf_counter() - start,
    }


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, 8 epochs")
    parser.add_argument("--kinds", nargs="+", default=["mislabeled", "ood"])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--bank", type=Path, default=None, help="reference bank (default: temp)")
    args = parse_args(parser, argv)
    log_warnings()
    print("\n".join(f"# {line}" for line in provenance(argv)))
    wall0, cpu0 = time.perf_counter(), os.times()
    base = {**RECIPE, **(QUICK if args.quick else {})}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pptp-canary-audit-") as tmp:
        bank = args.bank or Path(tmp)
        for kind in args.kinds:
            for name in args.rows:
                keys, broken = ROWS[name]
                row = run_row({**base, "data.canary_kind": kind}, keys, broken, bank)
                rows.append({"kind": kind, "row": name, **row})
                print(f"# {kind} / {name}: done in {row['seconds']:.0f}s", flush=True)
    table = [
        [
            r["kind"],
            r["row"],
            f"{r['test_acc']:.3f}",
            f"{r['canary_auc']:.3f}",
            format_eps_lb(r["eps_lb"]),
            "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}",
            r["dp_claim"].split(":")[0] if r["dp_claim"] else "-",
            r["rule"] or "-",
        ]
        for r in rows
    ]
    headers = ["canaries", "target", "acc", "canary AUC", "eps_lb", "epsilon", "DP claim", "rule"]
    print(format_table(table, headers))
    rules = {r["rules"] for r in rows}
    print(f"eps_lb at 95% confidence, delta 1e-05, Bonferroni over {sorted(rules)} rules")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(footer(wall0, cpu0))


if __name__ == "__main__":
    main(sys.argv[1:])
