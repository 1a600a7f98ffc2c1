"""The fault suite: each fault injected into a real, tiny study; the invariants after.

Every study is ``search/run.py`` in a subprocess on 8x8 digits (an MLP, 5 epochs, 2 reference
models shared through one bank) with its own ``--output`` and MLflow store under the test's
temporary folder. Faults inside trials are injected by ``tests/faultinject`` (``PPTP_TEST_FAULT``
and a ``sitecustomize`` that wraps the trainable as it is imported), which the Ray workers
inherit from the driver; the product code has no branch for them. After each fault
:func:`fault_checks.check_run` checks: every finished trial is in Optuna and MLflow exactly once
with the same metrics; the front CSV equals the one recomputed from Optuna; the enqueued baseline
completed; the bank holds no partial entry; nothing is left RUNNING.

Each test adds rows to the fault table (``$PPTP_FAULT_TABLE``, default
``<pytest's basetemp>/fault_table.jsonl``); the module prints it at the end and writes
``fault_table.txt`` beside it::

    PPTP_FAULT_TABLE=/tmp/faults.jsonl .venv/bin/python -m pytest -m faults tests/test_faults.py -s

Marked ``faults`` (run them alone with ``-m faults``) and ``slow``; they run in the normal suite
and CI too. Ray processes a test started are stopped by PID (fixtures_ray).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from fault_checks import (
    Row,
    add_row,
    check_run,
    format_rows,
    partial_bank_entries,
    row_from,
    table_path,
)
from faultinject.pptp_faults import fault_env
from fixtures_ray import kill_processes_naming, ray_tmp, run_driver, start_driver, wait_for
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from search.study import rundir

__all__ = ["ray_tmp"]  # the fixture, imported for its use below

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SPACE = """
study:
  name: faults
  objectives: {{test_acc: maximize, attack_auc: minimize}}
  sampler: random
  seed: 0
  n_trials: {n_trials}
  max_concurrent: {max_concurrent}
  resources: {{cpus: 1, gpus: 0}}
  enqueue:
    - {{protect.operator: damp, protect.strength: 0.0, protect.split: 1}}
{enqueue}
fixed:
  data: {{name: digits, pool_size: 200, test_size: 100, val_size: 0}}
  model: {{name: mlp, width: 64, norm: none}}
  train: {{epochs: 5, batch_size: 10, lr: {lr}, augment: false, warmup_epochs: 0, device: cpu}}
  attack: {{attacks: [loss, lira_offline], n_references: 2, bank_dir: {bank}}}
params:
  protect.operator: {{type: categorical, choices: [damp, anchor]}}
  protect.strength: {{type: float, low: 0.0, high: 0.3}}
  protect.split: {{type: int, low: 1, high: 3}}
"""


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One reference bank for the module: the references are trained by the first study."""
    return tmp_path_factory.mktemp("bank")


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = table_path(tmp_path_factory.getbasetemp())
    yield path
    if path.exists():
        text = format_rows(path)
        path.with_suffix(".txt").write_text(text + "\n")
        print(f"\nfault table ({path}):\n{text}")


def write_space(
    folder: Path,
    bank: Path,
    *,
    n_trials: int,
    max_concurrent: int = 2,
    lr: str = "0.1",
    enqueue: tuple[str, ...] = (),
) -> Path:
    path = folder / "faults.yaml"
    lines = "\n".join(f"    - {{{e}}}" for e in enqueue)
    path.write_text(
        SPACE.format(
            n_trials=n_trials, max_concurrent=max_concurrent, lr=lr, bank=bank, enqueue=lines
        )
    )
    return path


def args(space: Path, run: Path, store: str, *extra: str) -> list[str]:
    return ["--space", str(space), "--output", str(run), "--tracking-uri", store, *extra]


def load(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="faults", storage=rundir.storage(run))


