"""The Ray Tune session of ``search/run.py`` (stages 5 and 6): start Ray (in-process, or join
``--address``), cap ``max_concurrent`` to what the resources run at once, train the references
(:mod:`search.running.references`), then let Tune run the trials that
:class:`search.running.samplers.StudySearch` asks Optuna for; Ctrl-C marks the running trials
interrupted and prints the resume command, and so does SIGTERM (:mod:`search.running.stopping`)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from pptp.errors import ConfigError
from search.cli.entry import local_ray_environment
from search.running.bookkeeping import Bookkeeper
from search.running.budget import shares_for
from search.running.cluster import RayUnreachable, concurrency_cap
from search.running.disk_full import describe, disk_full
from search.running.ending import study_trials, write_front_csv
from search.running.plan import EXIT_STOPPED
from search.running.progress import Progress
from search.running.references import ReferencesUnavailable, train_references
from search.running.samplers import StudySearch
from search.running.scheduler import MultiObjectiveASHA, rung_history
from search.running.stop_check import PendingStop
from search.running.stopping import (
    end_at_once_on_another,
    exit_status,
    ray_lost,
    signal_name,
    stop_on_signals,
    stop_ray,
    watch_ray,
)
from search.running.trainable import TrialContext, trainable
from search.running.user_code import code_names, runtime_env
from search.space import build_sampler
from search.space.checks import possible_values
from search.study import rundir
from search.study.failures import INTERRUPTED_REASON
from search.study.naming import planned_name
from search.study.reconcile import end_interrupted_runs, tell_from_records
from search.sync import finish_tracking
from search.tracking.names import TAG_FAIL_REASON

if TYPE_CHECKING:
    import optuna
    import ray

    from pptp.config import TrialConfig
    from search.running.bookkeeping import Bookkeeper
    from search.running.plan import Plan
    from search.running.samplers import StudySearch
    from search.running.trainable import TrialContext
    from search.space import Space
    from search.tracking.study_tracker import StudyTracker

logger = logging.getLogger(__name__)


def run_session(
    plan: Plan, tracker: StudyTracker, study: optuna.Study, remaining: int
) -> int | None:
    """Ray, references and trials; returns an exit status when the session was interrupted."""
    space = plan.space
    searcher: StudySearch | None = None
    try:
        start_ray(plan)
        concurrency = concurrency_limit(plan)
        references = train_references(plan)
        ctx = trial_context(plan, tracker, references.config)
        sampler_study = space.study
        if plan.state is not None:
            # a resumed sampler with the study's seed would replay its first proposals
            seed = space.study.seed + len(study.trials)
            sampler_study = dataclasses.replace(space.study, seed=seed)
            plan.say(f"sampler     seed {seed} (study seed + {len(study.trials)} trials so far)")
        searcher = StudySearch(
            space=space.params,
            metric=space.study.metrics,
            mode=space.study.modes,
            sampler=build_sampler(sampler_study, source=str(space.path)),
            study_name=space.study.name,
            storage=plan.storage(),
            constraints=space.study.constraints,
            wanted=ctx.wanted,
            budget=remaining,
            shares=shares_for(space),
            seed=sampler_study.seed,
        )
        keeper = Bookkeeper(
            run_dir=plan.run_dir,
            searcher=searcher,
            tracker=tracker,
            flat_config=lambda sampled: space.trial_config(sampled).to_flat(),
        )
        plan.say(f"trials      {remaining} to run ({plan.n_trials} in the study)")
        scheduler = fidelity_scheduler(plan, study)
        run_tuner(
            plan, searcher, ctx, remaining, concurrency, keeper, references.signals, scheduler
        )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (search.running.stopping)
        end_at_once_on_another(plan.resume_hint())  # the clean-up takes seconds
        stop_ray()
        end_at_once_on_another(plan.resume_hint())  # Ray's shutdown reset SIGTERM to the default
        if ray_lost():  # not the trials' fault: they are interrupted, not failed
            return on_interrupt(plan, tracker, None, lost=ray_lost())
        return on_interrupt(plan, tracker, searcher)
    except ConfigError as error:  # the cluster, its resources, a recipe that cannot train
        stop_ray()
        fail_parent(tracker, str(error))
        raise
    except ReferencesUnavailable as error:
        stop_ray()
        fail_parent(tracker, str(error))
        print(f"error: {error}", file=sys.stderr)
        return EXIT_STOPPED
    except Exception as error:  # a full disk: a clear stop (search.running.disk_full)
        full = disk_full(error)
        if full is None:
            raise
        end_at_once_on_another(plan.resume_hint())
        stop_ray()
        return on_disk_full(plan, tracker, searcher, full)
    finally:
        stop_ray()
    searcher.fail_awaiting()
    leftover = rundir.fail_interrupted(study)  # Tune ended without telling them: never lost
    if leftover:
        logger.warning("trials %s were still RUNNING when Tune ended: marked interrupted", leftover)
    return None


def start_ray(plan: Plan) -> None:
    """``ray.init``; a cluster that answered the probe but cannot be joined is bad input."""
    if _local_ray(plan):
        local_ray_environment()  # never for a cluster the user started: their settings hold
    try:
        ray.init(**_ray_init_args(plan))
        stop_on_signals()  # ray.init installed its own handler (sys.exit: a C++ abort under Tune)
        watch_ray()  # its raylet or GCS dying stops the study within a second
    except (ConnectionError, TimeoutError) as error:
        if not plan.args.address:
            raise
        first = (str(error).strip().splitlines() or [""])[0]
        raise RayUnreachable(
            f"--address {plan.args.address}: could not join the Ray cluster ({first})"
        ) from error


def _local_ray(plan: Plan) -> bool:
    return plan.args.address in (None, "", "local")


def _ray_init_args(plan: Plan) -> dict[str, Any]:
    verbose = plan.verbosity > 0
    shipped = _runtime_env(plan)
    if not _local_ray(plan):
        return {"address": plan.args.address, "log_to_driver": verbose, **shipped}
    return {
        "num_cpus": os.cpu_count(),
        "include_dashboard": False,
        "log_to_driver": verbose,
        "object_store_memory": 256 * 1024 * 1024,
        "configure_logging": False,
        **shipped,
    }


def _runtime_env(plan: Plan) -> dict[str, Any]:
    """``{"runtime_env": ...}`` shipping the user's model and loader code to every node
    (:mod:`search.running.user_code`), said in one line; empty when the space names none."""
    base = plan.space.base_config()
    choices = [v for _, v in possible_values("model.name", base.to_flat(), plan.space.params)]
    env = runtime_env(code_names(base, choices))
    if env is None:
        return {}
    names = ", ".join(Path(p).name for p in env["py_modules"])
    plan.say(f"user code   {names} shipped to every Ray node (runtime_env py_modules)")
    return {"runtime_env": env}


def concurrency_limit(plan: Plan) -> int:
    """``study.max_concurrent`` capped to what the cluster's resources run at once."""
    res, total = plan.space.study.resources, ray.cluster_resources()
    for name, need in (("CPU", res.cpus), ("GPU", res.gpus)):
        if need > total.get(name, 0):
            raise ConfigError(
                f"{plan.space.path}: study.resources asks for {need:g} {name} per "
                f"trial; the Ray cluster has {total.get(name, 0):g}"
            )
    cap, warning = concurrency_cap(
        plan.space.study.max_concurrent, cpus=res.cpus, gpus=res.gpus, available=total
    )
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return cap


