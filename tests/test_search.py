"""The search end to end: a tiny study through Ray Tune, Optuna and MLflow, then extended; bad
input refused before anything starts.

The end-to-end test starts Ray and trains real (tiny) models, so it takes tens of seconds: marked
slow, and it still runs in CI. Kill -9 and resume, Ctrl-C, two drivers and the other faults are
in the fault suite (tests/test_faults.py).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest
from fixtures_ray import ray_tmp
from mlflow.tracking import MlflowClient

from search.run import main
from search.study import records, rundir

__all__ = ["ray_tmp"]  # the fixture, imported for its use below

SPACE = """
study:
  name: tiny
  objectives: {{test_acc: maximize, attack_auc: minimize}}
  sampler: {sampler}
  seed: 0
  n_trials: {n_trials}
  max_concurrent: 2
  resources: {{cpus: 1, gpus: 0}}
  constraints:
    - {{metric: test_acc, min: 0.05}}
  enqueue:
    - {{protect.operator: damp, protect.strength: 0.0, protect.split: 1}}
fixed:
  data: {{name: digits, pool_size: 200, test_size: 100, val_size: 0}}
  model: {{name: mlp, width: 32, norm: none}}
  # learns above chance in a few epochs (a model at chance fails its trial: pptp/chance.py)
  train: {{epochs: {epochs}, batch_size: 10, lr: 0.1, augment: false, warmup_epochs: 0,
          device: cpu}}
  attack: {{attacks: [loss, lira_offline], n_references: 2, bank_dir: {bank}}}
params:
  protect.operator: {{type: categorical, choices: [damp, anchor, noise]}}
  protect.strength: {{type: float, low: 0.0, high: 1.0}}
  protect.split: {{type: int, low: 1, high: 3}}
