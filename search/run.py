"""``python search/run.py --space spaces/quickstart.yaml``: run (or resume) a PPTP search.

Order of work, so that bad input stops before anything starts and nothing finished is lost:

1. read and validate the space (errors name the file and key; exit status 2, no traceback);
2. on ``--resume``, take the run directory's lock (:mod:`search.study.lock`: a live driver there is
   refused at once, naming its PID and host);
3. check the tracking URI, the data, the resources and the Ray address (``--address`` is probed
   within seconds: :mod:`search.running.cluster`); for a new run, create the run directory and take
   its
   lock only then;
4. print the resolved space; open the Optuna study (SQLite in the run directory) and the MLflow
   parent run; on resume, mark trials a killed driver left running as interrupted (the enqueued
   ones are enqueued again) and replay what MLflow lacks (:mod:`search.sync`);
5. start Ray (in-process, or join ``--address``), cap ``max_concurrent`` to what the resources run
   at once, and train the missing reference models of the base recipe as parallel Ray tasks; a
   reference that cannot be trained stops the study before any trial;
6. Ray Tune runs the trials, :class:`search.running.samplers.StudySearch` asks Optuna for
parameters, the
   driver records every ended trial in the run directory (:mod:`search.running.bookkeeping`);
7. write the Pareto front CSV to the run directory, then bring MLflow up to date (front, tags,
   end states), print the front and where to look next.

Exit status: 0 the study has all its trials and MLflow holds them; 1 it stopped before (resume
it); 2 bad input, nothing started (or a base recipe whose references cannot be trained); 3 the
study is complete but MLflow lacks part of it (the lines say what; ``--sync`` replays it); 130
Ctrl-C, 143 SIGTERM (both stop the same way: running trials marked interrupted, the resume command
printed; a second signal ends at once: :mod:`search.running.stopping`).

This module is the flow (:func:`main`, :func:`prepare`, :func:`execute`); each stage is a module
of :mod:`search.running` (the plan and its checks, opening the study, the references, the Tune
session, the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # `python search/run.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pptp.errors import ConfigError
from search.cli import manual
from search.cli.entry import (
    add_output_flags,
    local_ray_environment,
    quiet_environment,
    run_command,
    verbosity,
)
from search.running.disk_full import describe, disk_full
from search.running.stopping import (
    end_at_once_on_another,
    exit_status,
    restore,
    signal_name,
    stop_on_signals,
)
from search.tracking.uris import redact

if TYPE_CHECKING:
    import optuna

    from search.running.plan import Plan
    from search.space import Space
    from search.study.lock import RunLock
    from search.tracking.study_tracker import StudyTracker

# The stages (search.running, pptp.data) import optuna, torch and ray: 3-7 s on 2 cores that
# --help and a space refused on its structure do not pay; prepare and execute import them
# (search.running.stopping and .disk_full import the standard library only).

quiet_environment()  # before anything imports ray or mlflow

logger = logging.getLogger("search.run")  # not __main__ under `python search/run.py`


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of ``run`` under its manual page (:mod:`search.cli.manual`)."""
    p = manual.parser("run", prog)
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
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
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
    from search.study import rundir

    try:
        name = load_space(args.space).study.name
        return str(rundir.existing_run_dir(name, None))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def prepare(args: argparse.Namespace) -> Plan:
    """Every check that can fail on bad input; starts nothing (takes the run directory's lock,
    and releases it when a check fails: a refused run leaves no ``driver.json`` behind)."""
    taken: list[RunLock] = []
    try:
        return _prepare(args, taken)
    except BaseException:
        for lock in taken:
            lock.release()
        raise


def _prepare(args: argparse.Namespace, taken: list[RunLock]) -> Plan:
    from search.space import load_space

    space = load_space(args.space)  # first: a bad file is refused before the heavy imports

    from pptp.bank import check_bank_root
    from pptp.data import check_data
    from search.running.cluster import probe_ray_address
    from search.running.plan import Plan, check_local_resources, shared_state
    from search.running.steering import localization_enqueue
    from search.study import rundir
    from search.study.backup import check_study_db
    from search.study.lock import RunLock
    from search.study.shared_study import check_storage, has_study, open_storage
    from search.tracking.uris import check_tracking, resolve_tracking_uri

    if args.seed is not None:
        space = dataclasses.replace(space, study=dataclasses.replace(space.study, seed=args.seed))
    if args.data_dir is not None:
        space = dataclasses.replace(space, fixed={**space.fixed, "data.data_dir": args.data_dir})
    if args.output:
        rundir.check_output(Path(args.output))  # before MLflow or the run directory is created
    check_bank_root(space.base_config().attack.bank_dir)
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
            taken.append(lock)
            state = rundir.read_state(run_dir)
            if not state.storage:  # damaged, empty or missing: refused, never replaced
                check_study_db(run_dir, space.study.name)
            if storage_url and not state.storage:
                raise ConfigError(
                    f"--resume --storage: {run_dir} keeps its study in its own study.db; resume "
                    "it without --storage (a study cannot move into a database)"
                )
            storage_url = storage_url or state.storage
        else:  # the study of another machine: its state comes from the database
            state = shared_state(storage_url, space)
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
    if args.address is None:  # resources before data: nothing is downloaded for a machine
        check_local_resources(space)  # that cannot run the study
    else:
        probe_ray_address(args.address)
    check_data(space.base_config().data)
    check_models(space)
    seeded = localization_enqueue(space) if state is None else []
    if run_dir is None:
        run_dir = rundir.new_run_dir(space.study.name, args.output)
        lock = RunLock(run_dir)
        lock.acquire()  # a live driver there: RunDirBusy naming it
        taken.append(lock)
        try:
            rundir.refuse_existing_study(run_dir)
        except ConfigError:
            lock.release()
            raise
    assert lock is not None  # taken above, on both paths
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