def trials_in(run: Path, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
    if not (run / "study.db").exists():
        return []
    try:
        return load(run).get_trials(deepcopy=False, states=states or None)
    except (KeyError, ValueError):  # the study row is not written yet
        return []
    except SQLAlchemyError:  # the driver is creating the schema this very moment: look again
        return []


def test_trial_faults_are_recorded_and_the_study_goes_on(
    tmp_path: Path, ray_tmp: str, bank: Path, table: Path
) -> None:
    """Exception, NaN loss, NaN metric, out of memory, a SIGKILLed worker, max_concurrent 10000."""
    mild = "protect.operator: damp, protect.strength: 0.1, protect.split: 1"
    space = write_space(tmp_path, bank, n_trials=6, max_concurrent=10000, enqueue=(mild,) * 5)
    run, store = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    faults = "raise@1;nan_loss@2;nan_metric@3;oom@4;kill@5"
    log = tmp_path / "driver.log"
    code = run_driver(args(space, run, store), log, env=fault_env(faults))
    out = log.read_text()
    assert code == 0, out[-3000:]
    assert "study.max_concurrent = 10000 capped to 2" in out
    outcome = check_run(run, store, bank_dir=bank)
    assert outcome.ok, outcome.problems
    trials = {t.number: t for t in load(run).trials}
    assert trials[0].state == TrialState.COMPLETE
    expected = {
        1: "RuntimeError: injected fault",
        2: "TrainingDiverged: training loss is",
        3: "objective attack_auc is nan",
        4: "out of memory (OutOfMemoryError): CUDA out of memory",
        5: "worker process died (ActorDiedError",
    }
    for number, reason in expected.items():
        assert trials[number].state == TrialState.FAIL
        assert trials[number].user_attrs["fail_reason"].startswith(reason), number
    client = MlflowClient(store)
    killed = client.get_run(trials[5].user_attrs.get("mlflow_run_id") or _run_of(run, 5))
    assert killed.info.status == "FAILED"
    assert killed.data.tags["fail_reason"].startswith("worker process died")
    assert "traceback.txt" in {f.path for f in client.list_artifacts(killed.info.run_id)}
    # never more trials RUNNING at once than the 2 CPUs hold
    spans = [(t.datetime_start, t.datetime_complete) for t in trials.values()]
    assert max(sum(s <= start < e for s, e in spans) for start, _ in spans) <= 2
    for fault in (
        "exception in a trial",
        "NaN loss",
        "NaN metric",
        "out of memory",
        "worker SIGKILL",
    ):
        add_row(table, row_from(fault, outcome))
    add_row(table, row_from("max_concurrent: 10000 (capped to 2)", outcome))


def _run_of(run: Path, number: int) -> str:
    from search.study import records

    return records.read_all(run)[number].spool.run_id or ""


def test_diverging_reference_stops_before_any_trial(
    tmp_path: Path, ray_tmp: str, bank: Path, table: Path
) -> None:
    space = write_space(tmp_path, bank, n_trials=3, lr="1.0e+6")
    run, store = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "driver.log"
    code = run_driver(args(space, run, store), log)
    out = log.read_text()
    assert code == 2, out[-3000:]
    assert "reference models cannot be trained: TrainingDiverged" in out
    assert "Traceback" not in out
    # a failed start leaves nothing behind: no run directory, the parent run deleted (kept by
    # MLflow, FAILED with its reason, out of the UI), nothing RUNNING
    assert not run.exists() and "nothing kept: no trial had started" in out
    client = MlflowClient(store)
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)],
        run_view_type=ViewType.ALL,
    )
    assert parent.info.lifecycle_stage == "deleted" and parent.info.status == "FAILED"
    assert "TrainingDiverged" in parent.data.tags["fail_reason"]
    running = [r for r in [parent] if r.info.status == "RUNNING"]
    assert not running and not partial_bank_entries(bank)
    add_row(table, Row("diverging reference model (exit 2)", 1, 0, 0, 0, 0, len(running)))