def trial_context(
    plan: Plan, tracker: StudyTracker, references: TrialConfig | None
) -> TrialContext:
    return TrialContext(
        space=plan.space,
        tracking_uri=plan.tracking_uri,
        experiment_id=tracker.experiment_id,
        parent_run_id=tracker.parent_run_id,
        references=references,
        overrides=rundir.absolute_paths(plan.space.base_config()),
    )


def fidelity_scheduler(plan: Plan, study: optuna.Study) -> MultiObjectiveASHA | None:
    """The MO-ASHA scheduler of ``study.fidelity`` (None without it), holding the rung results
    the study recorded before (a resumed study keeps its rungs)."""
    spec = plan.space.study
    if spec.fidelity is None:
        return None
    history = rung_history(study.get_trials(deepcopy=False), spec.objectives, spec.constraints)
    total = plan.space.base_config().train.epochs
    plan.say(
        f"fidelity    rungs at epochs {', '.join(map(str, spec.fidelity.epochs(total)))} of "
        f"{total}; the best 1/{spec.fidelity.reduction} at each rung go on (never stopped: "
        f"{', '.join(spec.fidelity.never_stop) or 'none'})"
    )
    return MultiObjectiveASHA(
        spec.objectives, spec.constraints, reduction=spec.fidelity.reduction, history=history
    )


def run_tuner(
    plan: Plan,
    searcher: StudySearch,
    ctx: TrialContext,
    remaining: int,
    concurrency: int,
    keeper: Bookkeeper,
    reference_signals: ray.ObjectRef | None = None,
    scheduler: MultiObjectiveASHA | None = None,
) -> None:
    if plan.verbosity <= 0:  # each trial's end is one progress line; tracebacks go to MLflow
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    res = plan.space.study.resources
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(trainable, ctx=ctx, reference_signals=reference_signals),
            {"cpu": res.cpus, "gpu": res.gpus},
        ),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            # the searcher ends the study after ``remaining`` distinct trainings: a repeated
            # proposal is reused and not counted (search.running.budget)
            num_samples=-1,
            scheduler=scheduler,  # None: Tune's FIFO (every trial to the end)
            reuse_actors=True,  # a trial process imports torch and mlflow once, not per trial
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(plan.run_dir / "ray"),
            verbose=0,
            callbacks=[
                PendingStop(),
                keeper,
                Progress(
                    total=remaining,
                    objectives=plan.space.study.objectives,
                    verbosity=plan.verbosity,
                    describe=partial(_describe, plan.space),
                ),
            ],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()


