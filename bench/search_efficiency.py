"""Hypervolume against trained epochs: full-fidelity samplers against TPE with MO-ASHA.

Methods: random search, TPE, NSGA-II and Optuna's GP sampler at full fidelity, and TPE with the
multi-fidelity scheduler (:class:`search.running.scheduler.MultiObjectiveASHA`, rungs at 1/9 and
1/3 of the epochs, reduction 3), each over ``--seeds`` sampler seeds. Every method gets the same
budget in **trained epochs**: ``--trials`` full trainings; the multi-fidelity search spends it on
more, mostly shorter, trainings. The trials run one at a time in this process (no Ray: the
harness's own cost is measured by ``harness_overhead.py``), through the same code a study runs:
``Space.trial_config``, :func:`pptp.fidelity.run_trial_at_rungs` against the references' signals
at each rung, the scheduler's decision at each rung, Optuna told COMPLETE or PRUNED.

The recipe is a reduced ``spaces/fashion.yaml`` (stated in :data:`RECIPE`): real Fashion-MNIST,
an MLP of width 64, 200 members, 9 epochs, 4 references, loss and LiRA-offline attacks, one
training seed per trial, PPTP and four baselines kept apart (no DP-SGD: Opacus' per-example
gradients would dominate the CPU time). Every trial, full fidelity included, is measured at the
rungs too (measuring does not change training), so ``rung_correlation.py`` reads the same file.

Writes one JSON line per trial to ``--out`` (appending: an interrupted run resumes where it
stopped), then prints the table (hypervolume at 25%, 50% and 100% of the budget per method, mean
and spread over seeds) and writes the figure (``--figure``).

    .venv/bin/python bench/search_efficiency.py                 # 8 trials' budget, 3 seeds
    .venv/bin/python bench/search_efficiency.py --quick         # a smoke run of every path
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
from ray.tune.schedulers import TrialScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.printing import footer, log_warnings, parse_args, provenance
from pptp.bank import ReferenceBank
from pptp.fidelity import run_trial_at_rungs
from pptp.treatment import treatment_of
from search.comparing.fronts import hypervolume
from search.running.scheduler import FINAL, RUNG, STOPPABLE, MultiObjectiveASHA
from search.space import build_sampler, load_space

RECIPE = """
study:
  name: efficiency
  objectives: {{test_acc: maximize, attack_auc: minimize}}
  combine: false
  constraints:
    - {{metric: test_acc, min: 0.5}}
  fidelity: {{rungs: [0.111, 0.333], reduction: 3}}
fixed:
  data: {{name: fashion_mnist, pool_size: 400, test_size: 500, val_size: 100, canaries: 0}}
  model: {{name: mlp, width: 64, norm: none}}
  train: {{epochs: 9, batch_size: 16, lr: 0.05, augment: false, device: cpu}}
  attack: {{n_references: 4, attacks: [loss, lira_offline], bank_dir: {bank}}}
params:
  defense.name:
    type: categorical
    choices: [none, weight_decay, label_smoothing, early_stopping, relaxloss]
  defense.strength: {{type: float, low: 0.0, high: 1.0}}
  protect.operator: {{type: categorical, choices: [noise, damp, anchor, rewind, feature_noise]}}
  protect.strength: {{type: float, low: 0.0, high: 1.0}}
  protect.split: {{type: int, low: 1, high: 2}}
  protect.direction: {{type: categorical, choices: [prefix, suffix]}}
"""

#: method -> (sampler, its options, multi-fidelity)
METHODS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "random": ("random", {}, False),
    "tpe": ("tpe", {"n_startup_trials": 5}, False),
    "nsga2": ("nsga2", {"population_size": 6}, False),
    "gp": ("gp", {"n_startup_trials": 5}, False),
    "tpe+mo-asha": ("tpe", {"n_startup_trials": 5}, True),
}
#: hypervolume reference point: accuracy at the constraint, attack AUC of a model that leaks a lot
REFERENCE = (0.5, 0.75)


class Stopped(Exception):
    """The scheduler stopped the trial at this rung."""

    def __init__(self, epoch: int, values: dict[str, float]) -> None:
        super().__init__(epoch)
        self.epoch, self.values = epoch, values


def _on_rung(
    epoch: int,
    results: list[Any],
    *,
    at_rungs: dict[int, dict[str, float]],
    who: Any,
    stoppable: bool,
    asha: MultiObjectiveASHA | None,
) -> None:
    """Keep a rung's values; with the scheduler, stop the trial as a study would."""
    values = {m: float(results[0].metrics()[m]) for m in ("test_acc", "attack_auc")}
    at_rungs[epoch] = values
    result = {**values, RUNG: epoch, FINAL: 0, STOPPABLE: int(stoppable)}
    if asha is not None and asha.on_trial_result(None, who, result) == TrialScheduler.STOP:
        raise Stopped(epoch, values)