def test_kill_9_resume_two_drivers_duplicates_and_ctrl_c(
    tmp_path: Path, ray_tmp: str, bank: Path, table: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path, bank, n_trials=4)
    run, store = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    host = socket.gethostname()

    # driver A: the enqueued baseline (trial 0) runs slowly; kill -9 while it runs
    a = start_driver(
        args(space, run, store), tmp_path / "a.log", env=fault_env("slow@0=8")
    )
    try:
        wait_for(
            lambda: (
                bool(trials_in(run, TrialState.COMPLETE))
                and any(t.number == 0 for t in trials_in(run, TrialState.RUNNING))
            ),
            timeout=150,
            what="a finished trial while the baseline runs",
            alive=a,
        )
        # a second driver, and a --resume, on the live run directory: refused at once
        start = time.monotonic()
        others = {
            name: start_driver(args(space, run, store, *extra), tmp_path / f"{name}.log")
            for extra, name in (((), "second driver"), (("--resume",), "resume of a live run"))
        }
        for name, other in others.items():
            code = other.wait(timeout=60)
            said = (tmp_path / f"{name}.log").read_text()
            assert code == 2, said[-2000:]
            assert f"PID {a.pid} on host {host}" in said, said[-2000:]
            add_row(table, Row(name, 1, 1, 0, 0, 0, 0))  # the study's outcome: checked below
        assert time.monotonic() - start < 30
        assert any(t.number == 0 for t in trials_in(run, TrialState.RUNNING))
        before = {t.number: tuple(t.values) for t in trials_in(run, TrialState.COMPLETE)}
        os.killpg(a.pid, signal.SIGKILL)
        a.wait()
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
        kill_processes_naming(ray_tmp)

    # driver D resumes (taking over the stale lock) with many trials to go; Ctrl-C stops it
    d = start_driver(
        args(space, run, store, "--resume", "--n-trials", "40"),
        tmp_path / "d.log",
        env=fault_env("slow@*=1"),
    )
    try:
        wait_for(
            lambda: " started: " in (tmp_path / "d.log").read_text(),
            timeout=120,
            what="a resumed trial to start",
            alive=d,
        )
        sent = time.monotonic()
        os.kill(d.pid, signal.SIGINT)
        code = d.wait(timeout=60)
        stopped_in = time.monotonic() - sent
    finally:
        if d.poll() is None:
            os.killpg(d.pid, signal.SIGKILL)
            d.wait()
        kill_processes_naming(ray_tmp)
    said = (tmp_path / "d.log").read_text()
    assert code == 130, said[-3000:]
    assert "took over" in said and f"PID {a.pid}" in said
    assert "Resume with:" in said and "--resume" in said
    assert stopped_in < 30, stopped_in
    assert not trials_in(run, TrialState.RUNNING)
    client = MlflowClient(store)
    experiment = rundir.read_state(run).experiment_id or ""
    assert not [r for r in client.search_runs([experiment]) if r.info.status == "RUNNING"]

    # driver D2 resumes; SIGTERM to its whole process group (systemd, Slurm: Ray's own
    # processes get it too) stops it like Ctrl-C, exit 143
    d2 = start_driver(
        args(space, run, store, "--resume", "--n-trials", "40"),
        tmp_path / "d2.log",
        env=fault_env("slow@*=1"),
    )
    try:
        wait_for(
            lambda: " started: " in (tmp_path / "d2.log").read_text(),
            timeout=120,
            what="a resumed trial to start",
            alive=d2,
        )
        sent = time.monotonic()
        os.killpg(d2.pid, signal.SIGTERM)
        code = d2.wait(timeout=60)
        sigterm_in = time.monotonic() - sent
    finally:
        if d2.poll() is None:
            os.killpg(d2.pid, signal.SIGKILL)
            d2.wait()
        left = kill_processes_naming(ray_tmp)
    said = (tmp_path / "d2.log").read_text()
    assert code == 143, said[-3000:]
    assert "interrupted (SIGTERM)" in said and "Resume with:" in said, said[-3000:]
    assert sigterm_in < 30 and not left, (sigterm_in, left)
    print(f"SIGTERM to the driver's process group: exit 143 after {sigterm_in:.1f} s")
    assert not trials_in(run, TrialState.RUNNING)
    assert not [r for r in client.search_runs([experiment]) if r.info.status == "RUNNING"]

    # the user enqueues a config the study already finished: it must not be trained again;
    # driver E completes the study (extended by one trial for it)
    finished = min(before)
    load(run).enqueue_trial(dict(load(run).trials[finished].params))
    code = run_driver(args(space, run, store, "--resume", "--n-trials", "5"), tmp_path / "e.log")
    assert code == 0, (tmp_path / "e.log").read_text()[-3000:]
    outcome = check_run(run, store, bank_dir=bank, before=before)
    assert outcome.ok, outcome.problems
    trials = load(run).trials
    duplicates = [t for t in trials if t.user_attrs.get("duplicate_of") == finished]
    assert duplicates and all(t.values == trials[finished].values for t in duplicates)
    requeued = [t for t in trials if t.user_attrs.get(rundir.REQUEUED_FROM) is not None]
    assert requeued and any(t.state == TrialState.COMPLETE for t in requeued)
    for fault in (
        "driver kill -9 + resume (baseline running)",
        "stale lock after kill -9",
        "duplicate suggestion after resume",
        "Ctrl-C (40 trials pending)",
        "SIGTERM to the process group (exit 143)",
    ):
        add_row(table, row_from(fault, outcome))
    damaged_study_db(space, run, store, table, capsys, before=before)


