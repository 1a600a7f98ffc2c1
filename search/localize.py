"""``python search/localize.py --space spaces/<space>.yaml``: where privacy risk and generalization
sit in the space's model, per layer group (docs/design.md#localisation-measurement,
:mod:`pptp.localize`).

Order of work, so that bad input stops before anything trains:

1. read the space (model, dataset and training recipe: its fixed keys, searched keys at their
   defaults), parse ``--seeds``, check the tracking URI, load the data, build the model once:
   a model with a single layer group or a member set too small to halve is an error here
   (``error: ...``, exit status 2, no traceback);
2. for each seed train model A on the members and B on half of them, printing a line as each
   training starts and ends, then score every group;
3. print the per-group table; write ``localization.json``, ``localization.csv`` and
   ``localization.png`` to the output folder (default ``runs/<study>/localize-<timestamp>``);
4. log them to MLflow as a run of its own in the experiment ``<study>-localize`` (tag
   ``pptp.kind=localize``), and print how the space can use the result.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python search/localize.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pptp.errors import ConfigError
from search.cli import manual
from search.cli.entry import add_output_flags, quiet_environment, run_command, verbosity

if TYPE_CHECKING:
    from pptp.config import TrialConfig
    from pptp.localize import LocalizationResult
    from search.space import Space

quiet_environment()  # before anything imports ray or mlflow

logger = logging.getLogger("search.localize")

DEFAULT_SEEDS = (0, 1, 2)
EXPERIMENT_SUFFIX = "-localize"
FILES = ("localization.json", "localization.csv", "localization.png")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of ``localize`` under its manual page (:mod:`search.cli.manual`)."""
    p = manual.parser("localize", prog)
    p.add_argument(
        "--space",
        required=True,
        help="the space file (YAML); its model, dataset and recipe are localised",
    )
    p.add_argument(
        "--seeds",
        default=",".join(map(str, DEFAULT_SEEDS)),
        help="comma-separated training seeds (default 0,1,2): two trainings each",
    )
    p.add_argument(
        "--output", help="folder for the results (default runs/<study>/localize-<timestamp>)"
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: the embedded SQLite store under mlflow/)",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        default=2000,
        help="examples scored per set (D1, D2, held-out; default 2000)",
    )
    add_output_flags(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv), prepare, execute)


@dataclass(frozen=True)
class Plan:
    space: Space
    cfg: TrialConfig
    seeds: tuple[int, ...]
    output: Path
    tracking_uri: str
    max_examples: int
    verbosity: int = 0  # --quiet: -1 (no progress lines), --verbose: 1


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; anything else is a ConfigError."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: give distinct integers >= 0, e.g. 0,1,2")
    return seeds


def prepare(args: argparse.Namespace) -> Plan:
    """Every check that can fail on bad input; trains nothing."""
    from pptp.localize import check_localizable
    from search.space import load_space
    from search.tracking.uris import check_tracking, resolve_tracking_uri

    space = load_space(args.space)
    seeds = parse_seeds(args.seeds)
    if args.max_examples < 2:
        raise ConfigError(f"--max-examples = {args.max_examples} must be >= 2")
    cfg = space.base_config()
    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking(uri)
    try:
        check_localizable(cfg)
    except ConfigError as err:
        raise ConfigError(f"{space.path}: {err}") from None
    output = (
        Path(args.output)
        if args.output
        else (Path("runs") / space.study.name / time.strftime("localize-%Y%m%d-%H%M%S"))
    )
    if (output / FILES[0]).exists():
        raise ConfigError(f"{output} already holds a localisation; pass another --output")
    return Plan(space, cfg, seeds, output, uri, args.max_examples, verbosity(args))