def execute(plan: Plan) -> int:
    handlers = stop_on_signals()  # from here SIGTERM stops like Ctrl-C: marked, KILLED, resumable
    try:
        return _execute(plan)
    except Exception as error:  # a full disk outside the session: one line, not a traceback
        full = disk_full(error)
        if full is None:
            raise
        from search.running.plan import EXIT_STOPPED

        print(f"error: {describe(full, plan.run_dir)}. {plan.resume_hint()}", file=sys.stderr)
        return EXIT_STOPPED
    finally:
        if plan.claim is not None:
            plan.claim.release()
        plan.lock.release()
        restore(handlers)
        if plan.discard:  # a failed start leaves no run directory behind
            shutil.rmtree(plan.run_dir, ignore_errors=True)
            print(
                f"nothing kept: no trial had started, so {plan.run_dir} was removed and its MLflow "
                "parent run deleted; fix the cause and run the same command again",
                file=sys.stderr,
            )


def _execute(plan: Plan) -> int:
    import optuna

    from pptp.fileio import atomic_write
    from search.running.ending import discard_start, never_started
    from search.running.opening import open_parent_run, open_study
    from search.study import rundir
    from search.study.reconcile import tell_from_records

    optuna.logging.set_verbosity(optuna.logging.WARNING)

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

    study = open_study(plan)
    told = tell_from_records(study, run_dir, space.study.objectives) if plan.state else []
    if told:
        print(f"resume      trials {told} had ended (their records say how): told Optuna")
    interrupted = rundir.fail_interrupted(study)
    tracker = open_parent_run(plan)
    try:
        return _with_parent(plan, tracker, study, interrupted)
    except ConfigError:  # the references or the cluster refused the study
        if never_started(plan, study):
            discard_start(plan, tracker)
            plan.discard = True
        raise
    except KeyboardInterrupt:  # outside the session (which handles its own)
        end_at_once_on_another(plan.resume_hint())
        try:
            tracker.finish(status="KILLED")
        except Exception as error:
            logger.warning("could not mark the MLflow parent run KILLED (%s)", error)
        print(
            f"\ninterrupted ({signal_name()}; no trial was running). {plan.resume_hint()}",
            flush=True,
        )
        return exit_status()


def _with_parent(
    plan: Plan, tracker: StudyTracker, study: optuna.Study, interrupted: list[int]
) -> int:
    """Everything after the parent run exists: state, resume bookkeeping, the session, the end."""
    from search.running.ending import finish
    from search.running.opening import record_run, report_interrupted
    from search.running.session import run_session
    from search.study import rundir
    from search.study.reconcile import end_interrupted_runs
    from search.sync import SyncReport, replay_records, store_identity

    identity = store_identity(plan.tracking_uri)
    record_run(plan, tracker, study)
    report = SyncReport(parent_run_id=tracker.parent_run_id)
    if interrupted:
        report_interrupted(tracker, study, interrupted)
    if plan.state is not None:  # every interrupted trial's runs KILLED, however they ended
        ended = end_interrupted_runs(tracker, rundir.interrupted_numbers(study))
        if ended:
            print(f"resume      {ended} MLflow runs of interrupted trials ended KILLED")
    if plan.state is not None:
        try:
            replay_records(tracker, plan.run_dir, study, report)
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
        stopped = run_session(plan, tracker, study, remaining)
        if stopped is not None:
            return stopped
    return finish(plan, tracker, identity, report)


def check_models(space: Space) -> None:
    """Build each user model the study can train (``model.name`` fixed, or each choice) once for
    the data: a factory that cannot be imported, returns no module, has bad layer groups or
    gives the wrong output shape stops here, naming the space file, before anything starts; so
    does a user's model with BatchNorm in a study that can run a mechanism needing per-example
    gradients (the space's own check reads model.norm, which a user's model does not use)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from pptp.models import check_model
    from search.space.checks import per_example_mechanisms, possible_values
    from search.space.errors import space_error

    base = space.base_config()
    for where, name in possible_values("model.name", base.to_flat(), space.params):
        try:
            model = check_model(dataclasses.replace(base.model, name=name), base.data)
        except ConfigError as error:
            key = where if error.key in (None, "model.name") else f"fixed.{error.key}"
            raise space_error(str(space.path), key, str(error)) from None
        batch_norm = model is not None and any(isinstance(m, _BatchNorm) for m in model.modules())
        for mechanism_key, mechanism in per_example_mechanisms(base, space.params):
            if batch_norm:
                raise space_error(
                    str(space.path),
                    mechanism_key,
                    f"{mechanism} needs per-example gradients, which the BatchNorm layers of "
                    f"{name} make ill-defined; use GroupNorm or LayerNorm in the model",
                )


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


if __name__ == "__main__":
    sys.exit(main())