def damaged_study_db(
    space: Path,
    run: Path,
    store: str,
    table: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    before: dict[int, tuple[float, ...]],
) -> None:
    """On a finished run: ``study.db`` damaged four ways, each refused by ``--resume`` in one line
    naming the last good copy, exit 2, nothing written; the documented ``cp`` restores it."""
    from test_study_backup import _damage

    from search.run import main
    from search.study.backup import BACKUP, STUDY_DB

    db, copy = run / STUDY_DB, run / BACKUP
    assert copy.is_file()  # the driver copied it after every ended trial
    good = db.read_bytes()
    for how in ("truncated to half", "garbage in the middle", "empty", "missing"):
        _damage(db, how)
        listing = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
        code = main(args(space, run, store, "--resume"))
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err[-2000:]
        assert f"cp {copy} {db}" in err and "Traceback" not in err, err
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == listing  # nothing written
        db.write_bytes(good)
        add_row(table, Row(f"study.db {how}, then --resume (exit 2)", 1, 0, 0, 0, 0, 0))
    shutil.copy(copy, db)  # the documented restore
    code = main(args(space, run, store, "--resume"))
    capsys.readouterr()
    assert code == 0
    outcome = check_run(run, store, before=before)
    assert outcome.ok, outcome.problems
    add_row(table, row_from("study.db restored from its copy, then --resume", outcome))
    result_not_told(space, run, store, table, capsys, before=before)


def result_not_told(
    space: Path,
    run: Path,
    store: str,
    table: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    before: dict[int, tuple[float, ...]],
) -> None:
    """The driver stopped after two trials ended in MLflow (runs FINISHED) but before Optuna was
    told (set back to RUNNING in study.db, as a lost GCS or a full disk leaves them): the one
    whose record the driver wrote is told from it on --resume; the one without a record is
    interrupted and its MLflow run ends KILLED. Either way, Optuna and MLflow agree."""
    import sqlite3

    from search.run import main
    from search.study.reconcile import RECONCILED

    done = [t for t in load(run).trials if t.state == TrialState.COMPLETE]
    recorded = done[0]
    unrecorded = next(
        t for t in done[1:] if not t.user_attrs.get(rundir.ENQUEUED)
        and t.user_attrs.get("duplicate_of") is None
    )  # fmt: skip
    (run / "trials" / f"trial-{unrecorded.number:04d}.json").unlink()
    with sqlite3.connect(run / "study.db") as db:
        for t in (recorded, unrecorded):
            (trial_id,) = db.execute(
                "SELECT trial_id FROM trials WHERE number = ?", (t.number,)
            ).fetchone()
            db.execute(
                "UPDATE trials SET state = 'RUNNING', datetime_complete = NULL "
                "WHERE trial_id = ?",
                (trial_id,),
            )
            db.execute("DELETE FROM trial_values WHERE trial_id = ?", (trial_id,))
    code = main(args(space, run, store, "--resume"))
    said = capsys.readouterr()
    assert code == 0, (said.out + said.err)[-3000:]
    now = {t.number: t for t in load(run).trials}
    assert now[recorded.number].state == TrialState.COMPLETE
    assert now[recorded.number].values == recorded.values
    assert now[recorded.number].user_attrs.get(RECONCILED)
    assert now[unrecorded.number].user_attrs.get(rundir.INTERRUPTED)
    kept = {n: v for n, v in before.items() if n != unrecorded.number}
    outcome = check_run(run, store, before=kept)
    assert outcome.ok, outcome.problems
    add_row(table, row_from("result in MLflow, not told to Optuna, then --resume", outcome))


