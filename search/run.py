"""``python search/run.py --space spaces/quickstart.yaml``: run (or resume) a PPTP search.

Order of work, so that bad input stops before anything starts and nothing finished is lost:

1. read and validate the space (errors name the file and key; exit status 2, no traceback);
2. on ``--resume``, take the run directory's lock (:mod:`search.lock`: a live driver there is
   refused at once, naming its PID and host);
3. check the tracking URI, the data, the resources and the Ray address (``--address`` is probed
   within seconds: :mod:`search.cluster`); for a new run, create the run directory and take its
   lock only then;
4. print the resolved space; open the Optuna study (SQLite in the run directory) and the MLflow
   parent run; on resume, mark trials a killed driver left running as interrupted (the enqueued
   ones are enqueued again) and replay what MLflow lacks (:mod:`search.sync`);
5. start Ray (in-process, or join ``--address``), cap ``max_concurrent`` to what the resources run
   at once, and train the missing reference models of the base recipe as parallel Ray tasks; a
   reference that cannot be trained stops the study before any trial;
6. Ray Tune runs the trials, :class:`search.samplers.StudySearch` asks Optuna for parameters, the
   driver records every ended trial in the run directory (:mod:`search.bookkeeping`);
7. write the Pareto front CSV to the run directory, then bring MLflow up to date (front, tags,
   end states), print the front and where to look next.

Exit status: 0 the study has all its trials and MLflow holds them; 1 it stopped before (resume
it); 2 bad input, nothing started (or a base recipe whose references cannot be trained); 3 the
study is complete but MLflow lacks part of it (the lines say what; ``--sync`` replays it); 130
Ctrl-C (the resume command is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python search/run.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pptp.data import check_data
from pptp.errors import ConfigError
from pptp.fileio import atomic_write
from search import rundir
from search.cli import (
    add_output_flags,
    local_ray_environment,
    quiet_environment,
    run_command,
    verbosity,
)
from search.tracking.uris import redact

quiet_environment()  # before anything imports ray or mlflow

logger = logging.getLogger("search.run")

EXIT_STOPPED, EXIT_TRACKING_INCOMPLETE, EXIT_INTERRUPTED = 1, 3, 130


class ReferencesFailed(ConfigError):
    """A reference model of the base recipe cannot be trained because of the recipe (it diverges,
    it stays at chance, the config is refused): no trial could be scored, so nothing starts."""


class ReferencesUnavailable(RuntimeError):
    """A reference model could not be trained for another reason (a full disk, a lost worker)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="search/run.py",
        description="Search PPTP configs for accuracy against membership-inference risk.",
    )
    p.add_argument(
        "--space",
        help="the space file (YAML), e.g. spaces/quickstart.yaml (with --sync: optional)",
    )
    p.add_argument(
        "--n-trials",
        type=int,
        help="total trials of the study (overrides the space; "
        "with --resume, extends a finished study)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest run of this study (or the one --output names)",
    )
    mode.add_argument(
        "--sync",
        action="store_true",
        help="replay into MLflow what the run directory (--output) holds and MLflow lacks, "
        "then stop (nothing is trained)",
    )
    p.add_argument("--address", help="join a running Ray cluster (e.g. auto or ray://host:10001)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: the embedded SQLite store under mlflow/)",
    )
    p.add_argument("--output", help="run directory (default: runs/<study>/<timestamp>)")
    p.add_argument(
        "--storage",
        help="Optuna storage: a database URL every driver of the study reaches, e.g. "
        "postgresql://user@db-host/optuna (default: study.db in the run directory); with "
        "--resume, continues the study from any machine (a new --output there)",
    )
    p.add_argument("--seed", type=int, help="sampler seed (overrides study.seed)")
    p.add_argument("--data-dir", help="where the dataset lives on disk (overrides data.data_dir)")
    add_output_flags(p)
    args = p.parse_args(argv)
    if not args.space and not (args.sync and args.output):
        p.error("--space is required (with --sync, --output alone will do)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.address in (None, "", "local") and not args.sync:
        local_ray_environment()  # before anything imports ray: a local Ray listens on 127.0.0.1
    if args.sync:
        from search import sync

        sync_argv = ["--run", _sync_run_dir(args)]
        if args.tracking_uri:
            sync_argv += ["--tracking-uri", args.tracking_uri]
        return sync.main(sync_argv + (["--quiet"] if args.quiet else []))
    return run_command(args, prepare, execute)


def _sync_run_dir(args: argparse.Namespace) -> str:
    if args.output:
        return str(args.output)
    from search.space import load_space

    try:
        name = load_space(args.space).study.name
        return str(rundir.existing_run_dir(name, None))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


@dataclasses.dataclass
class Plan:
    args: argparse.Namespace
    space: Any  # search.space.Space
    run_dir: Path
    tracking_uri: str
    n_trials: int
    state: Any  # search.rundir.RunState | None (None for a new run)
    seeded: list[dict[str, Any]]  # first trials from study.localization (search/steering.py)
    lock: Any  # search.lock.RunLock, held
    verbosity: int = 0
    storage_url: str | None = None  # --storage (or the run's): the study in a shared database
    claim: Any = None  # search.shared_study.DriverClaim, held while the driver runs

    def say(self, line: str) -> None:
        """A progress line (not with --quiet)."""
        if self.verbosity >= 0:
            print(line, flush=True)


def prepare(args: argparse.Namespace) -> Plan:
    """Every check that can fail on bad input; starts nothing (takes the run directory's lock)."""
    from search.cluster import probe_ray_address
    from search.lock import RunLock
    from search.shared_study import check_storage, has_study, open_storage
    from search.space import load_space
    from search.steering import localization_enqueue
    from search.tracking import check_tracking, resolve_tracking_uri

    space = load_space(args.space)
    if args.seed is not None:
        space = dataclasses.replace(space, study=dataclasses.replace(space.study, seed=args.seed))
    if args.data_dir is not None:
        space = dataclasses.replace(space, fixed={**space.fixed, "data.data_dir": args.data_dir})
    n_trials = args.n_trials if args.n_trials is not None else space.study.n_trials
    if n_trials < 1:
        raise ConfigError(f"--n-trials = {n_trials} must be >= 1")
    storage_url = args.storage
    if storage_url:
        check_storage(storage_url)
    state = None
    lock = None
    run_dir: Path | None = None
    if args.resume:
        run_dir = rundir.resume_target(space.study.name, args.output, storage_url)
        if run_dir is not None:
            lock = RunLock(run_dir)
            lock.acquire()  # a live driver there: RunDirBusy, before anything is changed
            state = rundir.read_state(run_dir)
            if storage_url and not state.storage:
                raise ConfigError(
                    f"--resume --storage: {run_dir} keeps its study in its own study.db; resume "
                    "it without --storage (a study cannot move into a database)"
                )
            storage_url = storage_url or state.storage
        else:  # the study of another machine: its state comes from the database
            state = _shared_state(storage_url, space)
        if state.space_sha256 != space.sha256:
            raise ConfigError(
                f"{args.space} changed since {run_dir or 'the study'} started (sha256 "
                f"{state.space_sha256[:12]} then, {space.sha256[:12]} now); a study resumes with "
                "the same space: restore the file, or start a new run without --resume"
            )
        uri = resolve_tracking_uri(args.tracking_uri or state.tracking_uri)
    else:
        uri = resolve_tracking_uri(args.tracking_uri)
        if storage_url and has_study(open_storage(storage_url), space.study.name):
            raise ConfigError(
                f"--storage {redact(storage_url)} already holds a study named "
                f"{space.study.name!r}; pass --resume to continue it (from any machine), or "
                "rename the study (study.name)"
            )
    check_tracking(uri)
    check_data(space.base_config().data)
    if args.address is None:
        check_local_resources(space)
    else:
        probe_ray_address(args.address)
    seeded = localization_enqueue(space) if state is None else []
    if run_dir is None:
        run_dir = rundir.new_run_dir(space.study.name, args.output)
        lock = RunLock(run_dir)
        lock.acquire()  # a live driver there: RunDirBusy naming it
        try:
            rundir.refuse_existing_study(run_dir)
        except ConfigError:
            lock.release()
            raise
    return Plan(
        args,
        space,
        run_dir,
        uri,
        n_trials,
        state,
        seeded,
        lock,
        verbosity(args),
        storage_url=storage_url,
    )


def _shared_state(storage_url: str | None, space: Any) -> Any:
    """The run state a study in a shared database records (:mod:`search.shared_study`), for a
    driver that resumes it from a new run directory (another machine)."""
    import optuna

    from search.shared_study import RUN_ATTR, open_storage, read_run

    assert storage_url is not None
    name = space.study.name
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    except KeyError:
        raise ConfigError(
            f"--resume: {redact(storage_url)} holds no study named {name!r}; start it without "
            "--resume"
        ) from None
    shared = read_run(study)
    if shared is None:
        raise ConfigError(
            f"--resume: study {name!r} in {redact(storage_url)} was not started by search/run.py "
            f"(no {RUN_ATTR} user attribute); resume it from its own run directory"
        )
    return rundir.RunState(
        study_name=name,
        space_path=str(space.path),
        space_sha256=shared.space_sha256,
        tracking_uri=shared.tracking_uri,
        parent_run_id=shared.parent_run_id,
        experiment_id=shared.experiment_id,
        cwd=str(Path.cwd()),
        storage=storage_url,
    )


def check_local_resources(space: Any) -> None:
    import torch

    res, key = space.study.resources, f"{space.path}: study.resources"
    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    if res.cpus > cpus:
        raise ConfigError(f"{key}.cpus = {res.cpus:g} per trial, but this machine has {cpus} CPUs")
    if res.gpus > gpus:
        raise ConfigError(
            f"{key}.gpus = {res.gpus:g} per trial, but this machine has {gpus} GPUs; set "
            "study.resources.gpus: 0 to run on the CPU, or --address to join a GPU cluster"
        )


def execute(plan: Plan) -> int:
    try:
        return _execute(plan)
    finally:
        if plan.claim is not None:
            plan.claim.release()
        plan.lock.release()


def _storage(plan: Plan) -> Any:
    """The study's Optuna storage: the shared database, or the run directory's study.db."""
    return rundir.storage(plan.run_dir, uri=plan.storage_url)


def _execute(plan: Plan) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from search.tracking import StudyTracker, TrackingUnavailable

    space, run_dir = plan.space, plan.run_dir
    if plan.lock.stale is not None:
        print(
            f"lock        took over {run_dir} from a driver that died holding it "
            f"({plan.lock.stale.describe()})"
        )
    print(space.describe())
    print(f"run dir     {run_dir}")
    print(f"tracking    {redact(plan.tracking_uri)}", flush=True)
    if plan.storage_url:
        print(f"optuna      {redact(plan.storage_url)} (shared)", flush=True)
    atomic_write(run_dir / "space.yaml", _yaml(space.resolved()))

    try:
        study = optuna.create_study(
            storage=_storage(plan),
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
        from search.shared_study import DriverClaim

        claim = DriverClaim(plan.storage_url, space.study.name, run_dir)
        claim.acquire()  # before anything touches the study: a live driver's trials stay live
        plan.claim = claim
    if plan.state is None:
        for params in [*space.study.enqueue, *plan.seeded]:
            rundir.enqueue(study, params)
        if space.study.localization:
            study.set_user_attr("localization", str(space.study.localization.get("run")))
    interrupted = rundir.fail_interrupted(study)
    tracker = StudyTracker(plan.tracking_uri, space.study.name, run_dir=run_dir)
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
    try:
        return _with_parent(plan, tracker, study, interrupted)
    except KeyboardInterrupt:  # outside the session (which handles its own)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            tracker.finish(status="KILLED")
        except Exception as error:
            logger.warning("could not mark the MLflow parent run KILLED (%s)", error)
        print(f"\ninterrupted (no trial was running). {_resume_hint(plan)}", flush=True)
        return EXIT_INTERRUPTED


def _with_parent(plan: Plan, tracker: Any, study: Any, interrupted: list[int]) -> int:
    """Everything after the parent run exists: state, resume bookkeeping, the session, the end."""
    from search.sync import SyncReport, replay_records, store_identity

    space, run_dir = plan.space, plan.run_dir
    identity = store_identity(plan.tracking_uri)
    rundir.write_state(
        run_dir,
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
        from search.shared_study import SharedRun, publish_run

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
    report = SyncReport(parent_run_id=tracker.parent_run_id)
    if interrupted:
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
    if plan.state is not None:
        try:
            replay_records(tracker, run_dir, study, report)
        except Exception as error:
            report.missing.append(f"the trial runs: MLflow could not be read ({error})")
        for line in report.lines():
            print(line)
    remaining = plan.n_trials - rundir.finished_count(study)
    if remaining <= 0:
        print(
            f"the study already has {plan.n_trials} finished trials; pass --n-trials N to extend it"
        )
    else:
        stopped = _run_session(plan, tracker, study, remaining)
        if stopped is not None:
            return stopped
    return _finish(plan, tracker, identity, report)


def _run_session(plan: Plan, tracker: Any, study: Any, remaining: int) -> int | None:
    """Ray, references and trials; returns an exit status when the session was interrupted."""
    import ray

    from search.bookkeeping import Bookkeeper
    from search.samplers import StudySearch
    from search.space import build_sampler

    space = plan.space
    searcher: StudySearch | None = None
    try:
        _start_ray(plan)
        concurrency = _concurrency(plan)
        references = _train_references(plan)
        ctx = _trial_context(plan, tracker, references.config)
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
            storage=_storage(plan),
            constraints=space.study.constraints,
            wanted=ctx.wanted,
        )
        keeper = Bookkeeper(
            run_dir=plan.run_dir,
            searcher=searcher,
            tracker=tracker,
            flat_config=lambda sampled: space.trial_config(sampled).to_flat(),
        )
        plan.say(f"trials      {remaining} to run ({plan.n_trials} in the study)")
        _run_tuner(plan, searcher, ctx, remaining, concurrency, keeper, references.signals)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up takes seconds: let it end
        ray.shutdown()
        return _interrupted(plan, tracker, searcher)
    except ConfigError as error:  # the cluster, its resources, a recipe that cannot train
        ray.shutdown()
        _fail_parent(tracker, str(error))
        raise
    except ReferencesUnavailable as error:
        ray.shutdown()
        _fail_parent(tracker, str(error))
        print(f"error: {error}", file=sys.stderr)
        return EXIT_STOPPED
    finally:
        ray.shutdown()
    searcher.fail_awaiting()
    leftover = rundir.fail_interrupted(study)  # Tune ended without telling them: never lost
    if leftover:
        logger.warning("trials %s were still RUNNING when Tune ended: marked interrupted", leftover)
    return None


def _interrupted(plan: Plan, tracker: Any, searcher: Any) -> int:
    import optuna

    from search.failures import INTERRUPTED_REASON

    if searcher is not None:
        searcher.fail_awaiting()
    study = optuna.load_study(study_name=plan.space.study.name, storage=_storage(plan))
    numbers = rundir.fail_interrupted(study)
    try:
        tracker.mark_stale_children(f"{INTERRUPTED_REASON} (Ctrl-C)", status="KILLED")
    except Exception as error:
        logger.warning("could not mark the interrupted MLflow runs KILLED (%s)", error)
    _write_front_csv(plan.run_dir, _rows(plan, study))
    from search.sync import finish_tracking

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
    print(
        f"\ninterrupted: trials {numbers or '[]'} were running and are marked interrupted "
        f"({rundir.finished_count(study)} of {plan.n_trials} finished). {_resume_hint(plan)}",
        flush=True,
    )
    return EXIT_INTERRUPTED


def _fail_parent(tracker: Any, reason: str) -> None:
    from search.tracking import TAG_FAIL_REASON

    try:
        tracker.client.set_tag(tracker.parent_run_id, TAG_FAIL_REASON, reason[:500])
        tracker.finish(status="FAILED")
    except Exception as error:
        logger.warning("could not mark the MLflow parent run FAILED (%s)", error)


def _finish(plan: Plan, tracker: Any, identity: Any, report: Any) -> int:
    """Front CSV first (whatever MLflow does), then MLflow, then the table and what to do next."""
    import optuna

    from search.pareto import format_front
    from search.sync import finish_tracking, store_replaced

    space = plan.space
    study = optuna.load_study(study_name=space.study.name, storage=_storage(plan))
    rows = _rows(plan, study)
    _write_front_csv(plan.run_dir, rows)
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
    print(
        f"\nPareto front ({sum(r['pareto'] for r in rows)} of {len(rows)} finished trials, "
        f"{sum(r['state'] == 'FAIL' for r in rows)} failed):"
    )
    print(format_front(rows, space.study.objectives))
    for line in report.lines():
        print(line)
    print(_publish(plan, mlflow=not store_replaced(plan.tracking_uri, identity)))
    if not complete:
        print(f"\nstopped with {done} of {plan.n_trials} trials finished. {_resume_hint(plan)}")
        return EXIT_STOPPED
    if report.missing:
        print(
            "\nthe study is complete; MLflow lacks what is listed above. Replay it with:\n  "
            f"python search/run.py --sync --output {shlex.quote(str(plan.run_dir))}"
        )
        return EXIT_TRACKING_INCOMPLETE
    return 0


def _rows(plan: Plan, study: Any) -> list[dict[str, Any]]:
    """The trial rows (search.pareto), with the MLflow run ids the run directory's records hold."""
    from search import records
    from search.pareto import trial_rows
    from search.sync import with_run_ids

    held = {n: r.spool.run_id for n, r in records.read_all(plan.run_dir).items() if r.spool.run_id}
    return with_run_ids(trial_rows(study, plan.space.study.objectives), held)


def _start_ray(plan: Plan) -> None:
    """``ray.init``; a cluster that answered the probe but cannot be joined is bad input."""
    import ray

    from search.cluster import RayUnreachable

    if _local_ray(plan):
        local_ray_environment()  # never for a cluster the user started: their settings hold
    try:
        ray.init(**_ray_init_args(plan))
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
    if not _local_ray(plan):
        return {"address": plan.args.address, "log_to_driver": verbose}
    return {
        "num_cpus": os.cpu_count(),
        "include_dashboard": False,
        "log_to_driver": verbose,
        "object_store_memory": 256 * 1024 * 1024,
        "configure_logging": False,
    }


def _concurrency(plan: Plan) -> int:
    """``study.max_concurrent`` capped to what the cluster's resources run at once."""
    import ray

    from search.cluster import concurrency_cap

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


def _trial_context(plan: Plan, tracker: Any, references: Any) -> Any:
    from search.trainable import TrialContext

    return TrialContext(
        space=plan.space,
        tracking_uri=plan.tracking_uri,
        experiment_id=tracker.experiment_id,
        parent_run_id=tracker.parent_run_id,
        references=references,
        overrides=rundir.absolute_paths(plan.space.base_config()),
    )


#: searched keys that change which references a trial needs (besides data.* and model.*): with
#: any of them the trials load their references from the bank themselves, as before
_REFERENCE_KEYS = frozenset(
    {
        "train.augment",
        "train.crop_pad",
        "attack.query_augment",
        "attack.n_references",
        "attack.attacks",
        "attack.adaptive",
    }
)


@dataclasses.dataclass(frozen=True)
class References:
    """What the reference stage hands the trials.

    ``config``: the recipe the screening references follow (None when the space searches data or
    model keys: each trial then needs references of its own). ``signals``: an ``ObjectRef`` to
    the :class:`~pptp.bank.ReferenceSignals` the driver loaded once and put in Ray's object store
    (None when the trials load their own from the bank, or need none). ``trained``: how many
    reference models this stage trained.
    """

    config: Any  # pptp.config.TrialConfig | None
    signals: Any = None  # ray.ObjectRef | None
    trained: int = 0


def _train_references(plan: Plan) -> References:
    """Train the base recipe's missing reference models as parallel Ray tasks, store them in the
    driver's bank, check that every reference learned (above chance), and put their signals in
    Ray's object store for the trials.

    Each task trains on whichever node Ray picks and *returns* the entry
    (:class:`pptp.bank.ReferenceEntry`, the ``.npz`` bytes and their metadata) to the driver,
    which writes it into its bank (``attack.bank_dir``): no node writes a bank of its own disk,
    and no trial opens one. The driver then loads the K references once and puts them in Ray's
    object store; every trial reads them there, on its node (:func:`search.trainable.trainable`).

    When the space searches data or model keys, every trial needs references of its own: they are
    trained inside the trial, from the trial's node's ``attack.bank_dir`` (as before; a shared
    folder, e.g. NFS, avoids training them once per node). The same holds, for the recipe's own
    references, when it searches a key of :data:`_REFERENCE_KEYS` (the queries, the number of
    references, the attacks or adaptive audits).

    A reference that cannot be trained raises :class:`ReferencesFailed` when the recipe is the
    cause (exit status 2), or :class:`ReferencesUnavailable` otherwise (a full disk, a lost
    worker; exit status 1).
    """
    import ray

    from pptp.bank import ReferenceBank
    from pptp.signals import resolve_queries
    from pptp.trial import references_needed
    from search.progress import duration, eta

    space = plan.space
    base = space.base_config()
    base = base.replace(**rundir.absolute_paths(base))
    if any(k.startswith(("data.", "model.")) for k in space.params):
        logger.warning("the space searches data/model keys: each trial trains its own references")
        return References(None)
    n = references_needed(base)
    if not n:
        return References(base)
    bank = ReferenceBank(base.attack.bank_dir)
    queries = resolve_queries(base)
    missing = bank.missing(base, n, queries=queries)
    plan.say(f"references  {n} needed, {n - len(missing)} in the bank ({bank.entry_dir(base)})")
    res = space.study.resources
    flat = base.to_flat()
    options = {"num_cpus": res.cpus, "num_gpus": res.gpus}
    pending = [
        ray.remote(_train_reference).options(**options).remote(flat, i, list(queries), res.cpus)
        for i in missing
    ]
    start, done = time.perf_counter(), 0
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in ready:
                bank.store(ray.get(ref))
                done += 1
                elapsed = time.perf_counter() - start
                plan.say(
                    f"references  {done}/{len(missing)} trained ({duration(elapsed)}, "
                    f"{eta(elapsed, done, len(missing))})"
                )
    except ray.exceptions.RayTaskError as error:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise _reference_failure(error) from None
    except OSError as error:  # the driver's bank could not take an entry (a full disk)
        for ref in pending:
            ray.cancel(ref, force=True)
        raise _reference_failure(error) from None
    signals = bank.load(base, n, queries=queries)
    try:
        _require_learned(signals, base, what=str(bank.entry_dir(base)))
    except Exception as error:
        raise _reference_failure(error) from None
    searched = sorted(_REFERENCE_KEYS & set(space.params))
    if searched:
        logger.warning(
            "the space searches %s: each trial loads its references from the bank itself",
            ", ".join(searched),
        )
        return References(base, None, len(missing))
    shipped = ray.put(signals)
    plan.say(
        f"references  {n} shipped to the trials through Ray's object store "
        f"({signals.logits.nbytes / 2**20:.1f} MiB)"
    )
    return References(base, shipped, len(missing))


def _reference_failure(error: Exception) -> Exception:
    from pptp.errors import ModelAtChance
    from pptp.train import TrainingDiverged
    from search.failures import exception_reason

    cause = getattr(error, "cause", None) or error
    reason = exception_reason(cause)
    what = (
        "the base recipe's reference models cannot be trained: "
        f"{reason}. Every trial is scored against them, so no trial was started"
    )
    if isinstance(cause, ConfigError | TrainingDiverged | ModelAtChance):
        return ReferencesFailed(
            f"{what}; fix the recipe in the space's fixed section (train.lr, train.epochs, "
            "model.norm, ...)"
        )
    return ReferencesUnavailable(f"{what}; fix the cause and run again with --resume")


def _train_reference(flat: dict[str, Any], index: int, queries: list[str], cpus: float) -> Any:
    """A Ray task on any node: train reference ``index`` with as many torch threads as the
    ``cpus`` the task reserved, and return it (:class:`pptp.bank.ReferenceEntry`, whose meta
    records ``torch_threads``); it writes nothing on that node."""
    import logging as _logging

    from pptp.bank import train_entry
    from pptp.config import TrialConfig
    from pptp.threads import torch_threads

    _logging.basicConfig(level=_logging.INFO)
    with torch_threads(cpus):
        return train_entry(TrialConfig.from_flat(flat), index, queries=queries)


def _check_references(root: str, flat: dict[str, Any], n: int) -> None:
    """Raise :class:`~pptp.errors.ModelAtChance` naming the first of the ``n`` references of the
    bank at ``root`` whose recorded test accuracy is at chance (a trial scored against it would
    fail)."""
    from pptp.bank import ReferenceBank
    from pptp.config import TrialConfig

    cfg = TrialConfig.from_flat(flat)
    bank = ReferenceBank(root)
    _require_learned(bank.load(cfg, n), cfg, what=str(bank.entry_dir(cfg)))


def _require_learned(signals: Any, cfg: Any, *, what: str) -> None:
    """:class:`~pptp.errors.ModelAtChance` for the first reference of ``signals``
    (:class:`~pptp.bank.ReferenceSignals`) whose test accuracy is at chance on ``cfg``'s test
    set (the driver builds the pool for its labels: the data is on the driver's disk, which
    :func:`pptp.data.check_data` made sure of)."""
    from pptp.chance import require_above_chance
    from pptp.data import build_pool

    labels = build_pool(cfg.data).y_test.cpu().numpy()
    if len(labels) == 0:
        return
    for i, accuracy in enumerate(signals.test_acc):
        require_above_chance(float(accuracy), labels, what=f"reference model {i} of {what}")


def _run_tuner(
    plan: Plan,
    searcher: Any,
    ctx: Any,
    remaining: int,
    concurrency: int,
    keeper: Any,
    reference_signals: Any = None,
) -> None:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.progress import Progress
    from search.trainable import trainable

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
            num_samples=remaining,
            reuse_actors=True,  # a trial process imports torch and mlflow once, not per trial
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(plan.run_dir / "ray"),
            verbose=0,
            callbacks=[
                keeper,
                Progress(
                    total=remaining,
                    objectives=plan.space.study.objectives,
                    verbosity=plan.verbosity,
                ),
            ],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()


def _write_front_csv(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(r for r in rows if r["pareto"])
    atomic_write(run_dir / "pareto_front.csv", buffer.getvalue())


def _resume_hint(plan: Plan) -> str:
    command = (
        f"python search/run.py --space {shlex.quote(str(plan.space.path))} "
        f"--resume --output {shlex.quote(str(plan.run_dir))}"
    )
    if not plan.storage_url:
        return f"Resume with:\n  {command}"
    storage = shlex.quote(redact(plan.storage_url))
    return (
        f"Resume with:\n  {command} --storage {storage}\nor, from another machine:\n  "
        f"python search/run.py --space {shlex.quote(str(plan.space.path))} --resume "
        f"--storage {storage} --output <a new run directory>"
    )


def _publish(plan: Plan, *, mlflow: bool) -> str:
    """Name and describe the trial runs, save the MLflow views, write ``report.html`` (and attach
    it), and return what to print: the report and where to look next (:mod:`search.publish`). A
    failure here costs the study nothing: it is a warning, and ``pptp-search report`` redoes it."""
    from search.publish import publish_study
    from search.ui import where_to_look

    try:
        return (
            "\n"
            + publish_study(plan.run_dir, tracking_uri=plan.tracking_uri, mlflow=mlflow).summary()
        )
    except Exception as error:  # the study is done and saved; the report is a convenience
        logger.warning("could not write the report (%s: %s)", type(error).__name__, error)
        return "\n" + where_to_look(plan.run_dir, tracking_uri=plan.tracking_uri, links=None)


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


if __name__ == "__main__":
    sys.exit(main())