def _describe(space: Space, number: int, sampled: Mapping[str, Any]) -> str:
    """A trial's progress name: the run name it gets in MLflow (:mod:`search.study.naming`)."""
    return planned_name(number, space.trial_config(sampled), space)


def on_interrupt(
    plan: Plan,
    tracker: StudyTracker,
    searcher: StudySearch | None,
    *,
    lost: list[str] | None = None,
) -> int:
    """Ray is down: mark the running trials interrupted (and any whose worker died waiting for
    its reason failed, unless ``searcher`` is None: the Ray processes ``lost`` killed them), end
    the MLflow runs, print what happened and the resume command; the exit status."""
    if searcher is not None:
        searcher.fail_awaiting()
    study = optuna.load_study(study_name=plan.space.study.name, storage=plan.storage())
    tell_from_records(study, plan.run_dir, plan.space.study.objectives)  # ended, not told yet
    numbers = rundir.fail_interrupted(study)
    try:
        why = f"Ray's {' and '.join(lost)} died" if lost else signal_name()
        tracker.mark_stale_children(f"{INTERRUPTED_REASON} ({why})", status="KILLED")
        end_interrupted_runs(tracker, numbers)  # a run its trial ended, Optuna never told
    except Exception as error:
        logger.warning("could not mark the interrupted MLflow runs KILLED (%s)", error)
    write_front_csv(plan, study_trials(plan, study))
    report = finish_tracking(
        tracker,
        plan.run_dir,
        study,
        objectives=plan.space.study.objectives,
        n_trials=plan.n_trials,
        end_parent=False,
    )
    try:
        tracker.finish(status="KILLED")
    except Exception as error:
        report.missing.append(f"the parent run's end state ({error})")
    for line in report.lines():
        print(line)
    so_far = f"({rundir.finished_count(study)} of {plan.n_trials} finished)"
    if lost:
        print(
            f"error: Ray's {' and '.join(lost)} died (the cluster's fault, not the trials'): the "
            f"study stopped; trials {numbers or '[]'} were running and are marked interrupted "
            f"{so_far}; they run again on --resume",
            file=sys.stderr,
            flush=True,
        )
        print(plan.resume_hint(), flush=True)
        return EXIT_STOPPED
    print(
        f"\ninterrupted ({signal_name()}): trials {numbers or '[]'} were running and are marked "
        f"interrupted {so_far}. {plan.resume_hint()}",
        flush=True,
    )
    return exit_status()


def on_disk_full(
    plan: Plan, tracker: StudyTracker, searcher: StudySearch | None, error: BaseException
) -> int:
    """The disk is full: one line, then what the Ctrl-C path does, each step on its own (a step
    the full disk refuses is left to ``--resume``); exit status 1."""
    import optuna

    print(f"error: {describe(error, plan.run_dir)}", file=sys.stderr, flush=True)

    def mark_trials() -> None:
        if searcher is not None:
            searcher.fail_awaiting()
        study = optuna.load_study(study_name=plan.space.study.name, storage=plan.storage())
        tell_from_records(study, plan.run_dir, plan.space.study.objectives)
        numbers.extend(rundir.fail_interrupted(study))

    numbers: list[int] = []
    steps = (
        ("mark the running trials interrupted", mark_trials),
        ("end their MLflow runs", lambda: tracker.mark_stale_children("interrupted: disk full")),
        ("end the runs their trials ended", lambda: end_interrupted_runs(tracker, numbers)),
        ("end the MLflow parent run", lambda: tracker.finish(status="KILLED")),
    )
    for what, step in steps:
        try:
            step()
        except Exception as failure:  # the next --resume does it
            logger.warning("could not %s (%s); --resume will", what, failure)
    print(f"\nstopped: the disk is full. {plan.resume_hint()}", flush=True)
    return EXIT_STOPPED


def fail_parent(tracker: StudyTracker, reason: str) -> None:
    try:
        tracker.client.set_tag(tracker.parent_run_id, TAG_FAIL_REASON, reason[:500])
        tracker.finish(status="FAILED")
    except Exception as error:
        logger.warning("could not mark the MLflow parent run FAILED (%s)", error)
