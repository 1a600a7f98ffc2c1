"""A shared tracking server on a real PostgreSQL, and the Optuna study in the same server.

- ``postgresql://`` URIs get the installed driver (psycopg2 from the ``server`` extra) and work;
- a private PostgreSQL starts from the Debian binaries when none answers (checked here directly);
- end to end (slow): ``mlflow server`` on PostgreSQL with proxied artifacts, a small study with
  ``--tracking-uri http://127.0.0.1:<port> --storage postgresql://...``, everything read back
  through the server's REST API; the study resumed from another run directory (another machine);
- one driver per study across machines: a fresh heartbeat refuses a second driver, a stale one
  (a driver killed with kill -9) does not.
"""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.parse
from pathlib import Path

import optuna
import pytest
from fixtures_postgres import (
    MlflowServer,
    PrivatePostgres,
    database_exists,
    fresh_database,
    postgres_url,
)
from fixtures_ray import ray_tmp
from fixtures_space import TINY_STUDY_FIXED
from mlflow.tracking import MlflowClient

import search.tracking.uris as uris
from search.run import main
from search.study import rundir
from search.study.shared_study import DRIVER_ATTR, DriverClaim, StudyBusy, open_storage

__all__ = ["postgres_url", "ray_tmp"]  # fixtures, imported for their use below