def test_tracking_store_deleted_mid_study_then_sync(
    tmp_path: Path, ray_tmp: str, bank: Path, table: Path
) -> None:
    space = write_space(tmp_path, bank, n_trials=3)
    run, store = tmp_path / "run", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    log = tmp_path / "driver.log"
    code = run_driver(args(space, run, store), log, env=fault_env("delete_store@1"))
    out = log.read_text()
    assert code == 3, out[-3000:]
    assert "MLflow lacks" in out and "--sync --output" in out
    assert len(trials_in(run, TrialState.COMPLETE)) == 3  # the trials did not fail
    front_before = (run / "pareto_front.csv").read_text()
    code = run_driver(["--sync", "--output", str(run)], tmp_path / "sync.log")
    said = (tmp_path / "sync.log").read_text()
    if code == 2 and "cannot be opened" in said:
        # trial processes that had the store open re-created the file and MLflow's schema set-up
        # raced there (MLflow's own behaviour); the remedy the message gives: another store
        store = f"sqlite:///{tmp_path / 'rebuilt' / 'mlflow.db'}"
        sync = ["--sync", "--output", str(run), "--tracking-uri", store]
        code = run_driver(sync, tmp_path / "sync.log")
        said = (tmp_path / "sync.log").read_text()
    assert code == 0, said[-3000:]
    assert "replayed 3 trial run(s)" in said
    parent = rundir.read_state(run).parent_run_id or ""
    attached = {f.path for f in MlflowClient(store).list_artifacts(parent)}
    assert "report.html" in attached, attached  # --sync publishes the report too
    outcome = check_run(run, store, bank_dir=bank)
    assert outcome.ok, outcome.problems
    assert (run / "pareto_front.csv").read_text() == front_before
    add_row(table, row_from("tracking store deleted mid-study (+ --sync)", outcome))


def test_disk_full_in_the_run_directory_stops_in_one_line_and_resume_completes(
    tmp_path: Path, ray_tmp: str, bank: Path, table: Path
) -> None:
    """The driver cannot write trial 1's record (ENOSPC, injected in the driver): one line naming
    the file, exit 1, the resume command, nothing RUNNING; --resume completes the study once."""
    space = write_space(tmp_path, bank, n_trials=3)
    run, store = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "driver.log"
    code = run_driver(args(space, run, store), log, env=fault_env("disk_full@1"))
    out = log.read_text()
    assert code == 1, out[-3000:]
    record = run / "trials" / "trial-0001.json"
    assert f"error: no space left on the device writing {record} (" in out, out[-3000:]
    assert "Resume with:" in out and "Traceback" not in out, out[-3000:]
    assert not trials_in(run, TrialState.RUNNING)
    client = MlflowClient(store)
    experiment = rundir.read_state(run).experiment_id or ""
    assert not [r for r in client.search_runs([experiment]) if r.info.status == "RUNNING"]
    code = run_driver(args(space, run, store, "--resume"), tmp_path / "resume.log")
    assert code == 0, (tmp_path / "resume.log").read_text()[-3000:]
    outcome = check_run(run, store, bank_dir=bank)
    assert outcome.ok, outcome.problems
    add_row(table, row_from("disk full writing the run directory (exit 1, + --resume)", outcome))


