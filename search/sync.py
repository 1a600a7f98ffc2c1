"""``python search/sync.py --run RUN``: make MLflow hold exactly what the run directory records.

The tracking store is not a single point of failure: a trial that could not write to
MLflow still finishes, and its run travels back to the driver, which keeps it in the run
directory (:mod:`search.study.records`). This module puts MLflow back in step with the study, from
the
run directory alone:

1. the parent run: reopened, or re-created when the store lost it (``state.json`` then names the
   new one);
2. every trial record whose run MLflow lacks (never created, partly logged, lost with a deleted
   store) is replayed as a new child run (a partial copy is deleted first: each trial is in MLflow
   exactly once); artifacts come from the record, or from the old run's artifact folder when a
   local artifact store outlived its database;
3. child runs left RUNNING are ended in the state Optuna has for their trial (COMPLETE ->
   FINISHED, FAIL -> FAILED, interrupted -> KILLED);
4. the Pareto front, the trial table and the ``pareto`` tags are logged again, and the parent ends
   FINISHED when the study has all its trials (KILLED otherwise).

The driver runs steps 2-4 at the end of every session and ``--resume`` before it starts trials
(:func:`finish_tracking`); ``--sync`` (this command, or ``search/run.py --sync``) runs all four.
Everything MLflow still lacks afterwards is listed, one line each (:class:`SyncReport`).

Exit status of the command: 0 when MLflow holds everything, 3 when something is still missing
(the lines say what), 2 on bad input (no such run directory, a live driver holds it).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # `python search/sync.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from search.cli import manual
from search.cli.entry import add_output_flags, quiet_environment, run_command

quiet_environment()

if TYPE_CHECKING:
    import optuna

    from search.tracking.study_tracker import StudyTracker

logger = logging.getLogger("search.sync")

#: exit status when the study is fine but MLflow still lacks something (run --sync later)
TRACKING_INCOMPLETE = 3


@dataclasses.dataclass
class SyncReport:
    """What a sync did and what MLflow still lacks (``missing``: one line per problem)."""

    parent_run_id: str | None = None
    replayed: list[int] = dataclasses.field(default_factory=list)
    ended: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.replayed:
            out.append(
                f"MLflow      replayed {len(self.replayed)} trial run(s) from the run directory: "
                + ", ".join(map(str, self.replayed))
            )
        if self.ended:
            out.append(f"MLflow      ended {len(self.ended)} run(s) left RUNNING")
        out += [f"MLflow lacks {line}" for line in self.missing]
        return out


def store_identity(uri: str) -> tuple[int, int] | None:
    """``(device, inode)`` of a SQLite store's file (None for other stores or a missing file).

    A SQLite store deleted while a process holds connections to it keeps taking writes into the
    deleted file; comparing the identity at the start and the end of a session detects it.
    """
    from search.tracking.uris import sqlite_path

    if not uri.lower().startswith("sqlite"):
        return None
    path, _ = sqlite_path(uri)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def store_replaced(uri: str, identity: tuple[int, int] | None) -> bool:
    """The SQLite store of ``uri`` was deleted or replaced since ``identity`` was taken."""
    return identity is not None and store_identity(uri) != identity


def expected_status(trial: Any) -> str:
    """The MLflow end status matching an Optuna trial (a ``FrozenTrial``)."""
    from optuna.trial import TrialState

    from search.study.rundir import INTERRUPTED

    if trial.state == TrialState.COMPLETE:
        return "FINISHED"
    if trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED):
        return "FAILED"
    return "KILLED"


def replay_records(
    tracker: StudyTracker, run_dir: Path, study: optuna.Study, report: SyncReport
) -> dict[int, str]:
    """Step 2 of the module docstring; returns ``{trial number: child run id}`` of every
    recorded trial MLflow now holds."""
    from search.study import records
    from search.tracking.names import TAG_PARENT, TAG_TRIAL_NUMBER
    from search.tracking.spool import local_artifact_dir, replay

    by_number: dict[int, list[Any]] = {}
    by_id: dict[str, Any] = {}
    for run in tracker.children():
        by_id[run.info.run_id] = run
        number = run.data.tags.get(TAG_TRIAL_NUMBER, "")
        if number.lstrip("-").isdigit():
            by_number.setdefault(int(number), []).append(run)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    held: dict[int, str] = {}
    for number, record in sorted(records.read_all(run_dir).items()):
        trial = trials.get(number)
        status = expected_status(trial) if trial is not None else record.spool.status or "FAILED"
        run = by_id.get(record.spool.run_id or "")
        if run is not None and not record.pending and run.info.status == status:
            held[number] = run.info.run_id
            continue
        try:
            for old in by_number.get(number, []):  # a partial copy: each trial exactly once
                tracker.client.delete_run(old.info.run_id)
            spool = dataclasses.replace(record.spool, status=status)
            run_id = replay(
                tracker.client,
                spool,
                experiment_id=tracker.experiment_id,
                tags={TAG_PARENT: tracker.parent_run_id},
                artifacts_from=None
                if spool.artifacts
                else local_artifact_dir(record.spool.artifact_uri),
            )
        except Exception as error:
            report.missing.append(f"trial {number}: its run could not be replayed ({error})")
            continue
        replayed = dataclasses.replace(
            spool, run_id=run_id, experiment_id=tracker.experiment_id, artifacts={}, error=None
        )
        records.write(run_dir, dataclasses.replace(record, pending=False, spool=replayed))
        report.replayed.append(number)
        held[number] = run_id
    for number, trial in sorted(trials.items()):
        if expected_status(trial) != "KILLED" and number not in held:
            runs = by_number.get(number, [])
            if not runs:
                report.missing.append(
                    f"trial {number}: no MLflow run and no record in {run_dir / records.FOLDER}"
                )
    return held


def end_stale_children(tracker: StudyTracker, study: optuna.Study, report: SyncReport) -> None:
    """Step 3: child runs still RUNNING get the end status of their Optuna trial."""
    from search.tracking.names import TAG_FAIL_REASON, TAG_TRIAL_NUMBER

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for run in tracker.children(status="RUNNING"):
        number = run.data.tags.get(TAG_TRIAL_NUMBER, "")
        trial = trials.get(int(number)) if number.lstrip("-").isdigit() else None
        if trial is not None and trial.state.name in ("RUNNING", "WAITING"):
            continue  # still running in another process: never touched
        status = expected_status(trial) if trial is not None else "KILLED"
        reason = (trial.user_attrs.get("fail_reason") if trial is not None else None) or (
            "the trial's process ended without ending its run"
        )
        if status != "FINISHED":
            tracker.client.set_tag(run.info.run_id, TAG_FAIL_REASON, str(reason)[:500])
        tracker.client.set_terminated(run.info.run_id, status=status)
        report.ended.append(run.info.run_id)


def finish_tracking(
    tracker: StudyTracker,
    run_dir: Path,
    study: optuna.Study,
    *,
    objectives: Sequence[Any],
    n_trials: int,
    end_parent: bool = True,
    report: SyncReport | None = None,
) -> SyncReport:
    """Steps 2-4 of the module docstring with the parent already open; never raises for an
    MLflow failure: each step that fails adds a line to ``report.missing``."""
    from search.study import rundir
    from search.study.trials import finished, with_run_ids

    report = report or SyncReport(parent_run_id=tracker.parent_run_id)
    held: dict[int, str] = {}
    try:
        held = replay_records(tracker, run_dir, study, report)
    except Exception as error:
        report.missing.append(f"the trial runs: MLflow could not be read ({error})")
    try:
        end_stale_children(tracker, study, report)
    except Exception as error:
        report.missing.append(f"the end state of runs left RUNNING ({error})")
    try:
        trials = with_run_ids(finished(study, objectives), held)
        tracker.log_front(
            [t.row() for t in trials], objectives=[(o.metric, o.direction) for o in objectives]
        )
    except Exception as error:
        report.missing.append(f"the Pareto front and trial table on the parent run ({error})")
    if end_parent:
        complete = rundir.finished_count(study) >= n_trials
        try:
            tracker.finish(status="FINISHED" if complete else "KILLED")
        except Exception as error:
            report.missing.append(f"the parent run's end state ({error})")
    return report


def sync_run(run_dir: Path, uri: str | None = None) -> SyncReport:
    """Steps 1-4 for a run directory whose lock the caller holds (:mod:`search.study.lock`)."""
    import optuna

    from pptp.errors import ConfigError
    from search.space import load_space
    from search.study import rundir
    from search.tracking.study_tracker import StudyTracker
    from search.tracking.uris import TrackingUnavailable, check_tracking, resolve_tracking_uri

    state = rundir.read_state(run_dir)
    target = resolve_tracking_uri(uri or state.tracking_uri)
    check_tracking(target)
    space = load_space(run_dir / "space.yaml")
    try:
        study = optuna.load_study(study_name=state.study_name, storage=rundir.storage(run_dir))
    except KeyError:
        raise ConfigError(f"{run_dir / 'study.db'} holds no study {state.study_name!r}") from None
    tracker = StudyTracker(target, state.study_name, run_dir=run_dir)
    try:
        parent = tracker.start(
            resolved_space=space.resolved(),
            space_path=Path(state.space_path),
            space_sha256=state.space_sha256,
            parent_run_id=state.parent_run_id if target == state.tracking_uri else None,
            recreate_missing=True,
        )
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise TrackingUnavailable(
            f"the tracking store {target} cannot be opened ({type(error).__name__}: {first}); "
            "repair it, or replay the study into another store with --tracking-uri (e.g. "
            "sqlite:///mlflow/new.db): the run directory holds everything"
        ) from error
    if (parent, tracker.experiment_id, target) != (
        state.parent_run_id,
        state.experiment_id,
        state.tracking_uri,
    ):
        rundir.write_state(
            run_dir,
            dataclasses.replace(
                state,
                parent_run_id=parent,
                experiment_id=tracker.experiment_id,
                tracking_uri=target,
            ),
        )
    report = SyncReport(parent_run_id=parent)
    n_trials = max(space.study.n_trials, rundir.finished_count(study))
    return finish_tracking(
        tracker, run_dir, study, objectives=space.study.objectives, n_trials=n_trials, report=report
    )


# ---------------------------------------------------------------------------------------------
# the command


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of ``sync`` under its manual page (:mod:`search.cli.manual`)."""
    p = manual.parser("sync", prog)
    p.add_argument("--run", required=True, help="the run directory (runs/<study>/<timestamp>)")
    p.add_argument(
        "--tracking-uri", help="the MLflow store to fill (default: the one the study used)"
    )
    add_output_flags(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@dataclasses.dataclass
class Plan:
    run_dir: Path
    tracking_uri: str | None
    lock: Any


def prepare(args: argparse.Namespace) -> Plan:
    from pptp.errors import ConfigError
    from search.study.lock import RunLock

    run_dir = Path(args.run)
    if not (run_dir / "study.db").is_file():
        raise ConfigError(f"--run {run_dir}: no study.db here; give a run directory of run.py")
    lock = RunLock(run_dir)
    lock.acquire()
    return Plan(run_dir.resolve(), args.tracking_uri, lock)


def execute(plan: Plan) -> int:
    try:
        report = sync_run(plan.run_dir, plan.tracking_uri)
        if not report.missing:  # the runs are all there: the report and descriptions too
            from search.reporting.publish import publish_study

            published = publish_study(plan.run_dir, tracking_uri=plan.tracking_uri)
            if published.problem:
                report.missing.append(f"the study's report: the store {published.problem}")
            else:
                print(published.summary())
    finally:
        plan.lock.release()
    for line in report.lines():
        print(line)
    if report.missing:
        print(f"sync incomplete: {len(report.missing)} item(s) still missing; run it again")
        return TRACKING_INCOMPLETE
    print(f"MLflow holds the whole study (parent run {report.parent_run_id})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv), prepare, execute)


if __name__ == "__main__":
    sys.exit(main())
