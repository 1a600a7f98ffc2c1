"""The invariants every fault must leave intact, checked on a run directory and its
MLflow store, and the fault table the suite produces from them.

:func:`check_run` reads the Optuna study, the MLflow experiment, ``pareto_front.csv`` and the
reference bank of a finished study and returns an :class:`Outcome`: every finished trial is in
Optuna and in MLflow exactly once with the same metrics; Optuna and MLflow agree about every
trial either holds (each MLflow trial run's end status is its Optuna trial's: FINISHED for
COMPLETE, FAILED for a failure, KILLED for an interrupted trial; a run with no Optuna trial
disagrees); the front CSV equals the front
recomputed from Optuna (``study.best_trials``); the enqueued baseline completed; the bank holds no
partial entry; nothing is left RUNNING (Optuna trials, MLflow runs).

:func:`add_row` appends one row of the fault table (fault, times injected, studies completed,
trials lost, duplicated, fronts differing, runs left RUNNING) to the file named by
``$PPTP_FAULT_TABLE`` (default: ``fault_table.jsonl`` in the session's temporary folder);
:func:`format_rows` prints it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from pptp.tables import format_table
from search.study import rundir
from search.sync import expected_status
from search.tracking.names import metric_key

TABLE_ENV = "PPTP_FAULT_TABLE"


@dataclass
class Outcome:
    """What :func:`check_run` found; ``problems`` says each violation in words."""

    finished: int = 0
    lost: int = 0
    duplicated: int = 0
    front_differs: int = 0
    left_running: int = 0
    disagreements: int = 0
    baseline_complete: bool = False
    bank_partial: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_run(
    run_dir: Path,
    store_uri: str,
    *,
    bank_dir: Path | None = None,
    before: dict[int, tuple[float, ...]] | None = None,
    expect_baseline: bool = True,
) -> Outcome:
    """Check the invariants (module docstring); ``before``: trials that had finished (number ->
    values) before the fault, which must still be there with the same values."""
    out = Outcome()
    state = rundir.read_state(run_dir)
    study = optuna.load_study(study_name=state.study_name, storage=rundir.storage(run_dir))
    trials = study.get_trials(deepcopy=False)
    finished = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        or (t.state == TrialState.FAIL and not t.user_attrs.get(rundir.INTERRUPTED))
    ]
    out.finished = len(finished)
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            out.left_running += 1
            out.problems.append(f"Optuna trial {t.number} is {t.state.name}")

    # MLflow: one child per finished trial, same state and metrics; nothing RUNNING
    client = MlflowClient(store_uri)
    runs = client.search_runs([state.experiment_id or ""], max_results=5000)
    for run in runs:
        if run.info.status == "RUNNING":
            out.left_running += 1
            out.problems.append(f"MLflow run {run.info.run_id} ({run.info.run_name}) is RUNNING")
    parents = [r for r in runs if r.info.run_id == state.parent_run_id]
    if not parents:
        out.problems.append(f"the parent run {state.parent_run_id} is not in MLflow")
    children: dict[int, list[Any]] = {}
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") == state.parent_run_id:
            number = int(run.data.tags.get("trial_number", "-1"))
            children.setdefault(number, []).append(run)
    objectives = [o.metric for o in _objectives(run_dir)]
    for t in finished:
        found = children.get(t.number, [])
        if not found:
            out.lost += 1
            out.problems.append(f"trial {t.number} ({t.state.name}) has no MLflow run")
            continue
        if len(found) > 1:
            out.duplicated += len(found) - 1
            out.problems.append(f"trial {t.number} has {len(found)} MLflow runs")
    # both ways: every trial run in MLflow against its Optuna trial (state and values)
    by_number = {t.number: t for t in trials}
    for number, found in sorted(children.items()):
        for run in found:
            problem = _disagreement(by_number.get(number), run, objectives)
            if problem is not None:
                out.disagreements += 1
                out.problems.append(f"trial {number}: {problem}")
    # retrained duplicates: two COMPLETE trials with the same params, neither marked duplicate_of
    seen: dict[str, int] = {}
    for t in trials:
        if t.state != TrialState.COMPLETE or t.user_attrs.get("duplicate_of") is not None:
            continue
        key = json.dumps(t.params, sort_keys=True)
        if key in seen:
            out.duplicated += 1
            out.problems.append(f"trial {t.number} retrained the config of trial {seen[key]}")
        seen[key] = t.number
    for number, values in (before or {}).items():
        now = next((t for t in trials if t.number == number), None)
        if now is None or now.state != TrialState.COMPLETE or tuple(now.values) != values:
            out.lost += 1
            out.problems.append(f"trial {number}, finished before the fault, changed or was lost")

    # the front CSV against the front recomputed from Optuna
    front = {t.number: tuple(t.values) for t in study.best_trials}
    csv_front: dict[int, tuple[float, ...]] = {}
    path = run_dir / "pareto_front.csv"
    if path.exists():
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                csv_front[int(row["trial"])] = tuple(float(row[m]) for m in objectives)
    if csv_front != front:
        out.front_differs = 1
        out.problems.append(f"pareto_front.csv {sorted(csv_front)} != best_trials {sorted(front)}")

    baseline = [
        t
        for t in trials
        if t.user_attrs.get(rundir.ENQUEUED) and t.params.get("protect.strength") == 0.0
    ]
    out.baseline_complete = any(t.state == TrialState.COMPLETE for t in baseline)
    if expect_baseline and not out.baseline_complete:
        out.problems.append("the enqueued baseline (strength 0) did not complete")
    if bank_dir is not None:
        out.bank_partial = len(partial_bank_entries(bank_dir))
        out.problems += [f"bank: {p}" for p in partial_bank_entries(bank_dir)]
    return out


def _disagreement(trial: Any, run: Any, objectives: list[str]) -> str | None:
    """What Optuna's ``trial`` (None: no such trial) and its MLflow ``run`` disagree about, or
    None when they agree. A run still RUNNING is counted as left RUNNING, not here."""
    if run.info.status == "RUNNING":
        return None
    if trial is None:
        return f"MLflow run {run.info.run_id} ({run.info.status}) has no Optuna trial"
    if run.info.status != expected_status(trial):
        interrupted = " (interrupted)" if trial.user_attrs.get(rundir.INTERRUPTED) else ""
        return f"Optuna {trial.state.name}{interrupted}, MLflow {run.info.status}"
    if trial.state == TrialState.COMPLETE:
        for name, value in zip(objectives, trial.values, strict=True):
            logged = run.data.metrics.get(metric_key(name))
            if logged is None or not math.isclose(logged, value, rel_tol=1e-9):
                return f"{name} is {value} in Optuna, {logged} in MLflow"
    return None


def _objectives(run_dir: Path) -> Any:
    from search.space import load_space

    return load_space(run_dir / "space.yaml").study.objectives


def partial_bank_entries(bank_dir: Path) -> list[str]:
    """Bank entries that claim a reference they do not hold in full: a marker (``ref-*.json``,
    the bank's commit point, written last) whose ``.npz`` is missing or fails its checksum, and
    temporary files left behind. A ``.npz`` without a marker is no entry (the bank counts it
    missing and overwrites it when it retrains)."""
    problems = []
    for folder in sorted(p for p in Path(bank_dir).glob("*") if p.is_dir()):
        for tmp in folder.glob(".*.tmp"):
            problems.append(f"temporary file {tmp}")
        for marker in folder.glob("ref-*.json"):
            npz = marker.with_suffix(".npz")
            if not npz.exists():
                problems.append(f"{marker.name} in {folder.name} has no .npz")
                continue
            digest = hashlib.sha256(npz.read_bytes()).hexdigest()
            if json.loads(marker.read_text()).get("sha256") != digest:
                problems.append(f"{marker} does not match its .npz")
    return problems


# ---------------------------------------------------------------------------------------------
# the fault table


@dataclass(frozen=True)
class Row:
    fault: str
    injected: int
    completed: int
    lost: int
    duplicated: int
    front_differs: int
    left_running: int
    disagreements: int = 0


def table_path(default_dir: Path) -> Path:
    return Path(os.environ.get(TABLE_ENV) or default_dir / "fault_table.jsonl")


def add_row(path: Path, row: Row) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(asdict(row)) + "\n")


def row_from(fault: str, outcome: Outcome, *, injected: int = 1, completed: bool = True) -> Row:
    return Row(
        fault=fault,
        injected=injected,
        completed=int(completed),
        lost=outcome.lost,
        duplicated=outcome.duplicated,
        front_differs=outcome.front_differs,
        left_running=outcome.left_running,
        disagreements=outcome.disagreements,
    )


def format_rows(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    headers = [
        "fault",
        "injected",
        "studies completed",
        "trials lost",
        "duplicated",
        "fronts differing",
        "runs left RUNNING",
        "Optuna/MLflow disagree",
    ]
    body = [
        [r["fault"], r["injected"], r["completed"], r["lost"], r["duplicated"],
         r["front_differs"], r["left_running"], r.get("disagreements", 0)]
        for r in rows
    ]  # fmt: skip
    return format_table(body, headers)