def execute(plan: Plan) -> int:
    from pptp.localize import localization_table, localize, plot_localization, write_csv
    from pptp.threads import process_cpus, torch_threads

    space, cfg = plan.space, plan.cfg
    start = time.monotonic()

    def progress(line: str) -> None:
        if plan.verbosity < 0:
            return
        seconds = int(time.monotonic() - start)
        print(f"[{seconds // 60:02d}:{seconds % 60:02d}] {line}", flush=True)

    width = cfg.model.width if cfg.model.width is not None else "default"
    print(f"space       {space.path} (sha256 {space.sha256[:12]})")
    print(
        f"model       {cfg.model.name} (width {width}, norm {cfg.model.norm}) on "
        f"{cfg.data.name}; {cfg.train.epochs} epochs, device {cfg.train.device}"
    )
    print(
        f"seeds       {', '.join(map(str, plan.seeds))}: {2 * len(plan.seeds)} trainings "
        "(A on the members, B on half of them)"
    )
    print(f"output      {plan.output}")
    print(f"tracking    {plan.tracking_uri}", flush=True)
    with torch_threads(process_cpus()) as threads:  # explicit, whatever OMP_NUM_THREADS says
        print(f"threads     {threads} torch threads (the CPUs of this process)", flush=True)
        result = localize(cfg, seeds=plan.seeds, progress=progress, max_examples=plan.max_examples)
    print()
    print(localization_table(result))
    plan.output.mkdir(parents=True, exist_ok=True)
    paths = [
        result.save(plan.output / FILES[0]),
        write_csv(result, plan.output / FILES[1]),
        plot_localization(result, plan.output / FILES[2]),
    ]
    run_id = log_localization(plan.tracking_uri, space, result, paths)
    print()
    print(f"written     {', '.join(str(p) for p in paths)}")
    print(f"MLflow      experiment {space.study.name + EXPERIMENT_SUFFIX!r}, run {run_id}")
    print(
        f"MLflow UI   {_ui_hint(plan.tracking_uri, space.study.name + EXPERIMENT_SUFFIX, run_id)}"
    )
    print(
        "use it      add to the space's study section (first trials then protect the riskiest "
        "groups):"
    )
    print(f"              localization: {{run: {_shown(paths[0])}}}")
    return 0


def log_localization(
    uri: str, space: Space, result: LocalizationResult, paths: list[Path]
) -> str:
    """Log ``result`` as a finished run of its own; returns the run id.

    Experiment ``<study>-localize`` (created with the same artifact layout as the study's);
    tags ``pptp.kind=localize``, ``pptp.study``, model, dataset, git commit, space path and hash;
    params: the flat config, ``localize.seeds`` and the set sizes ``localize.n_<set>``;
    metrics ``risk/<group>``, ``risk_std/<group>``, ``generalization/<group>``,
    ``generalization_std/<group>``, ``risk_at_output/<group>``, ``rank/<group>``, ``test_acc_a``,
    ``test_acc_b``; artifacts: ``paths``.
    """
    from mlflow.tracking import MlflowClient

    from search.tracking.names import TAG_KIND, TAG_STUDY
    from search.tracking.store import experiment_id, git_commit, log_metrics, log_params, set_tags

    client = MlflowClient(tracking_uri=uri)
    name = space.study.name + EXPERIMENT_SUFFIX
    experiment = experiment_id(client, name, uri=uri, tags={TAG_STUDY: space.study.name})
    commit = git_commit()
    tags = {
        TAG_KIND: "localize",
        TAG_STUDY: space.study.name,
        "model": result.model,
        "dataset": result.dataset,
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "space_path": str(Path(space.path).resolve()),
        "space_sha256": space.sha256,
        "top_groups": ",".join(g.group for g in result.ranked(3)),
    }
    run = client.create_run(experiment, run_name=f"localize-{result.model}", tags=tags)
    run_id: str = run.info.run_id
    try:
        params = {**result.config, "localize.seeds": ",".join(map(str, result.seeds))}
        params.update({f"localize.n_{k}": v for k, v in result.sizes.items()})
        metrics = {
            "test_acc_a": sum(result.test_acc_a) / len(result.seeds),
            "test_acc_b": sum(result.test_acc_b) / len(result.seeds),
        }
        for g in result.groups:
            metrics.update(
                {
                    f"risk/{g.group}": g.privacy_risk_mean,
                    f"risk_std/{g.group}": g.privacy_risk_std,
                    f"generalization/{g.group}": g.generalization_mean,
                    f"generalization_std/{g.group}": g.generalization_std,
                    f"risk_at_output/{g.group}": g.risk_at_output_mean,
                    f"rank/{g.group}": float(result.rank(g.group)),
                }
            )
        log_params(client, run_id, params)
        log_metrics(client, run_id, metrics)
        set_tags(client, run_id, {"seconds": f"{result.seconds:.1f}"})
        for path in paths:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def _ui_hint(uri: str, experiment: str, run_id: str) -> str:
    """Where the run is in the MLflow UI (:func:`search.tracking.links.ui_hint`)."""
    from mlflow.tracking import MlflowClient

    from search.tracking.links import ui_hint

    experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    return ui_hint(uri, experiment_id=experiment_id, run_id=run_id, experiment_name=experiment)


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (as a space names it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


if __name__ == "__main__":
    sys.exit(main())
