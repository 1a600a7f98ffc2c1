"""``python search/run.py --space spaces/quickstart.yaml``: run (or resume) a PPTP search.

Order of work, so that bad input stops before anything starts:

1. read and validate the space (errors name the file and key; exit status 2, no traceback);
2. choose the run directory, check the tracking URI, the resources and the data;
3. print the resolved space; open the Optuna study (SQLite in the run directory) and the MLflow
   parent run; on resume, mark trials a killed driver left running as failed;
4. start Ray (in-process, or ``--address`` to join a cluster) and train the missing reference
   models of the base recipe as parallel Ray tasks;
5. Ray Tune runs the trials, :class:`search.samplers.StudySearch` asks Optuna for parameters;
6. log the Pareto front to MLflow, print it, and say where to look next.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python search/run.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pptp.errors import ConfigError
from pptp.train import check_data
from search import rundir
from search.cli import quiet_environment, run_command

quiet_environment()  # before anything imports ray or mlflow

logger = logging.getLogger("search.run")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="search/run.py",
        description="Search PPTP configs for accuracy against membership-inference risk.",
    )
    p.add_argument(
        "--space", required=True, help="the space file (YAML), e.g. spaces/quickstart.yaml"
    )
    p.add_argument(
        "--n-trials",
        type=int,
        help="total trials of the study (overrides the space; "
        "with --resume, extends a finished study)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest run of this study (or the one --output names)",
    )
    p.add_argument("--address", help="join a running Ray cluster (e.g. auto or ray://host:10001)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: the embedded SQLite store under mlflow/)",
    )
    p.add_argument("--output", help="run directory (default: runs/<study>/<timestamp>)")
    p.add_argument("--seed", type=int, help="sampler seed (overrides study.seed)")
    p.add_argument("--data-dir", help="where the dataset lives on disk (overrides data.data_dir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv), prepare, execute)


@dataclasses.dataclass
class Plan:
    args: argparse.Namespace
    space: Any  # search.space.Space
    run_dir: Path
    tracking_uri: str
    n_trials: int
    state: Any  # search.rundir.RunState | None (None for a new run)
    seeded: list[dict[str, Any]]  # first trials from study.localization (search/steering.py)


def prepare(args: argparse.Namespace) -> Plan:
    """Every check that can fail on bad input; starts nothing."""
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
    state = None
    if args.resume:
        run_dir = rundir.existing_run_dir(space.study.name, args.output)
        state = rundir.read_state(run_dir)
        if state.space_sha256 != space.sha256:
            raise ConfigError(
                f"{args.space} changed since {run_dir} started (sha256 {state.space_sha256[:12]} "
                f"then, {space.sha256[:12]} now); a study resumes with the same space: restore "
                "the file, or start a new run without --resume"
            )
        uri = resolve_tracking_uri(args.tracking_uri or state.tracking_uri)
    else:
        uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking(uri)
    check_data(space.base_config().data)
    if args.address is None:
        check_local_resources(space)
    seeded = localization_enqueue(space) if state is None else []
    if state is None:
        run_dir = rundir.new_run_dir(space.study.name, args.output)
    return Plan(args, space, run_dir, uri, n_trials, state, seeded)


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
    import optuna
    import ray
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from search.pareto import format_front, trial_rows
    from search.samplers import StudySearch
    from search.space import build_sampler
    from search.tracking import StudyTracker

    space, run_dir = plan.space, plan.run_dir
    print(space.describe())
    print(f"run dir     {run_dir}")
    print(f"tracking    {plan.tracking_uri}", flush=True)
    (run_dir / "space.yaml").write_text(_yaml(space.resolved()))

    storage = rundir.storage(run_dir)
    study = optuna.create_study(
        storage=storage,
        study_name=space.study.name,
        directions=space.study.directions,
        load_if_exists=True,
    )
    if plan.state is None:
        for params in [*space.study.enqueue, *plan.seeded]:
            study.enqueue_trial(params, skip_if_exists=True)
        if space.study.localization:
            study.set_user_attr("localization", str(space.study.localization.get("run")))
    interrupted = rundir.fail_interrupted(study)
    tracker = StudyTracker(plan.tracking_uri, space.study.name, run_dir=run_dir)
    tracker.start(
        resolved_space=space.resolved(),
        space_path=space.path,
        space_sha256=space.sha256,
        parent_run_id=plan.state.parent_run_id if plan.state else None,
    )
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
        ),
    )
    if space.study.localization:
        where = str(space.study.localization.get("run"))
        tracker.client.set_tag(tracker.parent_run_id, "localization_run", where)
        print(f"localization {where}: {len(plan.seeded)} first trials protect its riskiest groups")
    if interrupted:
        stale = tracker.mark_stale_children_failed()
        print(
            f"resume      trials {interrupted} were running when the driver stopped: marked "
            f"failed ({stale} MLflow runs) and replaced"
        )
    remaining = plan.n_trials - rundir.finished_count(study)
    if remaining <= 0:
        print(
            f"the study already has {plan.n_trials} finished trials; pass --n-trials N to extend it"
        )
    else:
        ray.init(**_ray_init_args(plan))
        try:
            _check_cluster_resources(space)
            references = _train_references(space)
            ctx = _trial_context(plan, tracker, references)
            searcher = StudySearch(
                space=space.params,
                metric=space.study.metrics,
                mode=space.study.modes,
                sampler=build_sampler(space.study, source=str(space.path)),
                study_name=space.study.name,
                storage=storage,
                constraints=space.study.constraints,
            )
            print(f"trials      {remaining} to run ({plan.n_trials} in the study)", flush=True)
            _run_tuner(plan, searcher, ctx, remaining, tune)
        except KeyboardInterrupt:
            print(f"\ninterrupted. {_resume_hint(plan)}")
            tracker.finish(status="KILLED")
            return 130
        finally:
            ray.shutdown()

    study = optuna.load_study(study_name=space.study.name, storage=storage)
    rows = trial_rows(study, space.study.objectives)
    tracker.log_front(rows, objectives=[(o.metric, o.direction) for o in space.study.objectives])
    _write_front_csv(run_dir, rows)
    done = rundir.finished_count(study)
    complete = done >= plan.n_trials
    tracker.finish(status="FINISHED" if complete else "KILLED")
    print(
        f"\nPareto front ({sum(r['pareto'] for r in rows)} of {len(rows)} finished trials, "
        f"{sum(r['state'] == 'FAIL' for r in rows)} failed):"
    )
    print(format_front(rows, space.study.objectives))
    print(_next_steps(plan, tracker))
    if not complete:
        print(f"\nstopped with {done} of {plan.n_trials} trials finished. {_resume_hint(plan)}")
        return 1
    return 0


def _ray_init_args(plan: Plan) -> dict[str, Any]:
    if plan.args.address:
        return {"address": plan.args.address, "log_to_driver": False}
    return {
        "num_cpus": os.cpu_count(),
        "include_dashboard": False,
        "log_to_driver": False,
        "object_store_memory": 256 * 1024 * 1024,
        "configure_logging": False,
    }


def _check_cluster_resources(space: Any) -> None:
    import ray

    total = ray.cluster_resources()
    res = space.study.resources
    for name, need in (("CPU", res.cpus), ("GPU", res.gpus)):
        if need > total.get(name, 0):
            raise SystemExit(
                f"error: {space.path}: study.resources asks for {need:g} {name} per "
                f"trial; the Ray cluster has {total.get(name, 0):g}"
            )


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


def _train_references(space: Any) -> Any:
    """Train the base recipe's missing reference models as parallel Ray tasks.

    Returns the config the screening references follow, or None when the space searches data or
    model keys (then every trial needs references of its own, trained inside the trial).
    """
    import ray

    from pptp.bank import ReferenceBank
    from pptp.trial import references_needed

    base = space.base_config()
    base = base.replace(**rundir.absolute_paths(base))
    if any(k.startswith(("data.", "model.")) for k in space.params):
        logger.warning("the space searches data/model keys: each trial trains its own references")
        return None
    n = references_needed(base)
    bank = ReferenceBank(base.attack.bank_dir)
    missing = bank.missing(base, n) if n else []
    print(
        f"references  {n} needed, {n - len(missing)} in the bank ({bank.entry_dir(base)})",
        flush=True,
    )
    if missing:
        res = space.study.resources
        task = ray.remote(_train_reference).options(num_cpus=res.cpus, num_gpus=res.gpus)
        flat = base.to_flat()
        pending = [task.remote(str(bank.root), flat, i) for i in missing]
        start = time.perf_counter()
        for done in range(1, len(pending) + 1):
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)
            print(
                f"references  {done}/{len(missing)} trained ({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    return base


def _train_reference(root: str, flat: dict[str, Any], index: int) -> str:
    import logging as _logging

    from pptp.bank import ReferenceBank
    from pptp.config import TrialConfig

    _logging.basicConfig(level=_logging.INFO)
    return str(ReferenceBank(root).train_one(TrialConfig.from_flat(flat), index))


def _run_tuner(plan: Plan, searcher: Any, ctx: Any, remaining: int, tune: Any) -> None:
    from ray.tune.search import ConcurrencyLimiter

    from search.progress import Progress
    from search.trainable import trainable

    res = plan.space.study.resources
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(trainable, ctx=ctx), {"cpu": res.cpus, "gpu": res.gpus}
        ),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=plan.space.study.max_concurrent),
            num_samples=remaining,
            reuse_actors=True,  # a trial process imports torch and mlflow once, not per trial
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(plan.run_dir / "ray"),
            verbose=0,
            callbacks=[Progress(total=remaining, objectives=plan.space.study.objectives)],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()


def _write_front_csv(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(run_dir / "pareto_front.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(r for r in rows if r["pareto"])


def _resume_hint(plan: Plan) -> str:
    return (
        f"Resume with:\n  python search/run.py --space {shlex.quote(str(plan.space.path))} "
        f"--resume --output {shlex.quote(str(plan.run_dir))}"
    )


def _next_steps(plan: Plan, tracker: Any) -> str:
    from search.tracking import default_tracking_uri

    uri = plan.tracking_uri
    ui = (
        f".venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        if uri == default_tracking_uri() or uri.startswith("sqlite")
        else f"open {uri}"
    )
    return "\n".join(
        [
            "",
            "where to look next:",
            f"  MLflow UI   {ui}",
            f"              experiment {plan.space.study.name!r}, "
            f"parent run {tracker.parent_run_id}",
            f"  run dir     {plan.run_dir} (study.db, pareto_front.csv, space.yaml)",
            f"  pick        python search/pick.py --run {plan.run_dir} --rule knee",
        ]
    )


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


if __name__ == "__main__":
    sys.exit(main())
