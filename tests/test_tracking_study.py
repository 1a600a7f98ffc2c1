"""search.tracking.study_tracker against a temporary SQLite store: parent/child layout, artifacts,
the front, stale children and resume; and against a real tracking server (slow). No Ray, no
training: results are hand-made."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pytest
from fixtures_tracking import (
    OBJECTIVES,
    SPACE,
    artifact_names,
    fake_result,
    read_csv,
    run_trial,
    start,
    store,
    study,
)
from mlflow.tracking import MlflowClient

from pptp.errors import ConfigError
from search.tracking.names import metric_key
from search.tracking.store import git_commit
from search.tracking.study_tracker import StudyTracker
from search.tracking.trial_tracker import TrialTracker
from search.tracking.uris import check_tracking

__all__ = ["store", "study"]  # fixtures, imported for their use below


def test_parent_and_two_children_end_to_end(study: StudyTracker, tmp_path: Path) -> None:
    parent = start(study)
    results = [fake_result(test_acc=0.9, auc=0.6), fake_result(test_acc=0.8, auc=0.55, epochs=4)]
    children = [run_trial(study, i, r) for i, r in enumerate(results)]
    study.finish()
    client = MlflowClient(study.uri)

    experiment = client.get_experiment(study.experiment_id)
    assert experiment.name == study.study_name
    # artifacts sit beside the temporary database, never in the repository's mlflow/ folder
    db_dir = Path(study.uri.removeprefix("sqlite:///")).parent
    assert experiment.artifact_location == (db_dir / "artifacts" / study.study_name).as_uri()

    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.tags["pptp.kind"] == "study"
    assert run.data.tags["space_sha256"] == "0" * 64
    assert run.data.tags["git_commit"] == git_commit()
    assert run.data.tags["run_dir"] == str((tmp_path / "run").resolve())
    assert run.data.params["data.name"] == "digits"
    assert run.data.params["train.epochs"] == "3"
    assert run.data.params["protect.strength"].startswith("search ")
    assert json.loads(run.data.tags["study.n_trials"]) == 4
    space_file = client.download_artifacts(parent, "space.yaml", str(tmp_path))
    assert "protect.operator" in Path(space_file).read_text()

    assert {r.info.run_id for r in study.children()} == set(children)
    for child_id, result in zip(children, results, strict=True):
        child = client.get_run(child_id)
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent
        assert child.data.tags["pptp.kind"] == "trial"
        assert child.data.tags["operator"] == "damp"
        assert child.data.tags["protected_groups"] == "stem,layer1"
        for key, value in result.tags().items():  # queries, and which attack was the worst case
            assert child.data.tags[metric_key(key)] == value
        assert child.data.tags["attack_worst"] == "lira"
        flat = result.config.to_flat()
        assert child.data.params.keys() == {metric_key(k) for k in flat}
        assert child.data.params["protect.strength"] == "0.5"
        assert child.data.params["protect.groups"] == "None"
        history = client.get_metric_history(child_id, "epoch_loss")
        assert [(m.step, m.value) for m in history] == [
            (log.epoch, pytest.approx(log.loss)) for log in result.history
        ]
        val = client.get_metric_history(child_id, "epoch_val_acc")
        assert [m.step for m in val] == [log.epoch for log in result.history[1:]]  # None skipped
        metrics = child.data.metrics
        assert metrics["test_acc"] == pytest.approx(result.test_acc)
        assert metrics["attack_tpr_at_0.1pct_fpr"] == pytest.approx(
            result.metrics()["attack_tpr@0.1%fpr"]
        )
        assert metrics["auc/lira"] == pytest.approx(result.attacks["lira"].auc)
        assert artifact_names(client, child_id) >= {
            "roc.png",
            "roc.npz",
            "mask.json",
            "history.csv",
        }
        folder = tmp_path / child_id
        folder.mkdir()
        mask = json.loads(
            Path(client.download_artifacts(child_id, "mask.json", str(folder))).read_text()
        )
        assert mask == {"mask": result.mask, "protected_groups": ["stem", "layer1"]}
        rows = read_csv(client, child_id, "history.csv", folder)
        assert [int(r["epoch"]) for r in rows] == [log.epoch for log in result.history]
        assert rows[0]["val_acc"] == ""
        npz = Path(client.download_artifacts(child_id, "roc.npz", str(folder)))
        with np.load(npz, allow_pickle=False) as arrays:
            assert list(arrays["attacks"]) == ["loss", "lira"]
            np.testing.assert_array_equal(arrays["tpr/lira"], result.attacks["lira"].roc.tpr)
            assert np.isinf(arrays["thresholds/loss"][0])
        png = Path(client.download_artifacts(child_id, "roc.png", str(folder)))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_log_front_writes_tables_plot_and_tags(study: StudyTracker, tmp_path: Path) -> None:
    start(study)
    scores = [(0.9, 0.6), (0.8, 0.55), (0.7, 0.7)]  # trial 2 is dominated by both others
    ids = [run_trial(study, i, fake_result(test_acc=a, auc=u)) for i, (a, u) in enumerate(scores)]
    rows = [
        {
            "trial": i,
            "run_id": run_id,
            "pareto": i != 2,
            "test_acc": a,
            "attack_auc": u,
            "attack_tpr@0.1%fpr": 0.01,
            "protected_groups": "stem",
            "operator": "damp",
            "strength": 0.5,
            "train.lr": 0.05,
        }
        for i, (run_id, (a, u)) in enumerate(zip(ids, scores, strict=True))
    ]
    rows.append(
        {
            "trial": 3,
            "run_id": None,
            "pareto": False,
            "test_acc": 0.1,
            "attack_auc": 0.5,
            "protected_groups": "",
            "operator": "none",
            "strength": 0,
        }
    )
    study.log_front(rows, objectives=OBJECTIVES)
    client = MlflowClient(study.uri)

    parent = study.parent_run_id
    assert artifact_names(client, parent) >= {
        "pareto_front.csv",
        "trials.csv",
        "pareto_front.png",
        "space.yaml",
    }
    front = read_csv(client, parent, "pareto_front.csv", tmp_path)
    assert [r["trial"] for r in front] == ["0", "1"]  # best test_acc first
    header = list(front[0])
    assert header[:5] == ["trial", "run_id", "pareto", "test_acc", "attack_auc"]
    assert "train.lr" in header
    trials = read_csv(client, parent, "trials.csv", tmp_path)
    assert [r["trial"] for r in trials] == ["0", "1", "2", "3"]
    assert trials[3]["run_id"] == ""
    png = Path(client.download_artifacts(parent, "pareto_front.png", str(tmp_path)))
    assert png.read_bytes()[:4] == b"\x89PNG"

    assert [client.get_run(i).data.tags["pareto"] for i in ids] == ["true", "true", "false"]
    metrics = client.get_run(parent).data.metrics
    assert metrics["n_trials"] == 4
    assert metrics["n_pareto"] == 2
    assert metrics["best_test_acc"] == pytest.approx(0.9)
    assert metrics["best_attack_auc"] == pytest.approx(0.5)

    # a later call (e.g. after more trials) re-tags the children whose status changed
    rows[2]["pareto"], rows[1]["pareto"] = True, False
    study.log_front(rows, objectives=OBJECTIVES)
    assert [client.get_run(i).data.tags["pareto"] for i in ids] == ["true", "false", "true"]
    assert [m.step for m in client.get_metric_history(parent, "n_pareto")] == [4, 4]


def test_mark_stale_children_failed(study: StudyTracker) -> None:
    start(study)
    done = run_trial(study, 0, fake_result())
    stale = TrialTracker(study.uri, study.experiment_id, study.parent_run_id, trial_number=1)
    stale.__enter__()  # the trial's process dies here: the run is left RUNNING
    client = MlflowClient(study.uri)
    assert client.get_run(stale.run_id).info.status == "RUNNING"

    assert study.mark_stale_children_failed() == 1
    run = client.get_run(stale.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"] == "driver stopped before the trial finished"
    assert client.get_run(done).info.status == "FINISHED"
    assert study.mark_stale_children_failed() == 0


def test_resume_reuses_parent_and_keeps_params(
    study: StudyTracker, store: str, tmp_path: Path
) -> None:
    parent = start(study)
    run_trial(study, 0, fake_result())
    study.finish("KILLED")

    again = StudyTracker(store, study.study_name, run_dir=tmp_path / "run")
    changed = {**SPACE, "fixed": {"data.name": "digits", "train": {"epochs": 5}}}
    assert (
        again.start(
            resolved_space=changed,
            space_path=Path("spaces/demo.yaml"),
            space_sha256="1" * 64,
            parent_run_id=parent,
        )
        == parent
    )
    assert again.experiment_id == study.experiment_id
    client = MlflowClient(store)
    run = client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.data.params["train.epochs"] == "3"  # immutable: the first value stays
    assert run.data.tags["changed_param.train.epochs"] == "5"
    assert run.data.tags["previous_space_sha256"] == "0" * 64
    assert run.data.tags["space_sha256"] == "1" * 64
    run_trial(again, 1, fake_result())
    again.finish()
    assert len(again.children()) == 2
    runs = client.search_runs([study.experiment_id], "tags.`pptp.kind` = 'study'")
    assert [r.info.run_id for r in runs] == [parent]

    other = StudyTracker(store, "another-study", run_dir=tmp_path)
    with pytest.raises(ConfigError, match="belongs to experiment"):
        other.start(
            resolved_space=SPACE, space_path=Path("x.yaml"), space_sha256="0", parent_run_id=parent
        )


def test_tracking_overhead_of_a_trial_is_small(study: StudyTracker) -> None:
    start(study)
    run_trial(study, 0, fake_result())  # warm-up: imports, plotting fonts, store session
    began = time.perf_counter()
    run_trial(study, 1, fake_result(epochs=20))
    # measured ~0.3-0.5 s on 2 loaded cores; the bound only catches a regression by an order
    assert time.perf_counter() - began < 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with one worker and no job runner (docs/stack-notes.md)."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(
                    "mlflow server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:]
                )
            time.sleep(0.25)
        yield uri
    finally:
        server.terminate()  # by its PID, never by name
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


@pytest.mark.slow
def test_against_a_tracking_server(mlflow_server: str, tmp_path: Path) -> None:
    check_tracking(mlflow_server, timeout_s=5.0)
    study = StudyTracker(mlflow_server, "served", run_dir=tmp_path)
    start(study)
    child = run_trial(study, 0, fake_result())
    study.log_front(
        [{"trial": 0, "run_id": child, "pareto": True, "test_acc": 0.9, "attack_auc": 0.6}],
        objectives=OBJECTIVES,
    )
    study.finish()
    client = MlflowClient(mlflow_server)
    run = client.get_run(child)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == study.parent_run_id
    assert run.data.tags["pareto"] == "true"
    assert "roc.png" in artifact_names(client, child)
    # the server serves artifacts to the UI
    url = f"{mlflow_server}/get-artifact?path=mask.json&run_uuid={child}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert json.load(io.TextIOWrapper(response))["protected_groups"] == ["stem", "layer1"]
