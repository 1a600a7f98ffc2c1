"""Harness overhead: N quickstart trials through search/run.py against N direct run_trial calls.

Both sides run the same trial configs (the ones the search sampled, read back from its Optuna
study) against the same warm reference bank, in one run of this script:

- **search**: ``python search/run.py`` as a subprocess (Ray start, Optuna, MLflow child runs,
  trial processes), timed from launch to exit;
- **direct**: ``pptp.trial.run_trial`` on each config in turn, in this process, after a warm-up
  trial (so imports and the raw-data cache are paid before timing, as in a long-lived process).

The search runs trials ``--concurrent`` at a time with ``2 / concurrent`` CPUs each; the direct
loop runs them one after another with all (2) threads. Target: search/direct <= 1.25.

    .venv/bin/python bench/harness_overhead.py --trials 12
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 trials, 3 epochs: a smoke run")
    args = p.parse_args()
    n_trials = 4 if args.quick else args.trials

    import optuna
    import torch

    from pptp.bank import ReferenceBank
    from pptp.trial import references_needed, run_trial
    from search import rundir
    from search.space import load_space

    work = Path(tempfile.mkdtemp(prefix="pptp-bench-harness-"))
    doc = yaml.safe_load((REPO / "spaces" / "quickstart.yaml").read_text())
    doc["study"].update(
        n_trials=n_trials,
        max_concurrent=args.concurrent,
        resources={"cpus": 2 / args.concurrent, "gpus": 0},
    )
    doc["fixed"].setdefault("attack", {})["bank_dir"] = str(work / "bank")
    if args.quick:
        doc["fixed"].setdefault("train", {})["epochs"] = 3
    space_path = work / "space.yaml"
    space_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    space = load_space(space_path)
    base = space.base_config()
    print(
        f"# harness overhead: {n_trials} quickstart trials, {args.concurrent} concurrent; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu"
    )
    ReferenceBank(base.attack.bank_dir).ensure(base, references_needed(base))  # warm bank

    run_dir = work / "run"
    cmd = [
        sys.executable,
        str(REPO / "search" / "run.py"),
        "--space",
        str(space_path),
        "--output",
        str(run_dir),
        "--tracking-uri",
        f"sqlite:///{work / 'mlflow.db'}",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    search_s = time.perf_counter() - start

    study = optuna.load_study(study_name=space.study.name, storage=rundir.storage(run_dir))
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    configs = [space.trial_config(t.params) for t in trials]
    trial_seconds = [float(t.user_attrs.get("seconds", 0.0)) for t in trials]
    run_trial(configs[0], references=base)  # warm-up: imports, data cache
    start = time.perf_counter()
    for cfg in configs:
        run_trial(cfg, references=base)
    direct_s = time.perf_counter() - start

    rows = [
        ("search/run.py (subprocess, start to exit)", search_s),
        ("direct run_trial loop (one process)", direct_s),
        ("sum of in-trial times inside the search", sum(trial_seconds)),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  seconds")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.1f}")
    print(
        f"ratio search / direct: {search_s / direct_s:.2f} (target <= 1.25); "
        f"{len(configs)} completed trials; work dir {work}"
    )


if __name__ == "__main__":
    main()