def _pid_of(program: str, naming: str) -> int | None:
    """The PID of the process running ``program`` (its argv[0] ends so) whose command line
    names ``naming`` (the test's RAY_TMPDIR), if one runs."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(program.encode()) and naming.encode() in b" ".join(argv):
            return int(pid_dir.name)
    return None


@pytest.mark.parametrize("process", ["raylet", "gcs_server"])
def test_a_lost_raylet_stops_the_study_and_resume_runs_its_trials_again(
    process: str, tmp_path: Path, ray_tmp: str, bank: Path, table: Path
) -> None:
    """SIGKILL to the raylet (or the GCS: the driver then waits inside Ray's client, and the
    watch thread stops it) of the driver's Ray while trials run: one line naming it, a stop
    within seconds, the running trials interrupted (not failed), exit 1; --resume completes
    (checked after the raylet: the resume is the same)."""
    space = write_space(tmp_path, bank, n_trials=3)
    run, store = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "driver.log"
    driver = start_driver(args(space, run, store), log, env=fault_env("slow@*=1"))
    try:
        wait_for(
            lambda: " started: " in log.read_text(),
            timeout=150,
            what="a trial to start",
            alive=driver,
        )
        pid = _pid_of(process, ray_tmp)
        assert pid is not None
        sent = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        code = driver.wait(timeout=60)
        stopped_in = time.monotonic() - sent
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        kill_processes_naming(ray_tmp)
    out = log.read_text()
    assert code == 1, out[-3000:]
    assert f"error: Ray's {process} died (the cluster's fault, not the trials')" in out, out[-3000:]
    assert "Resume with:" in out and stopped_in < 25, stopped_in
    print(f"{process} SIGKILL: the driver said so and exited 1 after {stopped_in:.1f} s")
    failed = [t for t in trials_in(run) if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs.get(rundir.INTERRUPTED) for t in failed)
    assert not trials_in(run, TrialState.RUNNING)
    if process != "raylet":
        experiment = rundir.read_state(run).experiment_id or ""
        runs = MlflowClient(store).search_runs([experiment])
        running = sum(r.info.status == "RUNNING" for r in runs)
        assert not running
        add_row(table, Row(f"{process} SIGKILL (exit 1, trials interrupted)", 1, 0, 0, 0, 0, 0))
        return
    code = run_driver(args(space, run, store, "--resume"), tmp_path / "resume.log")
    assert code == 0, (tmp_path / "resume.log").read_text()[-3000:]
    outcome = check_run(run, store, bank_dir=bank)
    assert outcome.ok, outcome.problems
    add_row(table, row_from("raylet SIGKILL (exit 1, + --resume)", outcome))


def test_unreachable_address_fails_within_seconds_and_leaves_nothing(
    tmp_path: Path, bank: Path, table: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.run import main

    with socket.socket() as probe:  # a free port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    space = write_space(tmp_path, bank, n_trials=2)
    run, store = tmp_path / "run", tmp_path / "store"
    start = time.monotonic()
    code = main(
        args(space, run, f"sqlite:///{store / 'mlflow.db'}", "--address", f"127.0.0.1:{port}")
    )
    err = capsys.readouterr().err
    assert code == 2 and f"127.0.0.1:{port}" in err and "Traceback" not in err
    assert time.monotonic() - start < 15
    assert not run.exists() and not (store / "mlflow.db").exists()
    add_row(table, Row("unreachable --address (exit 2)", 1, 0, 0, 0, 0, 0))


def test_disk_full_while_writing_a_bank_entry_leaves_no_partial_entry(
    tmp_path: Path, table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: the bank's fsync (its atomic writes, pptp.fileio) raises ENOSPC on the data
    file, then on the marker."""
    import pptp.fileio
    from pptp.bank import ReferenceBank
    from pptp.config import TrialConfig
    from search.running.references import ReferencesUnavailable, reference_failure

    cfg = TrialConfig.from_flat(
        {
            "data.name": "digits", "data.pool_size": 200, "data.test_size": 100,
            "data.val_size": 0, "model.name": "mlp", "model.width": 16, "model.norm": "none",
            "train.epochs": 1, "train.batch_size": 20, "train.augment": False,
            "train.warmup_epochs": 0, "train.device": "cpu",
        }
    )  # fmt: skip
    store = ReferenceBank(tmp_path / "bank")
    real_fsync = os.fsync
    for failing in (".ref-0000.npz.", ".ref-0000.json."):  # the data file, then the marker

        def full(fd: int, failing: str = failing) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(failing):
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(pptp.fileio.os, "fsync", full)
        with pytest.raises(OSError, match="No space left") as raised:
            store.train_one(cfg, 0)
        assert isinstance(reference_failure(raised.value), ReferencesUnavailable)
        monkeypatch.setattr(pptp.fileio.os, "fsync", real_fsync)
        assert store.missing(cfg, 1) == [0]  # not an entry: retrained, never used
        assert not partial_bank_entries(tmp_path / "bank")
    store.train_one(cfg, 0)  # the disk has room again
    assert store.missing(cfg, 1) == []
    assert not partial_bank_entries(tmp_path / "bank")
    add_row(table, Row("disk full writing a bank entry", 2, 1, 0, 0, 0, 0))


