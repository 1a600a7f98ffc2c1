"""search.tracking.store: metric names MLflow accepts, experiments got or created, batched writes,
the git commit."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest
from fixtures_tracking import fake_result, store
from mlflow.tracking import MlflowClient

from search.tracking.names import metric_key
from search.tracking.store import experiment_id, git_commit, log_metrics, log_params, set_tags

__all__ = ["store"]  # fixtures, imported for their use below


@pytest.fixture(scope="module")
def run_id(store: str) -> str:
    """A run to write to: MLflow's own validation of names happens on these writes."""
    client = MlflowClient(store)
    return client.create_run(experiment_id(client, "names", uri=store)).info.run_id


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
def test_metric_key_known_answers(name: str, expected: str, store: str, run_id: str) -> None:
    assert metric_key(name) == expected
    assert metric_key(expected) == expected  # idempotent: valid names pass unchanged
    MlflowClient(store).log_metric(run_id, expected, 1.0)  # MLflow's own check accepts it


def test_metric_key_covers_every_trial_metric(store: str, run_id: str) -> None:
    keys = [metric_key(k) for k in fake_result().metrics()]
    log_metrics(MlflowClient(store), run_id, dict.fromkeys(keys, 0.5))  # MLflow accepts them
    assert len(set(keys)) == len(keys)  # no two metrics collapse onto one name
    assert len(metric_key("x" * 400)) == 250
    with pytest.raises(ValueError, match="nothing"):
        metric_key("//")


def test_experiment_get_create_restore(store: str) -> None:
    client = MlflowClient(store)
    created = experiment_id(client, "exp-a", uri=store, tags={"pptp.study": "a"})
    assert experiment_id(client, "exp-a", uri=store) == created  # got, not created again
    experiment = client.get_experiment(created)
    assert experiment.tags["pptp.study"] == "a"
    db_dir = Path(store.removeprefix("sqlite:///")).parent
    assert experiment.artifact_location == (db_dir / "artifacts" / "exp-a").as_uri()
    client.delete_experiment(created)
    assert experiment_id(client, "exp-a", uri=store) == created
    assert client.get_experiment(created).lifecycle_stage == "active"


def test_batched_writes_beyond_one_batch(store: str, run_id: str) -> None:
    """More params and tags than one log_batch takes (100), values cut to MLflow's limits."""
    client = MlflowClient(store)
    log_params(
        client, run_id, {f"p/{i}": i for i in range(250)} | {"long": "x" * 9000, "none": None}
    )
    set_tags(client, run_id, {f"t.{i}": i for i in range(150)})
    log_metrics(client, run_id, {"batched/tpr@1%fpr": 0.25}, step=3)
    data = client.get_run(run_id).data
    assert data.params["p/249"] == "249" and data.params["none"] == "None"
    assert 0 < len(data.params["long"]) < 9000
    assert data.tags["t.149"] == "149"
    history = client.get_metric_history(run_id, "batched/tpr_at_1pct_fpr")
    assert [(m.step, m.value) for m in history] == [(3, 0.25)]


def test_git_commit(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-q", "-m", "x")
    head = git("rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("u")
    assert git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path) == f"{head}-dirty"


def test_key_length_agrees_with_mlflow() -> None:
    """search.tracking.names keeps MLflow's key limit without importing MLflow."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    from search.tracking.names import MAX_KEY_LENGTH

    assert MAX_KEY_LENGTH == MAX_ENTITY_KEY_LENGTH
    assert len(metric_key("m" * 400)) == MAX_ENTITY_KEY_LENGTH
