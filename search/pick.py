"""``python search/pick.py --run runs/<study>/<timestamp> --rule knee``: choose a Pareto config
for production, re-audit it, export it, register its model.

Order of work, so that bad input stops before anything trains:

1. open the run directory that ``search/run.py`` wrote (``state.json``, ``study.db``,
   ``space.yaml``); the candidates are Optuna's Pareto front (``study.best_trials``: feasible,
   non-dominated trials), or every feasible completed trial with ``--among all``;
2. drop the candidates that break a ``--max metric=t`` / ``--min metric=t`` bound, then let the
   rule (:data:`RULES`) choose one, and say why;
3. optionally re-train the pick over ``--seeds N`` seeds against the screening references (the
   base recipe's, from the bank), and re-audit it with references trained under its own
   protect/defense config (``--adaptive``: an attacker who knows the defense);
4. print the trial's screening numbers, the re-trained and the adaptive ones side by side, with
   the gap adaptive - screening of every attack metric stated;
5. export the trial's full config as a space-like YAML (``--export``, default
   ``<run dir>/picked.yaml``);
6. optionally (``--register NAME``) train the final model once, log it in an MLflow run nested
   under the study's parent run, register it and point ``--alias`` (default ``production``) at
   the new version. Model stages are deprecated in MLflow: aliases only.

Paths: ``data.data_dir`` and ``attack.bank_dir`` in a space are relative to the directory
``search/run.py`` ran in, which ``state.json`` records (``cwd``); ``pick.py`` resolves them against
it, so it finds the same bank and data from any working directory.

Rules: :mod:`search.picking.rules`. The work is in :mod:`search.picking` (rules, the run
directory, re-training and the adaptive audit, export, registration); this module is the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python search/pick.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pptp.errors import ConfigError
from search.cli import manual
from search.cli.entry import quiet_environment, run_command
from search.picking.audit import (
    TABLE_METRICS,
    Comparison,
    adaptive_audit,
    audit_seeds,
    retrain,
)
from search.picking.export import export_header, picked_space, write_export
from search.picking.model_registry import (
    CARD_FILE,
    DEFAULT_ALIAS,
    check_registry_names,
    register,
    study_experiment,
)
from search.picking.rules import (
    DEFAULT_ACCURACY,
    RULES,
    Bound,
    Candidate,
    Pick,
    candidates_table,
    choose,
    parse_bound,
)
from search.study import rundir
from search.study.reader import (
    StudyRun,
    candidates,
    open_run,
    screening_references,
)

quiet_environment()  # before anything imports ray or mlflow

if TYPE_CHECKING:
    from pptp.config import TrialConfig

logger = logging.getLogger("search.pick")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of ``pick`` under its manual page (:mod:`search.cli.manual`)."""
    p = manual.parser("pick", prog)
    p.add_argument("--run", required=True, help="run directory of search/run.py")
    p.add_argument(
        "--rule", default="knee", help=f"how to choose: {', '.join(RULES)} (default knee)"
    )
    p.add_argument(
        "--max",
        action="append",
        default=[],
        metavar="METRIC=T",
        help="keep candidates with METRIC <= T (repeatable), e.g. attack_tpr@0.1%%fpr=0.01",
    )
    p.add_argument(
        "--min",
        action="append",
        default=[],
        metavar="METRIC=T",
        help="keep candidates with METRIC >= T (repeatable), e.g. test_acc=0.9",
    )
    p.add_argument(
        "--among",
        choices=("front", "all"),
        default="front",
        help="candidates: the Pareto front (default) or every feasible completed trial",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=0,
        help="re-train the pick on N new seeds (trial seed + 1 .. + N) with the screening "
        "references (default 0: no re-training)",
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="re-audit with references trained under the pick's own config (trains K "
        "reference models; on the --seeds seeds, or the trial's own seed)",
    )
    p.add_argument("--export", help="where to write the config (default <run>/picked.yaml)")
    p.add_argument("--register", metavar="NAME", help="register the model under this name")
    p.add_argument("--alias", help=f"alias of the new version (default {DEFAULT_ALIAS})")
    p.add_argument(
        "--model-format",
        choices=("pt2", "pickle"),
        default="pt2",
        help="MLflow serialization of the model (default pt2: torch.export, no unpickling)",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@dataclasses.dataclass
class Plan:
    args: argparse.Namespace
    run: StudyRun
    rule: str
    bounds: list[Bound]
    candidates: list[Candidate]
    pick: Pick
    config: TrialConfig  # the trial's config as the space writes it (exported)
    seeds: tuple[int, ...]
    export: Path
    tracking_uri: str | None  # set when registering
    experiment_id: str | None  # the study's MLflow experiment, set when registering
    alias: str


def prepare(args: argparse.Namespace) -> Plan:
    """Every check that can fail on bad input; trains nothing."""
    from search.tracking.uris import check_tracking, resolve_tracking_uri

    if args.seeds < 0:
        raise ConfigError(f"--seeds {args.seeds}: give 0 (no re-training) or more")
    if args.alias is not None and not args.register:
        raise ConfigError("--alias needs --register NAME")
    alias = args.alias or DEFAULT_ALIAS
    if args.register:
        check_registry_names(args.register, alias)
    rule = args.rule
    RULES[rule]  # unknown rule: ConfigError listing the known ones
    bounds = [parse_bound(t, "max") for t in args.max] + [parse_bound(t, "min") for t in args.min]
    run = open_run(args.run)
    cands = candidates(run, among=args.among)
    where = "Pareto-front" if args.among == "front" else "feasible completed"
    pick = choose(cands, run.objectives, rule=rule, bounds=bounds, where=where)
    config = run.space.trial_config(pick.candidate.params)
    uri = experiment_id = None
    if args.register:
        uri = resolve_tracking_uri(args.tracking_uri or run.state.tracking_uri)
        check_tracking(uri)
        experiment_id = study_experiment(uri, run.state.study_name)
    if args.seeds or args.adaptive or args.register:
        from pptp.data import check_data

        check_data(config.replace(**rundir.absolute_paths(config, cwd=run.state.cwd)).data)
    export = Path(args.export) if args.export else run.run_dir / "picked.yaml"
    return Plan(
        args=args,
        run=run,
        rule=rule,
        bounds=bounds,
        candidates=cands,
        pick=pick,
        config=config,
        seeds=audit_seeds(config.train.seed, args.seeds),
        export=export,
        tracking_uri=uri,
        experiment_id=experiment_id,
        alias=alias,
    )


def describe_pick(plan: Plan) -> str:
    run, c = plan.run, plan.pick.candidate
    trials = run.study.get_trials(deepcopy=False)
    states = {t.state.name.lower() for t in trials}
    counts = ", ".join(
        f"{sum(t.state.name.lower() == s for t in trials)} {s}" for s in sorted(states)
    )
    rule = plan.rule + (" with " + " and ".join(map(str, plan.bounds)) if plan.bounds else "")
    lines = [
        f"run         {run.run_dir} (study {run.state.study_name}; {counts})",
        f"rule        {rule}",
        f"picked      trial {c.number}: {plan.pick.reason}",
        f"            {c.name}",
        "            " + ", ".join(f"{k}={v}" for k, v in c.params.items()),
        "",
        candidates_table(plan.candidates, run.objectives, picked=c.number, bounds=plan.bounds),
    ]
    note = _off_front_note(plan)
    if note:
        lines += ["", note]
    return "\n".join(lines)


def _off_front_note(plan: Plan) -> str:
    """A word when a trial off the front meets the bounds with a better accuracy metric."""
    if plan.args.among != "front" or not plan.bounds:
        return ""
    objectives = {o.metric for o in plan.run.objectives}
    if all(b.metric in objectives for b in plan.bounds):
        return ""  # bounds on objectives only: the front holds the best of each bounded slice
    try:
        every = candidates(plan.run, among="all")
    except ConfigError:
        return ""
    metric = next(
        (o.metric for o in plan.run.objectives if o.direction == "maximize"), DEFAULT_ACCURACY
    )
    picked = plan.pick.candidate.value(metric)
    better = [
        c
        for c in every
        if not c.pareto
        and all(b.violation(c) == 0 for b in plan.bounds)
        and c.value(metric) > picked
    ]
    if not better:
        return ""
    best = max(better, key=lambda c: c.value(metric))
    return (
        f"note        trial {best.number} is off the front but meets the bounds with {metric} "
        f"{best.value(metric):.4f} > {picked:.4f}; --among all considers it"
    )


def execute(plan: Plan) -> int:
    """Print the pick, re-train and audit it, export it, register it; every training runs with as
    many torch threads as this process's CPUs (:mod:`pptp.threads`)."""
    from pptp.threads import process_cpus, torch_threads

    with torch_threads(process_cpus()) as threads:
        print(describe_pick(plan), flush=True)
        if plan.seeds or plan.args.adaptive or plan.args.register:
            print(f"threads     {threads} torch threads (the CPUs of this process)", flush=True)
        return _execute(plan)


def _write_who_leaks(comparison: Comparison, export: Path) -> None:
    """Who leaks in the re-audited pick (the adaptive audit's first seed, else the re-training's;
    :mod:`pptp.exposure`), beside the export: ``<export>.who-leaks/`` with ``exposed.csv``,
    ``class_tpr.csv`` and, for image data, ``exposed.png``."""
    from search.tracking.trial_tracker import write_exposure

    audits = [a for a in (comparison.adaptive, comparison.retrained) if a is not None]
    exposure = next((a.exposure for a in audits if a.exposure is not None), None)
    if exposure is None:
        return
    folder = export.parent / f"{export.name}.who-leaks"
    folder.mkdir(parents=True, exist_ok=True)
    written = write_exposure(exposure, folder)
    print(f"who leaks   {folder} ({', '.join(p.name for p in written)})", flush=True)


def _execute(plan: Plan) -> int:
    args, run, c = plan.args, plan.run, plan.pick.candidate
    cfg_run = plan.config.replace(**rundir.absolute_paths(plan.config, cwd=run.state.cwd))
    references = screening_references(run)
    comparison = Comparison(
        trial=c.number,
        trial_seed=plan.config.train.seed,
        screening={m: c.value(m) for m in {*TABLE_METRICS, *c.values}},
    )
    bank = Path(cfg_run.attack.bank_dir)
    trains = bool(plan.seeds or args.adaptive or args.register)
    if trains:  # only then are reference models read (or trained)
        print(f"\nreferences  the screening references, from the bank in {bank}", flush=True)
    if trains and not bank.is_dir():
        print(
            f"note        {bank} does not exist: the screening references will be trained "
            "again. The space's paths are relative to where search/run.py ran; run pick.py "
            "from there to reuse its bank",
            flush=True,
        )
    try:
        if plan.seeds:
            print(
                f"re-train    seeds {', '.join(map(str, plan.seeds))}: the screening setting "
                "(base-recipe references from the bank)",
                flush=True,
            )
            comparison = dataclasses.replace(
                comparison, retrained=retrain(cfg_run, plan.seeds, references=references)
            )
        if args.adaptive:
            seeds = plan.seeds or (plan.config.train.seed,)
            print(
                f"adaptive    seeds {', '.join(map(str, seeds))}: references trained under the "
                f"pick's own protect/defense config (costs {cfg_run.attack.n_references} "
                "reference trainings once, then one target per seed)",
                flush=True,
            )
            comparison = dataclasses.replace(comparison, adaptive=adaptive_audit(cfg_run, seeds))
        print()
        print(comparison.table(run.objectives))
        if comparison.adaptive is not None:
            print(comparison.gap_note())
        header = export_header(run, plan.pick, plan.rule, comparison)
        path = write_export(plan.export, picked_space(run, plan.config, plan.pick), header)
        _write_who_leaks(comparison, path)
        registered = None
        if args.register:
            assert plan.tracking_uri is not None and plan.experiment_id is not None
            print()
            registered = register(
                run,
                cfg_run,
                plan.pick,
                comparison,
                rule=plan.rule,
                references=references,
                export_path=path,
                tracking_uri=plan.tracking_uri,
                experiment_id=plan.experiment_id,
                name=args.register,
                alias=plan.alias,
                model_format=args.model_format,
            )
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was exported or registered")
        return 130
    from search.tracking.links import console_command, ui_hint

    print("\nwhere things went:")
    print(f"  config      {path}  (a one-trial space of the picked config)")
    print(f"  report      {console_command()} report --run {run.run_dir}  (shows the pick)")
    if registered is not None:
        print(
            f"  MLflow run  {registered.run_id} (experiment {registered.experiment_id}, "
            f"nested under parent run {run.state.parent_run_id}; {plan.tracking_uri})"
        )
        hint = ui_hint(
            plan.tracking_uri or run.state.tracking_uri,
            experiment_id=registered.experiment_id,
            run_id=registered.run_id,
            run_dir=run.run_dir,
        )
        print(f"  MLflow UI   {hint}")
        print(
            f"  registry    {registered.name} version {registered.version}, alias "
            f"{registered.alias}: {registered.uri}"
        )
        load = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true; " if args.model_format == "pickle" else ""
        print(
            f"  load        {load}mlflow.pytorch.load_model({registered.uri!r})  "
            "# float32 (N, C, H, W) normalised like the pool -> logits"
        )
        print(f"  model card  {CARD_FILE} in MLflow run {registered.run_id}")
    print("\nnext:")
    if registered is None:
        print(
            f"  python search/pick.py --run {run.run_dir} --adaptive --register NAME  "
            "# ship it: train on the full data, register with its audit and model card"
        )
    print(f"  python search/run.py --space {path}  # run the picked config again as a study")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv), prepare, execute)


if __name__ == "__main__":
    sys.exit(main())
