"""``pptp-search report --run RUN``: one self-contained HTML page per study (``report.html``).

The page a person opens first after a study, in any browser, offline (plotly's JavaScript is
inlined; no request leaves the file). Built with plotly (and Optuna's plotly-based
visualizations); this module writes no JavaScript of its own. In order:

1. **The front**: every finished trial on the study's first two objectives (the maximised one
   upward, the other across), by kind (:attr:`pptp.treatment.Treatment.kind`: PPTP, PPTP
   with a defense, each baseline defense with its seed spread as error bars, the undefended
   model), the study's Pareto front (Optuna's ``best_trials``, the trials tagged ``pareto=true``
   in MLflow) highlighted, and the picked trial when ``search/pick.py`` exported one. Hovering a
   point names its trial run, groups, operator, strength, defense and seeds. Failed trials are
   listed below the chart with their reasons.
2. **ROC curves of the finalists** (the front's trials), log-log, from each trial's ``roc.npz``
   artifact in MLflow, with the undefended trials' curves for reference.
3. **Layer risk** when a localisation steered the study: privacy risk against generalization per
   layer group (the ``localization.json`` the study recorded).
4. **The picked config**, when ``<run>/picked.yaml`` exists.
5. **Searched parameters against each objective** (Optuna's ``plot_slice``).
6. **Every trial** as a table.

The page says which parts are missing and why (an MLflow store that does not answer: no ROC
curves; a localisation file that moved: no layer-risk chart).
:func:`search.reporting.publish.publish_study`
writes it into the run directory and onto the study's parent MLflow run.

The work is in :mod:`search.reporting` (gathering, figures, the page); this module is the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python search/report.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from search.cli import manual
from search.cli.entry import quiet_environment, run_command
from search.study.rundir import REPORT_FILE

quiet_environment()

#: the study has no finished trial: nothing is written
EXIT_NOTHING_TO_REPORT = 3


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = manual.parser("report", prog)
    p.add_argument("--run", required=True, help="a run directory of a study (search/run.py)")
    p.add_argument("--output", help=f"where to write the page (default <run>/{REPORT_FILE})")
    p.add_argument(
        "--no-mlflow",
        action="store_true",
        help="do not read from or write to MLflow (no ROC curves, runs left as they are)",
    )
    p.add_argument("--tracking-uri", help="the MLflow store (default: the study's)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def prepare(args: argparse.Namespace) -> Any:
    from search.study.reader import open_run

    run = open_run(args.run)
    return args, run


def execute(plan: Any) -> int:
    from search.reporting.publish import publish_study
    from search.study.rundir import finished_count

    args, run = plan
    if finished_count(run.study) == 0:
        print(
            f"nothing to report: {run.run_dir} has no finished trial yet "
            f"({len(run.study.trials)} started); report.html is written when one finishes "
            f"(search/run.py --space {run.state.space_path} --resume --output {run.run_dir} "
            "continues a stopped study)"
        )
        return EXIT_NOTHING_TO_REPORT
    published = publish_study(
        run,
        output=Path(args.output) if args.output else None,
        mlflow=not args.no_mlflow,
        tracking_uri=args.tracking_uri,
    )
    print(published.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv), prepare, execute)


if __name__ == "__main__":
    sys.exit(main())
