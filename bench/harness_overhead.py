"""Harness overhead: N quickstart trials through search/run.py against N direct run_trial calls.

Both sides run the same trial configs (the ones the search sampled, read back from its Optuna
study) against the same warm reference bank, in one run of this script:

- **search**: ``python search/run.py`` as a subprocess (Ray start, Optuna, MLflow child runs,
  trial processes), timed from launch to exit;
- **direct**: ``pptp.trial.run_trial`` on each config in turn, in this process, after a warm-up
  trial (so imports and the raw-data cache are paid before timing, as in a long-lived process).

The search runs trials ``--concurrent`` at a time with ``2 / concurrent`` CPUs each; the direct
loop runs them one after another with as many threads as each search trial had. Target:
search/direct <= 1.5 with ``--trials 12 --concurrent 1``.

**Time to first trial**: from the launch of ``search/run.py`` to the start of the first trial's
MLflow child run (the trial's own code running, its imports done), read from the MLflow store.
Target: within 6 s on 2 cores, with the bank warm.

``--trees A,B`` measures each code tree (say a worktree of an older commit, and this one) in turn,
each in a fresh process with its own ``pptp``/``search`` (``PYTHONPATH=<tree>``) and its own copy
of the quickstart space, and prints them side by side: a before/after in one run.

    .venv/bin/python bench/harness_overhead.py --trials 12 --concurrent 1
    .venv/bin/python bench/harness_overhead.py --trials 12 --concurrent 1 --trees /tmp/old,.
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

REPO = Path(os.environ.get("PPTP_BENCH_TREE") or Path(__file__).resolve().parents[1]).resolve()
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 trials, 3 epochs: a smoke run")
    p.add_argument("--trees", help="comma-separated code trees, measured in turn, side by side")
    args = p.parse_args()
    if args.trees:
        side_by_side(args)
        return
    n_trials = 4 if args.quick else args.trials

    import optuna
    import torch

    from pptp.bank import ReferenceBank
    from pptp.trial import references_needed, run_trial
    from search.space import load_space
    from search.study import rundir

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
    launched = time.time()
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    search_s = time.perf_counter() - start
    first_trial_s = (
        first_child_start(f"sqlite:///{work / 'mlflow.db'}", space.study.name) - launched
    )

    study = optuna.load_study(study_name=space.study.name, storage=rundir.storage(run_dir))
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    configs = [space.trial_config(t.params) for t in trials]
    trial_seconds = [float(t.user_attrs.get("seconds", 0.0)) for t in trials]
    torch.set_num_threads(max(1, int(2 / args.concurrent)))  # what each search trial had
    run_trial(configs[0], references=base)  # warm-up: imports, data cache
    start = time.perf_counter()
    for cfg in configs:
        run_trial(cfg, references=base)
    direct_s = time.perf_counter() - start

    rows = [
        ("command to first trial (its MLflow run starts)", first_trial_s),
        ("search/run.py (subprocess, start to exit)", search_s),
        ("direct run_trial loop (one process)", direct_s),
        ("sum of in-trial times inside the search", sum(trial_seconds)),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  seconds")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.1f}")
    print(
        f"ratio search / direct: {search_s / direct_s:.2f} (target <= 1.5); "
        f"{len(configs)} completed trials; work dir {work}"
    )
    print(f"RESULT {first_trial_s:.2f} {search_s:.2f} {direct_s:.2f} {len(configs)}")


def first_child_start(uri: str, experiment: str) -> float:
    """When the study's first trial run started (seconds since the epoch): the earliest start of
    a run with a parent in ``experiment``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    starts = [r.info.start_time for r in runs if "mlflow.parentRunId" in r.data.tags]
    return min(starts) / 1000.0


def side_by_side(args: argparse.Namespace) -> None:
    """Each tree in a fresh process (its own code), in turn; one table of the figures."""
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    rows = []
    for tree in trees:
        cmd = [sys.executable, __file__, "--trials", str(args.trials)]
        cmd += ["--concurrent", str(args.concurrent)] + (["--quick"] if args.quick else [])
        env = {**os.environ, "PPTP_BENCH_TREE": str(tree), "PYTHONPATH": str(tree)}
        out = subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True)
        print(out.stdout, end="", flush=True)
        first, search, direct, n = out.stdout.split("RESULT ", 1)[1].split()[:4]
        rows.append((str(tree), float(first), float(search), float(direct), int(n)))
    print("\n# side by side (one run of this script, trees in turn)")
    print(f"{'tree':<32} {'first trial s':>13} {'search s':>9} {'direct s':>9} {'ratio':>6} trials")
    for tree, first, search, direct, n in rows:
        print(f"{tree:<32} {first:13.1f} {search:9.1f} {direct:9.1f} {search / direct:6.2f} {n}")


if __name__ == "__main__":
    main()
