"""Does seeding a study from the localisation reach the unseeded study's hypervolume sooner?

For each sampler seed, two studies with the same sampler (the space's) and the same trial budget
run in this process (Optuna ask/tell around ``run_trial``; Ray adds nothing to this question):

- **unseeded**: the space's own first trials (``study.enqueue``), then the sampler;
- **seeded**: the same, plus the first trials ``search/running/steering.py`` derives from a
localisation
  of the space's model (protect the 1..3 riskiest groups), then the sampler.

After every trial the hypervolume of the feasible completed trials is computed (objectives as
minimised values; reference point: accuracy 0, attack AUC 1). Reported per seed and as mean and
spread: the final hypervolume of each study, and the number of trials the seeded study needs to
reach the unseeded study's final hypervolume ("-" when it never does).

    .venv/bin/python bench/localize_seeding.py --space spaces/quickstart.yaml --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def hypervolume(points: list[tuple[float, ...]], directions: list[str]) -> float:
    """Hypervolume of ``points`` (objective values) against acc 0 / AUC 1 style references."""
    from optuna._hypervolume import compute_hypervolume

    if not points:
        return 0.0
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    values = np.asarray(points, dtype=float) * signs  # all minimised
    reference = np.array([0.0 if d == "maximize" else 1.0 for d in directions])
    inside = values[(values < reference).all(axis=1)]
    return float(compute_hypervolume(inside, reference)) if len(inside) else 0.0


def run_study(
    space: Any, first: list[dict[str, Any]], seed: int, n_trials: int, references: Any
) -> list[float]:
    """Hypervolume after each of ``n_trials`` trials of one in-process study."""
    import optuna

    from pptp.trial import run_trial
    from search.space import build_sampler

    study_spec = dataclasses.replace(space.study, seed=seed)
    study = optuna.create_study(
        directions=study_spec.directions, sampler=build_sampler(study_spec, source=str(space.path))
    )
    for params in first:
        study.enqueue_trial(params, skip_if_exists=True)
    history = []
    for _ in range(n_trials):
        trial = study.ask(fixed_distributions=space.params)
        cfg = space.trial_config(trial.params).replace(
            **{"attack.bank_dir": references.attack.bank_dir}
        )
        metrics = run_trial(cfg, references=references).metrics()
        values = [metrics[m] for m in study_spec.metrics]
        for c in study_spec.constraints:
            trial.set_constraint(c.name, c.value(metrics))
        study.tell(trial, values)
        feasible = [
            tuple(t.values)
            for t in study.trials
            if t.values and all(v <= 0 for v in t.constraints.values())
        ]
        history.append(hypervolume(feasible, study_spec.directions))
    return history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="spaces/quickstart.yaml")
    p.add_argument("--seeds", default="0,1,2", help="sampler seeds, comma separated")
    p.add_argument("--localization", help="a localization.json (default: measure it now)")
    p.add_argument("--quick", action="store_true", help="1 seed, 4 trials, 3 epochs")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import optuna

    from pptp.bank import ReferenceBank
    from pptp.localize import LocalizationResult, localize
    from pptp.trial import references_needed
    from search.running.steering import enqueue_from_localization
    from search.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.space)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    n_trials = 4 if args.quick else space.study.n_trials
    base = space.base_config().replace(
        **{"attack.bank_dir": str(Path(tempfile.mkdtemp(prefix="pptp-bench-seed-")))}
    )
    if args.quick:
        base = base.replace(**{"train.epochs": 3})
        space = dataclasses.replace(space, fixed={**space.fixed, "train.epochs": 3})
    start = time.perf_counter()
    if args.localization:
        result = LocalizationResult.load(args.localization)
    else:
        result = localize(base, seeds=(0,) if args.quick else (0, 1, 2))
    seeded_first = enqueue_from_localization(result, space)
    print(
        f"# {space.path}: {n_trials} trials per study, sampler {space.study.sampler}, "
        f"sampler seeds {seeds}; localisation ranks {[g.group for g in result.ranked()]} "
        f"({time.perf_counter() - start:.0f}s); it adds {len(seeded_first)} first trials"
    )
    ReferenceBank(base.attack.bank_dir).ensure(base, references_needed(base))
    first = list(space.study.enqueue)
    rows = []
    for seed in seeds:
        plain = run_study(space, first, seed, n_trials, base)
        seeded = run_study(space, [*first, *seeded_first], seed, n_trials, base)
        reach = next((i + 1 for i, hv in enumerate(seeded) if hv >= plain[-1]), None)
        rows.append((seed, plain, seeded, reach))
        print(
            f"seed {seed}: final hypervolume unseeded {plain[-1]:.4f}, seeded {seeded[-1]:.4f}; "
            f"seeded reaches the unseeded final at trial {reach or '-'} of {n_trials}",
            flush=True,
        )
    finals_plain = [r[1][-1] for r in rows]
    finals_seeded = [r[2][-1] for r in rows]
    reached = [r[3] for r in rows if r[3] is not None]

    def spread(xs: list[float]) -> str:
        return (
            f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"
            if len(xs) > 1
            else f"{xs[0]:.4f}"
        )

    print(f"\nfinal hypervolume   unseeded {spread(finals_plain)}   seeded {spread(finals_seeded)}")
    print(
        f"trials for the seeded study to reach the unseeded final: "
        f"{[r[3] or '-' for r in rows]} (reached in {len(reached)} of {len(rows)} seeds"
        + (f", mean {statistics.mean(reached):.1f})" if reached else ")")
    )

    def first_at(history: list[float], level: float) -> int | None:
        return next((i + 1 for i, hv in enumerate(history) if hv >= level), None)

    near = [(first_at(r[1], 0.99 * r[1][-1]), first_at(r[2], 0.99 * r[1][-1])) for r in rows]
    pairs = [f"seed {r[0]}: {a}, {b or '-'}" for r, (a, b) in zip(rows, near, strict=True)]
    print("trials to reach 99% of the unseeded final (unseeded, seeded): " + ", ".join(pairs))
    print("hypervolume after each trial (unseeded / seeded):")
    for seed, plain, seeded, _ in rows:
        print(
            f"  seed {seed}: "
            + " ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(plain, seeded, strict=True))
        )


if __name__ == "__main__":
    main()