def run_method(space: Any, refs: Any, method: str, seed: int, budget: int, out: Path) -> None:
    """One search: ``budget`` trained epochs, each trial a JSON line in ``out``."""
    sampler_name, options, multi = METHODS[method]
    spec = dataclasses.replace(
        space.study, sampler=sampler_name, sampler_options=options, seed=seed
    )
    study = optuna.create_study(directions=spec.directions, sampler=build_sampler(spec))
    epochs = space.base_config().train.epochs
    assert spec.fidelity is not None
    rungs = spec.fidelity.epochs(epochs)
    asha = MultiObjectiveASHA(spec.objectives, spec.constraints, reduction=spec.fidelity.reduction)
    spent, number = 0, 0
    while spent < budget:
        trial = study.ask(space.params)
        cfg = space.trial_config(trial.params).replace(**{"train.seed": 1000 + number})
        treatment = treatment_of(cfg)
        stoppable = not {treatment.operator, treatment.defense} & set(spec.fidelity.never_stop)
        at_rungs: dict[int, dict[str, float]] = {}

        on_rung = partial(
            _on_rung,
            at_rungs=at_rungs,
            who=SimpleNamespace(trial_id=str(number)),
            stoppable=stoppable,
            asha=asha if multi else None,
        )
        start = time.perf_counter()
        row: dict[str, Any] = {"method": method, "seed": seed, "trial": number}
        try:
            (result,) = run_trial_at_rungs(cfg, [cfg.train.seed], rungs, on_rung=on_rung,
                                           reference_signals=refs)  # fmt: skip
            values = [float(result.metrics()[o.metric]) for o in spec.objectives]
            constraint = spec.constraints[0].value(result.metrics())
            trial.set_constraint(spec.constraints[0].name, constraint)
            study.tell(trial, values)
            row.update(state="COMPLETE", final=dict(zip(spec.metrics, values, strict=True)))
            row["epochs"] = len(result.history) or epochs  # early stopping: fewer; rewind: more
        except Stopped as stop:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            row.update(state="PRUNED", final=stop.values, epochs=stop.epoch)
        except Exception as error:  # a trial at chance or diverged: a data point, as in a study
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            row.update(state="FAIL", error=f"{type(error).__name__}: {error}"[:200])
            row["epochs"] = epochs
        row.update(
            kind=treatment.kind,
            operator=treatment.operator,
            defense=treatment.defense,
            rungs={str(k): v for k, v in at_rungs.items()},
            seconds=round(time.perf_counter() - start, 2),
        )
        spent += int(row["epochs"])
        row["spent"] = spent
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        number += 1


def hv_curve(rows: Sequence[dict[str, Any]], checkpoints: Sequence[float]) -> list[float]:
    """Hypervolume of the COMPLETE, feasible trials found within each budget checkpoint."""
    from search.space import Objective

    axes = (Objective("test_acc", "maximize"), Objective("attack_auc", "minimize"))
    out = []
    for budget in checkpoints:
        done = [
            (r["final"]["test_acc"], r["final"]["attack_auc"])
            for r in rows
            if r["state"] == "COMPLETE" and r["spent"] <= budget + 1e-9
        ]
        points = np.array(done) if done else np.zeros((0, 2))
        out.append(hypervolume(points, np.array(REFERENCE), axes))
    return out