"""


def write_space(folder: Path, *, n_trials: int, epochs: int = 10, sampler: str = "random") -> Path:
    path = folder / "tiny.yaml"
    path.write_text(
        SPACE.format(n_trials=n_trials, epochs=epochs, sampler=sampler, bank=folder / "bank")
    )
    return path


def _args(space: Path, run: Path, store: Path, *extra: str) -> list[str]:
    return [
        "--space",
        str(space),
        "--output",
        str(run),
        "--tracking-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        *extra,
    ]


@pytest.mark.slow
def test_two_trial_study_end_to_end_then_extended(
    tmp_path: Path,
    ray_tmp: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray's workers inherit OMP_NUM_THREADS=2 (torch would run 2 threads in a 1-CPU trial, as
    # measured); trials and reference tasks still train with their 1 CPU (pptp/threads.py)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    space, run, store = write_space(tmp_path, n_trials=2), tmp_path / "run", tmp_path / "store"
    assert main(_args(space, run, store)) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "ui --run" in out and "report.html" in out

    study = optuna.load_study(study_name="tiny", storage=rundir.storage(run))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2
    assert complete[0].params["protect.strength"] == 0.0  # the enqueued baseline ran first
    assert study.metric_names == ["test_acc", "attack_auc"]  # named axes (optuna-dashboard)
    for t in complete:
        assert t.user_attrs["mlflow_run_id"] and "test_acc>=0.05" in str(t.system_attrs)

    # MLflow: one parent, one child per trial with params, curves, metrics and artifacts
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    state = rundir.read_state(run)
    parent = client.get_run(state.parent_run_id or "")
    assert parent.info.status == "FINISHED"
    parent_files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.csv", "pareto_front.png", "trials.csv", "space.yaml"} <= parent_files
    assert parent.data.tags["space_sha256"] and parent.data.tags["git_commit"]
    front = {t.number for t in study.best_trials}
    for t in complete:
        child = client.get_run(t.user_attrs["mlflow_run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        # what it trained with: the undefended (strength 0) has no operator in its params
        acts = t.params["protect.strength"] > 0
        assert child.data.params["protect.operator"] == (
            t.params["protect.operator"] if acts else "none"
        )
        assert child.data.tags["operator"] == t.user_attrs["operator"]
        assert len(client.get_metric_history(child.info.run_id, "epoch_loss")) == 10
        assert child.data.tags["pareto"] == ("true" if t.number in front else "false")
        files = {f.path for f in client.list_artifacts(child.info.run_id)}
        assert {"roc.png", "mask.json", "history.csv"} <= files
        assert {"exposed.csv", "class_tpr.csv", "exposed.png"} <= files  # who leaks (images)
        # named by what it tried: "t00 undefended", "t01 anchor s=0.54 fc1+fc2", ...
        assert child.info.run_name.startswith(f"t{t.number:02d} "), child.info.run_name
        assert child.data.tags["torch.threads"] == "1"
        assert child.data.metrics["extras/torch_threads"] == 1.0
    assert complete[0].number == 0
    assert client.get_run(complete[0].user_attrs["mlflow_run_id"]).info.run_name == "t00 undefended"
    assert (run / "report.html").stat().st_size > 100_000  # plotly inlined: works offline
    assert "report.html" in {f.path for f in client.list_artifacts(parent.info.run_id)}
    csv_front = (run / "pareto_front.csv").read_text().splitlines()[1:]
    assert len(csv_front) == len(front)  # our front is Optuna's best_trials
    kept = records.read_all(run)  # the run directory's own record of every trial
    assert sorted(kept) == [t.number for t in complete]
    assert all(not r.pending and r.spool.run_id for r in kept.values())
    assert not (run / "driver.json").exists()  # the lock was released
    refs = sorted((tmp_path / "bank").rglob("ref-*.json"))
    assert len(refs) == 2 and all(json.loads(r.read_text())["torch_threads"] == 1 for r in refs)

    # a finished study is extended with --resume --n-trials
    assert main(_args(space, run, store, "--resume", "--n-trials", "3")) == 0
    study = optuna.load_study(study_name="tiny", storage=rundir.storage(run))
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3


def test_bad_space_exits_2_without_traceback_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent("""
        study: {name: bad, sampler: annealing}
        fixed: {data.name: digits}
    """)
    )
    run = tmp_path / "run"
    assert main(["--space", str(bad), "--output", str(run)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "study.sampler" in err and "Traceback" not in err
    assert not run.exists()


def test_unreachable_tracking_server_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space, run = write_space(tmp_path, n_trials=1), tmp_path / "run"
    code = main(
        ["--space", str(space), "--output", str(run), "--tracking-uri", "http://127.0.0.1:9"]
    )
    assert code == 2
    assert "127.0.0.1:9" in capsys.readouterr().err
    assert not run.exists() and not (tmp_path / "bank").exists()


def test_impossible_resources_and_missing_dataset_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path, n_trials=1)
    greedy = tmp_path / "greedy.yaml"
    greedy.write_text(space.read_text().replace("{cpus: 1, gpus: 0}", "{cpus: 1, gpus: 4}"))
    store = tmp_path / "store"
    assert main(_args(greedy, tmp_path / "r1", store)) == 2
    assert "study.resources.gpus" in capsys.readouterr().err
    offline = tmp_path / "cifar.yaml"
    offline.write_text(
        space.read_text().replace(
            "name: digits, pool_size: 200",
            f"name: cifar10, data_dir: {tmp_path / 'nodata'}, pool_size: 200",
        )
    )
    assert main(_args(offline, tmp_path / "r2", store)) == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "Traceback" not in err


def test_resources_are_checked_before_any_download(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study this machine cannot run is refused before its dataset is looked for (so a CPU-only
    user is never made to download CIFAR-10 first), and leaves no run directory."""
    import pptp.data

    looked: list[object] = []
    monkeypatch.setattr(pptp.data, "check_data", lambda data: looked.append(data))
    space = write_space(tmp_path, n_trials=1)
    greedy = tmp_path / "greedy-cifar.yaml"
    greedy.write_text(
        space.read_text()
        .replace("{cpus: 1, gpus: 0}", "{cpus: 1, gpus: 4}")
        .replace("name: digits, pool_size: 200", "name: cifar10, download: true, pool_size: 200")
    )
    assert main(_args(greedy, tmp_path / "r", tmp_path / "store")) == 2
    assert "study.resources.gpus" in capsys.readouterr().err
    assert looked == [] and not (tmp_path / "r").exists()
