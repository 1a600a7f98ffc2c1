"""The end of a ``search/run.py`` study (stage 7): the Pareto front CSV in the run directory
first (whatever MLflow does), then MLflow brought up to date (front, tags, end states), the front
printed, the report written (:mod:`search.reporting.publish`) and where to look next."""

from __future__ import annotations

import logging
import shlex
from typing import TYPE_CHECKING

import optuna

from pptp.fileio import atomic_write
from search.reporting.publish import publish_study
from search.running.budget import family_line, kind_of, repeat_line
from search.running.plan import EXIT_STOPPED, EXIT_TRACKING_INCOMPLETE
from search.running.scheduler import stopped_line
from search.study import records, rundir
from search.study.pareto import format_front, front_csv
from search.study.trials import finished, with_run_ids
from search.sync import finish_tracking, store_replaced
from search.tracking.links import where_to_look

if TYPE_CHECKING:
    import optuna

    from search.running.plan import Plan
    from search.study.trials import FinishedTrial
    from search.sync import SyncReport
    from search.tracking.study_tracker import StudyTracker

logger = logging.getLogger(__name__)


def finish(
    plan: Plan, tracker: StudyTracker, identity: tuple[int, int] | None, report: SyncReport
) -> int:
    """Front CSV first (whatever MLflow does), then MLflow, then the table and what to do next."""
    space = plan.space
    study = optuna.load_study(study_name=space.study.name, storage=plan.storage())
    trials = study_trials(plan, study)
    write_front_csv(plan, trials)
    done = rundir.finished_count(study)
    complete = done >= plan.n_trials
    if store_replaced(plan.tracking_uri, identity):
        report.missing.append(
            f"every run of this session: the tracking store {plan.tracking_uri} was deleted or "
            "replaced during the study (what was logged went to the old file)"
        )
    else:
        report = finish_tracking(
            tracker,
            plan.run_dir,
            study,
            objectives=space.study.objectives,
            n_trials=plan.n_trials,
            report=report,
        )
    published, problem = publish(plan, mlflow=not store_replaced(plan.tracking_uri, identity))
    if problem is not None and not report.missing:  # the runs are there, the report is not
        report.missing.append(f"the study's report and trial descriptions: the store {problem}")
    stopped = sum(t.pruned for t in trials)
    print(
        f"\nPareto front ({sum(t.pareto for t in trials)} of {len(trials)} finished trials, "
        f"{sum(not t.complete and not t.pruned for t in trials)} failed"
        + (f", {stopped} stopped early" if stopped else "")
        + "):"
    )
    print(format_front(trials, space.study.objectives))
    for line in budget_lines(plan, study):
        print(line)
    for line in report.lines():
        print(line)
    print(published)
    if not complete:
        print(f"\nstopped with {done} of {plan.n_trials} trials finished. {plan.resume_hint()}")
        return EXIT_STOPPED
    if report.missing:
        print(
            "\nthe study is complete; MLflow lacks what is listed above. Replay it with:\n  "
            f"python search/run.py --sync --output {shlex.quote(str(plan.run_dir))}"
        )
        return EXIT_TRACKING_INCOMPLETE
    return 0


def budget_lines(plan: Plan, study: optuna.Study) -> list[str]:
    """Where the study's trainings went: per family, and the share of repeated proposals
    (:mod:`search.running.budget`)."""
    trials = study.get_trials(deepcopy=False)
    lines = [family_line(trials, kind_of(plan.space))]
    repeats = repeat_line(trials)
    stopped = stopped_line(trials, plan.space.base_config().train.epochs)
    return lines + [line for line in (repeats, stopped) if line]


def study_trials(plan: Plan, study: optuna.Study) -> list[FinishedTrial]:
    """The study's finished trials, with the MLflow run ids the run directory's records hold
    (a replayed run has a new id)."""
    held = {n: r.spool.run_id for n, r in records.read_all(plan.run_dir).items() if r.spool.run_id}
    return with_run_ids(finished(study, plan.space.study.objectives), held)


def write_front_csv(plan: Plan, trials: list[FinishedTrial]) -> None:
    """``pareto_front.csv`` in the run directory (:func:`search.study.pareto.front_csv`)."""
    atomic_write(plan.run_dir / "pareto_front.csv", front_csv(trials, plan.space.study.objectives))


def publish(plan: Plan, *, mlflow: bool) -> tuple[str, str | None]:
    """Name and describe the trial runs, save the MLflow views, write ``report.html`` (and attach
    it), and return what to print: the report and where to look next
    (:mod:`search.reporting.publish`). A
    failure here costs the study nothing: it is a warning, and ``pptp-search report`` redoes it."""
    try:
        done = publish_study(plan.run_dir, tracking_uri=plan.tracking_uri, mlflow=mlflow)
    except Exception as error:  # the study is done and saved; the report is a convenience
        logger.warning("could not write the report (%s: %s)", type(error).__name__, error)
        text = where_to_look(plan.run_dir, tracking_uri=plan.tracking_uri, links=None)
        return "\n" + text, None
    return "\n" + done.summary(), done.problem if mlflow and done.problem else None


def never_started(plan: Plan, study: optuna.Study) -> bool:
    """A new study in its own ``study.db`` in which no trial started: what a failed start (a
    recipe whose references cannot be trained, a cluster that refuses the trials) leaves."""
    waiting = optuna.trial.TrialState.WAITING
    trials = study.get_trials(deepcopy=False)
    return plan.state is None and not plan.storage_url and all(t.state == waiting for t in trials)


def discard_start(plan: Plan, tracker: StudyTracker) -> None:
    """Undo what a failed start created in MLflow: the parent run is deleted (MLflow keeps it,
    FAILED with its ``fail_reason``, out of the UI) and so is its experiment when no other run is
    in it. The run directory is removed by the caller once its lock is released."""
    client = tracker.client
    try:
        client.delete_run(tracker.parent_run_id)
        if not client.search_runs([tracker.experiment_id], max_results=1):
            client.delete_experiment(tracker.experiment_id)
    except Exception as error:  # the store failing too: say so, keep going with the exit
        logger.warning("could not delete the failed start's MLflow run (%s)", error)
