"""search.tracking against a temporary SQLite store: parent/child layout, artifacts, failures,
resume and the fail-fast checks of tracking URIs. No Ray, no training: results are hand-made."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_metric_name

from pptp.config import TrialConfig
from pptp.metrics import AttackMetrics, RocCurve
from pptp.train import EpochLog
from pptp.trial import TrialResult
from search import tracking
from search.tracking import (
    StudyTracker,
    TrackingUnavailable,
    TrialTracker,
    check_tracking,
    metric_key,
)

OBJECTIVES = [("test_acc", "maximize"), ("attack_auc", "minimize")]
SPACE: dict[str, Any] = {
    "study": {"name": "demo", "objectives": dict(OBJECTIVES), "n_trials": 4, "seed": 0},
    "fixed": {"data.name": "digits", "train": {"epochs": 3}},
    "params": {
        "protect.strength": {"type": "float", "low": 0.0, "high": 1.0},
        "protect.operator": {"type": "categorical", "choices": ["noise", "damp"]},
    },
}


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store per module: creating MLflow's tables takes seconds. Tests use their own
    study (experiment) names, so they do not see each other's runs."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def study(store: str, request: pytest.FixtureRequest, tmp_path: Path) -> StudyTracker:
    return StudyTracker(store, f"study-{request.node.name}", run_dir=tmp_path / "run")


def _roc(auc_like: float) -> AttackMetrics:
    fpr = np.array([0.0, 0.001, 0.01, 0.5, 1.0])
    tpr = np.array([0.0, 0.01 * auc_like, 0.05 * auc_like, 0.7, 1.0])
    roc = RocCurve(fpr=fpr, tpr=tpr, thresholds=np.array([np.inf, 3.0, 2.0, 1.0, 0.0]))
    return AttackMetrics(
        auc=auc_like, tpr_at_0_1pct_fpr=float(tpr[1]), tpr_at_1pct_fpr=float(tpr[2]),
        balanced_accuracy=0.6, roc=roc,
    )


def fake_result(*, test_acc: float = 0.9, auc: float = 0.6, epochs: int = 3) -> TrialResult:
    cfg = TrialConfig().replace(**{"protect.operator": "damp", "protect.strength": 0.5})
    history = tuple(
        EpochLog(e, loss=1.0 / (e + 1), train_acc=0.5 + 0.01 * e, test_acc=0.4 + 0.01 * e,
                 val_acc=None if e == 0 else 0.45, lr=0.1 / (e + 1), seconds=0.25)
        for e in range(epochs)
    )
    return TrialResult(
        config=cfg, test_acc=test_acc, train_acc=0.99,
        attacks={"loss": _roc(auc - 0.05), "lira": _roc(auc)},
        history=history, timings={"train": 1.5, "attack": 0.1},
        protected_groups=("stem", "layer1"), mask={"stem": True, "layer1": True, "head": False},
    )


def run_trial(study: StudyTracker, number: int, result: TrialResult) -> str:
    with TrialTracker(study.uri, study.experiment_id, study.parent_run_id,
                      trial_number=number) as trial:
        trial.log_params(result.config.to_flat())
        for log in result.history:
            trial.log_epoch(log)
        trial.log_result(result, objectives={"test_acc": result.test_acc,
                                             "attack_auc": result.metrics()["attack_auc"]})
        return trial.run_id


def start(study: StudyTracker, **kwargs: Any) -> str:
    return study.start(resolved_space=SPACE, space_path=Path("spaces/demo.yaml"),
                       space_sha256="0" * 64, **kwargs)


def artifact_names(client: MlflowClient, run_id: str) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id)}


def read_csv(client: MlflowClient, run_id: str, name: str, dst: Path) -> list[dict[str, str]]:
    path = client.download_artifacts(run_id, name, str(dst))
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test_acc", "test_acc"),
        ("attack_tpr@0.1%fpr", "attack_tpr_at_0.1pct_fpr"),
        ("tpr@1%fpr/lira_online", "tpr_at_1pct_fpr/lira_online"),
        ("auc/loss", "auc/loss"),
        ("seconds/train", "seconds/train"),
        ("a//b/", "a/b"),
        ("/lead/./x/../y", "lead/x/y"),
        ("weird:name!", "weird_name_"),
    ],
)
def test_metric_key_known_answers(name: str, expected: str) -> None:
    assert metric_key(name) == expected
    assert metric_key(expected) == expected  # idempotent: valid names pass unchanged
    _validate_metric_name(expected)  # MLflow's own check accepts it


def test_metric_key_covers_every_trial_metric() -> None:
    keys = [metric_key(k) for k in fake_result().metrics()]
    for key in keys:
        _validate_metric_name(key)
    assert len(set(keys)) == len(keys)  # no two metrics collapse onto one name
    assert len(metric_key("x" * 400)) == 250
    with pytest.raises(ValueError, match="nothing"):
        metric_key("//")


def test_default_and_resolved_uris(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = tracking.default_tracking_uri()
    assert default == f"sqlite:///{tracking.REPO_ROOT}/mlflow/mlflow.db"
    assert tracking.resolve_tracking_uri(None) == default
    assert tracking.resolve_tracking_uri("http://example.org:5000/") == "http://example.org:5000"
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri("sqlite:///sub/m.db") == f"sqlite:///{tmp_path}/sub/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.1:5000")
    assert tracking.resolve_tracking_uri(None) == "http://10.0.0.1:5000"
    assert tracking.resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


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
    assert run.data.tags["git_commit"] == tracking.git_commit()
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
            result.metrics()["attack_tpr@0.1%fpr"])
        assert metrics["auc/lira"] == pytest.approx(result.attacks["lira"].auc)
        assert artifact_names(client, child_id) >= {
            "roc.png", "roc.npz", "mask.json", "history.csv"}
        folder = tmp_path / child_id
        folder.mkdir()
        mask = json.loads(Path(client.download_artifacts(child_id, "mask.json", str(folder)))
                          .read_text())
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
        {"trial": i, "run_id": run_id, "pareto": i != 2, "test_acc": a, "attack_auc": u,
         "attack_tpr@0.1%fpr": 0.01, "protected_groups": "stem", "operator": "damp",
         "strength": 0.5, "train.lr": 0.05}
        for i, (run_id, (a, u)) in enumerate(zip(ids, scores, strict=True))
    ]
    rows.append({"trial": 3, "run_id": None, "pareto": False, "test_acc": 0.1,
                 "attack_auc": 0.5, "protected_groups": "", "operator": "none", "strength": 0})
    study.log_front(rows, objectives=OBJECTIVES)
    client = MlflowClient(study.uri)

    parent = study.parent_run_id
    assert artifact_names(client, parent) >= {
        "pareto_front.csv", "trials.csv", "pareto_front.png", "space.yaml"}
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


def test_staircase_bounds_the_dominated_region() -> None:
    # maximise x, minimise y, best x first: corners take the next x at the current y
    xs, ys = tracking._staircase([(0.9, 0.6), (0.8, 0.55), (0.5, 0.5)])
    assert list(zip(xs, ys, strict=True)) == [
        (0.9, 0.6), (0.8, 0.6), (0.8, 0.55), (0.5, 0.55), (0.5, 0.5)]


def test_exception_in_trial_marks_failed_and_propagates(study: StudyTracker) -> None:
    start(study)
    with pytest.raises(FloatingPointError, match="loss is NaN"), TrialTracker(
        study.uri, study.experiment_id, study.parent_run_id, trial_number=7
    ) as trial:
        trial.log_epoch(fake_result().history[0])
        raise FloatingPointError("loss is NaN at epoch 3\nmore detail")
    run = MlflowClient(study.uri).get_run(trial.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"] == "FloatingPointError: loss is NaN at epoch 3"
    assert run.data.tags["trial_number"] == "7"
    assert "epoch_loss" in run.data.metrics  # buffered epochs are written before the end


def test_fail_marks_failed_once(study: StudyTracker) -> None:
    start(study)
    with TrialTracker(study.uri, study.experiment_id, study.parent_run_id,
                      trial_number=0) as trial:
        trial.fail("out of memory " + "x" * 1000 + "\ntraceback")
    run = MlflowClient(study.uri).get_run(trial.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"].startswith("out of memory x")
    assert len(run.data.tags["fail_reason"]) == tracking.FAIL_REASON_CHARS


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


def test_resume_reuses_parent_and_keeps_params(study: StudyTracker, store: str,
                                               tmp_path: Path) -> None:
    parent = start(study)
    run_trial(study, 0, fake_result())
    study.finish("KILLED")

    again = StudyTracker(store, study.study_name, run_dir=tmp_path / "run")
    changed = {**SPACE, "fixed": {"data.name": "digits", "train": {"epochs": 5}}}
    assert again.start(resolved_space=changed, space_path=Path("spaces/demo.yaml"),
                       space_sha256="1" * 64, parent_run_id=parent) == parent
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
    with pytest.raises(tracking.ConfigError, match="belongs to experiment"):
        other.start(resolved_space=SPACE, space_path=Path("x.yaml"), space_sha256="0",
                    parent_run_id=parent)


def test_tracking_overhead_of_a_trial_is_small(study: StudyTracker) -> None:
    start(study)
    run_trial(study, 0, fake_result())  # warm-up: imports, plotting fonts, store session
    began = time.perf_counter()
    run_trial(study, 1, fake_result(epochs=20))
    # measured ~0.3-0.5 s on 2 loaded cores; the bound only catches a regression by an order
    assert time.perf_counter() - began < 5.0


# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_tracking_unreachable_server_fails_fast() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    began = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match="not reachable") as err:
        check_tracking(uri, timeout_s=3.0)
    assert time.perf_counter() - began < 5.0
    assert uri in str(err.value)
    assert "--tracking-uri" in str(err.value)
    assert isinstance(err.value, tracking.ConfigError)


def test_check_tracking_sql_server_unreachable() -> None:
    with pytest.raises(TrackingUnavailable, match="not reachable"):
        check_tracking(f"postgresql://u:p@127.0.0.1:{free_port()}/db", timeout_s=2.0)


def test_check_tracking_sqlite(tmp_path: Path) -> None:
    check_tracking(f"sqlite:///{tmp_path}/new/sub/mlflow.db")
    assert (tmp_path / "new" / "sub").is_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingUnavailable, match="cannot write") as err:
        check_tracking(f"sqlite:///{blocker}/mlflow.db")
    assert str(blocker) in str(err.value)
    with pytest.raises(TrackingUnavailable, match="in-memory"):
        check_tracking("sqlite:///:memory:")


@pytest.mark.parametrize("uri", ["ftp://host/x", "mlruns", "/abs/folder", "databricks"])
def test_check_tracking_unknown_scheme(uri: str) -> None:
    with pytest.raises(TrackingUnavailable, match="unsupported scheme"):
        check_tracking(uri)


def test_git_commit(tmp_path: Path) -> None:
    assert tracking.git_commit(tmp_path) == "unknown"
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-q", "-m", "x")
    head = git("rev-parse", "HEAD")
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("u")
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("b")
    assert tracking.git_commit(tmp_path) == f"{head}-dirty"


# --------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with one worker and no job runner (STACK-NOTES.md)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
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
                pytest.fail("mlflow server did not start:\n"
                            + (tmp_path / "server.log").read_text()[-3000:])
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
    study.log_front([{"trial": 0, "run_id": child, "pareto": True, "test_acc": 0.9,
                      "attack_auc": 0.6}], objectives=OBJECTIVES)
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
