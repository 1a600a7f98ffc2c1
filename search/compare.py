"""``python search/compare.py --run RUN``: did PPTP beat the baselines on this study?

Reads one finished run directory (a study that searched PPTP and enqueued the baselines, as
``spaces/fashion.yaml`` does) or several (say a PPTP-only study and a baselines-only one, each
given with ``--run``) and sorts every completed trial into one of four kinds by what it trained
with:

=================  =====================================================================
``undefended``     no protection (strength 0 or operator ``none``) and defense ``none``
``baseline``       a classic defense (``defense.name``) and no protection
``pptp``           a protection operator at strength > 0 and defense ``none``
``combined``       both: drawn, but in neither front
=================  =====================================================================

It draws them on the study's two objectives (attack metric across, accuracy up): every PPTP trial
and the PPTP front, each baseline trial with its seed standard deviation as error bars (when the
study trained several seeds per trial, ``study.repeats``), the undefended model, and the
baselines' front. The undefended model belongs to both fronts (each family can choose not to
defend). For each front it reports the **hypervolume**: the area the front dominates up to a
reference point shared by both fronts (the worst accuracy and the worst attack value among all
trials shown, so the number compares the two fronts on this study and means nothing across
studies). A **bootstrap over training seeds** gives each hypervolume and their difference an
interval: each of ``--bootstrap`` resamples draws, for every trial, its seeds with replacement
(accuracy and attack values of a seed stay paired) and recomputes means and hypervolumes. A
difference whose interval excludes 0 is beyond seed noise. The intervals come from each family's
**pooled seed noise** (the spread over training seeds of all its trials, many degrees of freedom,
where one trial's two seeds give one): every resample draws each trial's mean around its observed
mean with that noise (:func:`search.comparing.fronts.compare`).

A verdict is given only when the runs support one: both families have at least
:data:`~search.comparing.fronts.MIN_TRIALS` completed trials and trained two seeds or more per
trial (``study.repeats``); otherwise the output says which is missing and the exit status is 3.

Writes ``comparison.png``, ``comparison.csv`` (one row per trial) and ``comparison.md`` (the table
and the hypervolumes) to ``--output`` (default: the first run directory) and, when the tracking
store answers, to each study's parent MLflow run under ``comparison/``.

The work is in :mod:`search.comparing` (the points and their kinds, fronts and hypervolumes, the
table, CSV and figure); this module is the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python search/compare.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pptp.errors import ConfigError
from pptp.metric_catalogue import shown_metrics
from search.cli import manual
from search.cli.entry import quiet_environment, run_command
from search.comparing.fronts import compare
from search.comparing.output import plot, table_markdown, write_csv
from search.comparing.runs import load_trials

quiet_environment()

logger = logging.getLogger("search.compare")

#: compared, but the runs support no verdict (one family missing, too few trials or seeds)
EXIT_NO_VERDICT = 3

TABLE_METRICS = tuple(m.key for m in shown_metrics())
"""Metrics the table shows when the trials recorded them (mean +- sd over seeds): the metric
catalogue's shown metrics (:mod:`pptp.metric_catalogue`)."""


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of ``compare`` under its manual page (:mod:`search.cli.manual`)."""
    p = manual.parser("compare", prog)
    p.add_argument(
        "--run",
        action="append",
        required=True,
        help="a run directory of search/run.py (repeat for a second study)",
    )
    p.add_argument("--output", help="where to write the files (default: the first run directory)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument(
        "--metrics",
        default=",".join(TABLE_METRICS),
        help="table columns, comma-separated (those the trials recorded are shown)",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log the files to MLflow")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Plan:
    args: argparse.Namespace
    runs: tuple[Path, ...]
    output: Path


def prepare(args: argparse.Namespace) -> Plan:
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap = {args.bootstrap} must be >= 1")
    runs = tuple(Path(r) for r in args.run)
    for run in runs:
        if not (run / "study.db").is_file():
            raise ConfigError(
                f"--run {run}: no study.db here; give a run directory of search/run.py"
            )
    output = Path(args.output) if args.output else runs[0]
    output.mkdir(parents=True, exist_ok=True)
    return Plan(args, runs, output)


def execute(plan: Plan) -> int:
    points, axes = load_trials(plan.runs)
    result = compare(points, axes, n_bootstrap=plan.args.bootstrap, seed=plan.args.seed)
    metrics = [m for m in plan.args.metrics.split(",") if m]
    names = ", ".join(sorted({p.study for p in points}))
    files = [
        plot(result, plan.output / "comparison.png", title=f"PPTP against the baselines: {names}"),
        write_csv(result, plan.output / "comparison.csv", metrics),
    ]
    text = table_markdown(result, metrics)
    (plan.output / "comparison.md").write_text(text + "\n")
    files.append(plan.output / "comparison.md")
    print(text)
    print("\nwrote " + ", ".join(str(f) for f in files))
    if not plan.args.no_mlflow:
        log_to_mlflow(plan.runs, files)
    return 0 if result.decided else EXIT_NO_VERDICT


def log_to_mlflow(runs: Sequence[Path], files: Sequence[Path]) -> None:
    """Attach the files to each study's parent run; a tracking store that does not answer is a
    warning (the files are in the output folder either way)."""
    from search.study import rundir

    for run in runs:
        state = rundir.read_state(run)
        if not state.parent_run_id:
            continue
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(state.tracking_uri)
            for f in files:
                client.log_artifact(state.parent_run_id, str(f), artifact_path="comparison")
            print(f"logged to MLflow run {state.parent_run_id} (artifacts comparison/)")
        except Exception as error:  # the store may be gone; the files are on disk
            logger.warning(
                "could not log the comparison to MLflow (%s): %s", state.tracking_uri, error
            )


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv), prepare, execute)


if __name__ == "__main__":
    sys.exit(main())