def test_postgresql_uris_get_the_installed_driver(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = f"{postgres_url}/postgres"
    assert uris.resolve_tracking_uri(plain).startswith("postgresql+psycopg2://")
    assert uris.database_url(plain.replace("postgresql://", "postgres://")).startswith(
        "postgresql+psycopg2://"
    )
    named = plain.replace("postgresql://", "postgresql+psycopg2://")
    assert uris.database_url(named) == named
    assert uris.redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    with fresh_database(postgres_url) as url:
        # the URI as a user writes it, used by MLflow's own client (SQLAlchemy underneath)
        plain_db = url.replace("postgresql+psycopg2://", "postgresql://")
        client = MlflowClient(uris.resolve_tracking_uri(plain_db))
        experiment = client.create_experiment("pg-check")
        assert client.get_experiment(experiment).name == "pg-check"
    monkeypatch.setattr(uris, "_importable", lambda module: module == "psycopg")
    assert uris.database_url(plain) == plain  # psycopg 3 present: SQLAlchemy's own default
    monkeypatch.setattr(uris, "_importable", lambda module: False)
    with pytest.raises(uris.TrackingUnavailable, match=r"pip install -e '\.\[server\]'"):
        uris.check_tracking(plain)


def test_a_private_server_starts_from_the_debian_binaries() -> None:
    """The fallback of :func:`fixtures_postgres.postgres_url`, forced: as a non-root user, in a
    temporary folder, on a free port; a database is created and dropped, then the server stops."""
    server = PrivatePostgres()
    try:
        assert server.port != 5432
        with fresh_database(server.url) as url:
            name = url.rsplit("/", 1)[1]
            assert database_exists(server.url, name)
            storage = open_storage(url)
            optuna.create_study(storage=storage, study_name="private")
            assert storage.get_study_id_from_name("private") >= 0
        assert not database_exists(server.url, name)
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_one_driver_per_study_across_machines(postgres_url: str, tmp_path: Path) -> None:
    with fresh_database(postgres_url) as url:
        optuna.create_study(storage=open_storage(url), study_name="claimed")
        first = DriverClaim(url, "claimed", tmp_path / "a", interval_s=0.3, settle_s=0.2)
        first.acquire()
        second = DriverClaim(url, "claimed", tmp_path / "b", interval_s=0.3, settle_s=0.2)
        time.sleep(0.8)  # the first keeps beating: still fresh after more than its stale time
        with pytest.raises(StudyBusy, match=r"one driver per study") as refused:
            second.acquire()
        assert str(tmp_path / "a") in str(refused.value)
        # the first dies without releasing (kill -9): its heartbeat goes stale, then is taken over
        first._stop.set()
        assert first._thread is not None
        first._thread.join()
        time.sleep(1.4)
        second.acquire()
        held = json.loads(
            optuna.load_study(study_name="claimed", storage=url).user_attrs[DRIVER_ATTR]
        )
        assert held["token"] == second.token
        second.release()
        held = json.loads(
            optuna.load_study(study_name="claimed", storage=url).user_attrs[DRIVER_ATTR]
        )
        assert held["released"] is True
        third = DriverClaim(url, "claimed", tmp_path / "c", interval_s=0.3, settle_s=0.2)
        third.acquire()  # a released study is free at once
        third.release()


def _holder(url: str) -> dict:
    study = optuna.load_study(study_name="claimed", storage=open_storage(url))
    return dict(json.loads(study.user_attrs[DRIVER_ATTR]))


SPACE = (
    """
study:
  name: shared
  objectives: {{test_acc: maximize, attack_auc: minimize}}
  sampler: random
  seed: 0
  n_trials: 2
  max_concurrent: 2
  resources: {{cpus: 1, gpus: 0}}
  enqueue:
    - {{protect.operator: damp, protect.strength: 0.0, protect.split: 1}}
"""
    + TINY_STUDY_FIXED
    + """params:
  protect.operator: {{type: categorical, choices: [damp, anchor, noise]}}
  protect.strength: {{type: float, low: 0.0, high: 1.0}}
  protect.split: {{type: int, low: 1, high: 3}}
"""
)


@pytest.mark.slow
def test_study_on_a_postgresql_backed_tracking_server_and_optuna_storage(
    postgres_url: str, tmp_path: Path, ray_tmp: str, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "shared.yaml"
    space.write_text(SPACE.format(bank=tmp_path / "bank"))
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    with fresh_database(postgres_url) as mlflow_db, fresh_database(postgres_url) as optuna_db:
        server = MlflowServer(mlflow_db, artifacts, tmp_path / "mlflow-server.log")
        try:
            storage = optuna_db.replace("postgresql+psycopg2://", "postgresql://")  # as a user
            first = tmp_path / "machine-a" / "run"
            base = ["--space", str(space), "--tracking-uri", server.url, "--storage", storage]
            assert main([*base, "--output", str(first)]) == 0, capsys.readouterr()
            out = capsys.readouterr().out
            assert "(shared)" in out and "Pareto front" in out
            assert not (first / "study.db").exists()  # the study is in PostgreSQL
            assert rundir.read_state(first).storage == storage

            # a second new run of the same study is refused; it must resume
            assert main([*base, "--output", str(tmp_path / "again")]) == 2
            assert "already holds a study named 'shared'" in capsys.readouterr().err

            # another machine (another run directory) resumes it and extends it to 3 trials;
            # first while a live driver elsewhere holds the study: refused, nothing touched
            second = tmp_path / "machine-b" / "run"
            extend = [*base, "--resume", "--output", str(second), "--n-trials", "3"]
            elsewhere = DriverClaim(storage, "shared", Path("/elsewhere/run"), settle_s=0.1)
            elsewhere.acquire()
            try:
                assert main(extend) == 2
                err = capsys.readouterr().err
                assert "one driver per study" in err and "/elsewhere/run" in err
            finally:
                elsewhere.release()
            assert main(extend) == 0, capsys.readouterr()
            capsys.readouterr()
            assert rundir.read_state(second).parent_run_id == rundir.read_state(first).parent_run_id

            study = optuna.load_study(study_name="shared", storage=open_storage(storage))
            complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            assert len(complete) == 3, [
                (t.number, t.state, t.user_attrs.get("fail_reason")) for t in study.trials
            ]
            front = {t.number for t in study.best_trials}

            # everything read back through the server's REST API
            experiment = server.get(
                "/api/2.0/mlflow/experiments/get-by-name?experiment_name=shared"
            )["experiment"]
            assert experiment["artifact_location"].startswith("mlflow-artifacts:/")
            found = server.post(
                "/api/2.0/mlflow/runs/search",
                {"experiment_ids": [experiment["experiment_id"]], "max_results": 100},
            )["runs"]
            runs = {r["info"]["run_id"]: r for r in found}
            parent_id = rundir.read_state(first).parent_run_id
            parent = runs[parent_id]
            assert parent["info"]["status"] == "FINISHED"
            children = [
                r
                for r in runs.values()
                if _tags(r).get("mlflow.parentRunId") == parent_id and "trial_number" in _tags(r)
            ]
            assert sorted(int(_tags(c)["trial_number"]) for c in children) == [
                t.number for t in complete
            ]
            for child in children:
                tags = _tags(child)
                assert child["info"]["status"] == "FINISHED"
                assert tags["pareto"] == ("true" if int(tags["trial_number"]) in front else "false")
                assert tags["node.hostname"] and tags["node.ray_id"]
                assert tags["references"] == "shipped"
                names = _artifacts(server, child["info"]["run_id"])
                assert {"roc.png", "mask.json", "history.csv"} <= names
                png = _artifact(server, child["info"]["run_id"], "roc.png")
                assert png.startswith(b"\x89PNG")
            parent_files = _artifacts(server, parent_id)
            assert {"pareto_front.csv", "pareto_front.png", "space.yaml"} <= parent_files
            rows = list(
                csv.DictReader(
                    io.StringIO(_artifact(server, parent_id, "pareto_front.csv").decode())
                )
            )
            assert {int(r["trial"]) for r in rows} == front
            n_artifacts = len(parent_files) + sum(
                len(_artifacts(server, c["info"]["run_id"])) for c in children
            )
            print(f"\nread back through the server: {len(runs)} runs, {n_artifacts} artifacts")
            assert any(artifacts.rglob("roc.png"))  # proxied into --artifacts-destination
        finally:
            server.stop()
        assert server.process.poll() is not None


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _artifacts(server: MlflowServer, run_id: str) -> set[str]:
    query = urllib.parse.urlencode({"run_id": run_id})
    listed = server.get(f"/api/2.0/mlflow/artifacts/list?{query}")
    return {f["path"] for f in listed.get("files", [])}


def _artifact(server: MlflowServer, run_id: str, path: str) -> bytes:
    query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
    data = server.get(f"/get-artifact?{query}")
    assert isinstance(data, bytes)
    return data