def report(out: Path, budget: int, figure: Path | None) -> list[str]:
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    lines = [
        f"budget {budget} trained epochs per search; hypervolume reference point: test_acc "
        f"{REFERENCE[0]}, attack_auc {REFERENCE[1]}; mean ± sd over sampler seeds (n)",
        "",
        "| method | HV at 25% | HV at 50% | HV at 100% | trainings (full) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    grid = np.linspace(budget / 20, budget, 20)
    curves: dict[str, np.ndarray] = {}
    for method in METHODS:
        seeds = sorted({r["seed"] for r in rows if r["method"] == method})
        if not seeds:
            continue
        per_seed = [[r for r in rows if r["method"] == method and r["seed"] == s] for s in seeds]
        table = np.array([hv_curve(rs, [budget / 4, budget / 2, budget]) for rs in per_seed])
        curves[method] = np.array([hv_curve(rs, list(grid)) for rs in per_seed])
        cells = [
            f"{table[:, i].mean():.4f} ± {table[:, i].std(ddof=1) if len(seeds) > 1 else 0:.4f}"
            for i in range(3)
        ]
        n = np.mean([len(rs) for rs in per_seed])
        full = np.mean([sum(r["state"] == "COMPLETE" for r in rs) for rs in per_seed])
        lines.append(f"| {method} | {' | '.join(cells)} | {n:.1f} ({full:.1f}) | {len(seeds)} |")
    if figure is not None and curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for method, curve in curves.items():
            mean = curve.mean(axis=0)
            ax.plot(grid, mean, label=method, lw=2 if "asha" in method else 1.2)
            if len(curve) > 1:
                sd = curve.std(axis=0, ddof=1)
                ax.fill_between(grid, mean - sd, mean + sd, alpha=0.15)
        ax.set_xlabel("trained epochs (cost)")
        ax.set_ylabel(f"hypervolume (ref. acc {REFERENCE[0]}, AUC {REFERENCE[1]})")
        ax.set_title("Fashion-MNIST, reduced recipe: hypervolume against cost")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(figure, dpi=120)
        lines.append(f"\nfigure: {figure}")
    return lines


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials' budget, 1 seed")
    parser.add_argument("--trials", type=int, default=8, help="full trainings of the budget")
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds per method")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path("bench/search_efficiency.jsonl"))
    parser.add_argument("--figure", type=Path, default=Path("bench/search_efficiency.png"))
    parser.add_argument(
        "--bank", type=Path, default=Path(tempfile.gettempdir()) / "pptp-bench-bank"
    )
    parser.add_argument("--report-only", action="store_true", help="table and figure from --out")
    args = parse_args(parser, argv)
    if args.quick:
        args.trials, args.seeds = 2, 1
        args.out = Path(tempfile.gettempdir()) / "search_efficiency_quick.jsonl"
        args.out.unlink(missing_ok=True)
        args.figure = None
    log_warnings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wall0, cpu0 = time.perf_counter(), os.times()
    for line in provenance(["bench/search_efficiency.py", *argv]):
        print(f"# {line}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(RECIPE.format(bank=args.bank))
        space = load_space(path)
    epochs = space.base_config().train.epochs
    budget = args.trials * epochs
    if not args.report_only:
        base = space.base_config()
        assert space.study.fidelity is not None
        rungs = space.study.fidelity.epochs(epochs)
        bank = ReferenceBank(args.bank)
        refs = bank.load(base, base.attack.n_references, train_missing=True, rungs=rungs)
        done = set()  # (method, seed) searches an earlier run finished
        if args.out.exists():
            for line in args.out.read_text().splitlines():
                row = json.loads(line)
                if row["spent"] >= budget:
                    done.add((row["method"], row["seed"]))
        for seed in range(args.seeds):
            for method in args.methods:
                if (method, seed) in done:
                    continue  # an earlier run finished it
                if args.out.exists():  # rows of an unfinished search of this method and seed
                    kept = [
                        line
                        for line in args.out.read_text().splitlines()
                        if (json.loads(line)["method"], json.loads(line)["seed"]) != (method, seed)
                    ]
                    args.out.write_text("".join(r + "\n" for r in kept))
                t0 = time.perf_counter()
                run_method(space, refs, method, seed, budget, args.out)
                print(f"# {method} seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)
    for line in report(args.out, budget, args.figure):
        print(line)
    print(footer(wall0, cpu0))
    return 0 if math.isfinite(budget) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
