"""The same small study on a one-node and on a two-node Ray cluster of this machine.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/multinode.py            # 1 node, then 2 nodes
    RAY_AUTH_MODE=disabled .venv/bin/python bench/multinode.py --trials 6 --cpus-per-node 1

Each row: the nodes (``ray.cluster_utils.Cluster``, one CPU each unless told), the study's wall
time through ``search/run.py --address`` (references and trials; Ray's start not included), the
trials per node (from the trials' ``node.ray_id`` tags) and how many reference models were
trained (the bank's entries; each once). The study is ``tests/test_multinode.py``'s: digits, a
32-unit MLP, 10 epochs, 2 references, 2 trials at once. On one machine the nodes share its
cores, so two nodes are not twice as fast: the figure shows what the cluster costs, not a
speed-up.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def one(nodes: int, cpus: int, trials: int, folder: Path) -> dict[str, object]:
    import optuna
    import ray
    from mlflow.tracking import MlflowClient
    from test_multinode import run_study, start_cluster

    from search.study import rundir

    cluster = start_cluster(nodes, cpus)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            code, seconds, run, uri = run_study(folder, cluster.address, n_trials=trials)  # type: ignore[attr-defined]
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[attr-defined]
    study = optuna.load_study(study_name="multinode", storage=rundir.storage(run))
    client = MlflowClient(uri)
    per_node = collections.Counter(
        client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["node.ray_id"][:8]
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    )
    trained = sum(1 for _ in (folder / "bank").rglob("ref-*.json"))
    return {"nodes": nodes, "code": code, "seconds": seconds, "per_node": per_node, "refs": trained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for nodes in (1, 2):
        with tempfile.TemporaryDirectory(prefix="pptp-bench-") as folder:
            rows.append(one(nodes, args.cpus_per_node, args.trials, Path(folder)))
    print(f"study: {args.trials} trials, {args.cpus_per_node} CPU per node, this machine's cores")
    print(f"{'nodes':>5} {'exit':>4} {'wall s':>7}  {'trials per node':<24} references trained")
    for r in rows:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(r["per_node"].items()))  # type: ignore[attr-defined]
        print(f"{r['nodes']:>5} {r['code']:>4} {r['seconds']:>7.1f}  {counts:<24} {r['refs']}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"(bench/multinode.py: {time.perf_counter() - start:.0f} s)")