def test_a_reference_at_chance_stops_the_study_as_bad_input(tmp_path: Path, table: Path) -> None:
    """In-process: the check the driver runs as a Ray task after the references are trained."""
    from pptp.bank import ReferenceBank
    from pptp.config import TrialConfig
    from pptp.errors import ModelAtChance
    from search.running.references import ReferencesFailed, check_references, reference_failure

    flat = {
        "data.name": "digits", "data.pool_size": 200, "data.test_size": 100, "data.val_size": 0,
        "model.name": "mlp", "model.width": 16, "model.norm": "none", "train.epochs": 1,
        "train.lr": 1.0e-6, "train.batch_size": 50, "train.augment": False,
        "train.warmup_epochs": 0, "train.device": "cpu",
    }  # fmt: skip
    bank = ReferenceBank(tmp_path / "bank")
    bank.train_one(TrialConfig.from_flat(flat), 0)  # stored with a warning: it learned nothing
    with pytest.raises(ModelAtChance, match="reference model 0") as raised:
        check_references(str(bank.root), flat, 1)
    failure = reference_failure(raised.value)
    assert isinstance(failure, ReferencesFailed) and "ModelAtChance" in str(failure)
    add_row(table, Row("reference model at chance (exit 2)", 1, 0, 0, 0, 0, 0))


def test_hostile_space_files_and_folders_are_refused_at_once_and_write_nothing(
    tmp_path: Path, bank: Path, table: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process ``search/run.py``: a billion-laughs file, a 10,000-deep nesting, a 50 MB file,
    a study name that is a path, ``--output`` and ``attack.bank_dir`` naming a folder of the
    user's own. Each is one line, exit 2, in well under a second of the driver's own time, and
    nothing is written (no run directory, no MLflow store, nothing in the user's folder)."""
    from test_space_errors import billion_laughs

    from search.run import main

    mine = tmp_path / "home"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    good = write_space(tmp_path, bank, n_trials=2).read_text()
    cases = {
        "billion laughs": (billion_laughs(), (), "more than 100000 values"),
        "deep nesting": ("study: {name: t, x: " + "[" * 10_000 + "]" * 10_000 + "}\n", (),
                         "nested deeper than 64"),
        "50 MB space file": ("study: {name: t}\n#" + "x" * 50_000_000 + "\n", (),
                             "too large for a space file"),
        "study.name ../../x": (good.replace("name: faults", "name: ../../x"), (),
                               "study.name: needs a plain name"),
        "--output a folder of the user's": (good, ("--output", str(mine)),
                                            "neither empty nor a run directory"),
        "attack.bank_dir a folder of the user's": (good.replace(str(bank), str(mine)), (),
                                                   "neither empty nor a reference bank"),
    }  # fmt: skip
    for fault, (text, extra, says) in cases.items():
        space, run, store = tmp_path / "hostile.yaml", tmp_path / "run", tmp_path / "store"
        space.write_text(text)
        start = time.monotonic()
        code = main([*args(space, run, f"sqlite:///{store / 'mlflow.db'}"), *extra])
        took = time.monotonic() - start
        err = capsys.readouterr().err
        assert code == 2, (fault, err[-2000:])
        assert says in err and len(err.strip().splitlines()) == 1 and len(err) < 600, err[:600]
        assert took < 1.0, (fault, took)
        assert not run.exists() and not store.exists()
        assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
        add_row(table, Row(f"hostile input: {fault} (exit 2)", 1, 0, 0, 0, 0, 0))
