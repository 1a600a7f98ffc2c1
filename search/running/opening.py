"""The study of a ``search/run.py`` run and its MLflow parent run (stage 4): the Optuna study
created or resumed (in the run directory's study.db or a shared database, whose driver claim is
taken before anything touches it), the first trials enqueued, the parent run opened, and what the
run directory, the shared database and MLflow record before any trial (a resume marks the trials
a killed driver left running as interrupted)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from pptp.errors import ConfigError
from search.study import rundir
from search.tracking.study_tracker import StudyTracker
from search.tracking.uris import TrackingUnavailable, redact

if TYPE_CHECKING:
    import optuna

    from search.running.plan import Plan
    from search.tracking.study_tracker import StudyTracker


def open_study(plan: Plan) -> optuna.Study:
    """The ``optuna.Study``: created (with the space's enqueued and localisation-seeded first
    trials) or loaded on resume; with a shared database, the driver's claim is held from here
    (``plan.claim``) so that a live driver's trials stay live."""
    space = plan.space
    try:
        study = optuna.create_study(
            storage=plan.storage(),
            study_name=space.study.name,
            directions=space.study.directions,
            load_if_exists=plan.state is not None or not plan.storage_url,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(
            f"another driver created study {space.study.name!r} in "
            f"{redact(plan.storage_url or '')} a moment ago; pass --resume to join it"
        ) from None
    if plan.storage_url:
        from search.study.shared_study import DriverClaim

        claim = DriverClaim(plan.storage_url, space.study.name, plan.run_dir)
        claim.acquire()  # before anything touches the study: a live driver's trials stay live
        plan.claim = claim
    if study.metric_names != space.study.metrics:  # named axes in optuna-dashboard and plots
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2; still the only way
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(space.study.metrics)
    if plan.state is None:
        for params in [*space.study.enqueue, *plan.seeded]:
            rundir.enqueue(study, params)
        if space.study.localization:
            study.set_user_attr("localization", str(space.study.localization.get("run")))
    return study


def open_parent_run(plan: Plan) -> StudyTracker:
    """The :class:`search.tracking.StudyTracker` with the study's parent run started (resumed
    on ``--resume``); a store that answered the probe and then fails is
    :class:`search.tracking.TrackingUnavailable`."""
    space = plan.space
    tracker = StudyTracker(plan.tracking_uri, space.study.name, run_dir=plan.run_dir)
    try:
        tracker.start(
            resolved_space=space.resolved(),
            space_path=space.path,
            space_sha256=space.sha256,
            parent_run_id=plan.state.parent_run_id if plan.state else None,
        )
    except ConfigError:
        raise
    except Exception as error:  # the store answered the probe, then failed
        raise TrackingUnavailable(
            f"tracking store {plan.tracking_uri} failed while opening the study ({error}); "
            "check it and run again (with --resume for this run directory)"
        ) from error
    return tracker


def record_run(plan: Plan, tracker: StudyTracker, study: optuna.Study) -> None:
    """Write ``state.json`` (and, with a shared database, the study's run attribute that lets
    another machine resume it); tag the parent run with the localisation that steered it."""
    space = plan.space
    rundir.write_state(
        plan.run_dir,
        rundir.RunState(
            study_name=space.study.name,
            space_path=str(space.path),
            space_sha256=space.sha256,
            tracking_uri=plan.tracking_uri,
            parent_run_id=tracker.parent_run_id,
            experiment_id=tracker.experiment_id,
            cwd=str(Path.cwd()),
            storage=plan.storage_url,
        ),
    )
    if plan.storage_url:
        from search.study.shared_study import SharedRun, publish_run

        publish_run(
            study,
            SharedRun(
                space_sha256=space.sha256,
                space_path=str(space.path),
                tracking_uri=plan.tracking_uri,
                parent_run_id=tracker.parent_run_id,
                experiment_id=tracker.experiment_id,
            ),
        )
    if space.study.localization:
        where = str(space.study.localization.get("run"))
        tracker.client.set_tag(tracker.parent_run_id, "localization_run", where)
        print(f"localization {where}: {len(plan.seeded)} first trials protect its riskiest groups")


def report_interrupted(tracker: StudyTracker, study: optuna.Study, interrupted: list[int]) -> None:
    """On resume: the MLflow runs of the ``interrupted`` trials (a killed driver left them
    running) end KILLED, and the line says which enqueued ones run again."""
    stale = tracker.mark_stale_children("interrupted: the driver stopped", status="KILLED")
    requeued = [
        t.number
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(rundir.REQUEUED_FROM) in interrupted
    ]
    print(
        f"resume      trials {interrupted} were running when the driver stopped: marked "
        f"interrupted ({stale} MLflow runs KILLED)"
        + (f"; the enqueued ones run again as trials {requeued}" if requeued else "")
    )
