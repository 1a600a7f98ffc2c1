"""A study over a real two-node Ray cluster on this machine, through ``search/run.py --address``.

Ray's own multi-node helper (:class:`ray.cluster_utils.Cluster`) starts a head and a worker node,
one CPU each, on this machine's address (a driver that joins ``127.0.0.1:<port>`` has it replaced
by the routable address, so a cluster bound to loopback cannot be joined that way); the head's
GCS port is chosen by Ray (never 6379, where Redis listens on these machines). Checks: trials ran
on both nodes (their ``node.ray_id`` tags), every reference model was trained once (by the
driver's reference stage, none inside a trial: every trial scored against the references shipped
through the object store), and the study, its front and its MLflow runs are complete. Every Ray
process the test started is stopped by PID (``Cluster.shutdown``, then
:func:`fixtures_ray.kill_processes_naming` on the test's RAY_TMPDIR).
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import optuna
import pytest
from fixtures_ray import kill_processes_naming, ray_tmp
from fixtures_space import TINY_STUDY_FIXED
from mlflow.tracking import MlflowClient

from search.run import main
from search.study import rundir

__all__ = ["ray_tmp"]  # the fixture, imported for its use below

SPACE = (
    """
study:
  name: multinode
  objectives: {{test_acc: maximize, attack_auc: minimize}}
  sampler: random
  seed: 0
  n_trials: {n_trials}
  max_concurrent: 2
  resources: {{cpus: 1, gpus: 0}}
"""
    + TINY_STUDY_FIXED
    + """params:
  protect.operator: {{type: categorical, choices: [damp, anchor]}}
  protect.strength: {{type: float, low: 0.0, high: 1.0}}
  protect.split: {{type: int, low: 1, high: 3}}
"""
)


def start_cluster(nodes: int, cpus_per_node: int = 1) -> object:
    """A Ray cluster of ``nodes`` nodes on this machine (Ray's test helper; the caller shuts it
    down). The object store of each node is small: the tests' references are kilobytes."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": cpus_per_node, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    return cluster


def run_study(folder: Path, address: str, *, n_trials: int) -> tuple[int, float, Path, str]:
    """``search/run.py --address`` on a fresh space, run directory and SQLite store; returns the
    exit status, the wall time in seconds, the run directory and the tracking URI."""
    space = folder / "multinode.yaml"
    space.write_text(SPACE.format(n_trials=n_trials, bank=folder / "bank"))
    run, uri = folder / "run", f"sqlite:///{folder / 'store' / 'mlflow.db'}"
    start = time.perf_counter()
    code = main(
        ["--space", str(space), "--output", str(run), "--tracking-uri", uri, "--address", address]
    )
    return code, time.perf_counter() - start, run, uri


@pytest.mark.slow
def test_a_study_over_two_ray_nodes(
    tmp_path: Path, ray_tmp: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    cluster = start_cluster(2)
    try:
        address = cluster.address  # type: ignore[attr-defined]
        assert not address.endswith(":6379")
        code, seconds, run, uri = run_study(tmp_path, address, n_trials=4)
        out = capsys.readouterr().out
        assert code == 0, out
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[attr-defined]
        kill_processes_naming(ray_tmp)

    # the references: trained once each, by the driver's stage, and shipped to every trial
    assert "references  2 needed, 0 in the bank" in out
    assert out.count("references  2/2 trained") == 1 and "1/2 trained" in out
    assert "references  2 shipped to the trials" in out
    entry = next((tmp_path / "bank").iterdir())
    markers = sorted(entry.glob("ref-*.json"))
    assert [m.name for m in markers] == ["ref-0000.json", "ref-0001.json"]

    study = optuna.load_study(study_name="multinode", storage=rundir.storage(run))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    front = {t.number for t in study.best_trials}
    assert len((run / "pareto_front.csv").read_text().splitlines()) == len(front) + 1

    client = MlflowClient(uri)
    parent = client.get_run(rundir.read_state(run).parent_run_id or "")
    assert parent.info.status == "FINISHED"
    per_node: collections.Counter[str] = collections.Counter()
    children = {t.number: client.get_run(t.user_attrs["mlflow_run_id"]) for t in complete}
    first_start = min(child.info.start_time for child in children.values())
    for t in complete:
        child = children[t.number]
        tags = child.data.tags
        assert child.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["pareto"] == ("true" if t.number in front else "false")
        assert tags["references"] == "shipped" and tags["node.hostname"]
        assert child.data.metrics["seconds/references"] < 1.0  # read, not trained
        per_node[tags["node.ray_id"]] += 1
    assert len(per_node) == 2, per_node  # both nodes ran trials
    # no trial (re)wrote a reference: the bank's markers predate every trial's run
    assert all(m.stat().st_mtime * 1000 < first_start for m in markers)
    print(
        f"\nmulti-node: {len(per_node)} nodes, trials per node {sorted(per_node.values())}, "
        f"references trained {len(markers)} (each once), wall {seconds:.1f} s"
    )


USER_MODEL = '''
import importlib.util
import os
from pathlib import Path

from torch import nn


def build(facts, width=32):
    """An MLP defined outside the repository; it notes where the worker could import it from."""
    spec = importlib.util.find_spec("usernet")  # the copy Ray shipped onto the worker's path
    marker = Path({markers!r}) / f"{{os.getpid()}}.txt"
    marker.write_text(spec.origin if spec is not None else "not shipped")
    return nn.Sequential(
        nn.Flatten(), nn.Linear(facts.features, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, facts.num_classes),
    )
'''


@pytest.mark.slow
def test_a_user_model_outside_the_repository_goes_with_the_trials(
    tmp_path: Path, ray_tmp: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """model.name names a file in a temporary folder: the search ships it to every node
    through Ray's runtime environment (py_modules), and the trials train it."""
    import ray

    code_dir, markers = tmp_path / "usercode", tmp_path / "markers"
    code_dir.mkdir()
    markers.mkdir()
    (code_dir / "usernet.py").write_text(USER_MODEL.format(markers=str(markers)))
    space = tmp_path / "multinode.yaml"
    text = SPACE.format(n_trials=2, bank=tmp_path / "bank").replace(
        "model: {name: mlp, width: 32, norm: none}",
        f"model: {{name: {code_dir / 'usernet.py'}:build}}",
    )
    assert "usernet.py:build" in text
    space.write_text(text)
    cluster = start_cluster(2)
    try:
        run, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
        address = cluster.address  # type: ignore[attr-defined]
        argv = ["--space", str(space), "--output", str(run), "--tracking-uri", uri]
        code = main([*argv, "--address", address])
        out = capsys.readouterr().out
        assert code == 0, out
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[attr-defined]
        kill_processes_naming(ray_tmp)
    assert "user code   usernet.py shipped to every Ray node" in out
    study = optuna.load_study(study_name="multinode", storage=rundir.storage(run))
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2
    # every Ray worker that built the model had Ray's shipped copy on its path, not the folder
    seen = {p.read_text() for p in markers.glob("*.txt")}
    shipped = {s for s in seen if s.startswith(ray_tmp) and s != str(code_dir / "usernet.py")}
    assert shipped, seen
