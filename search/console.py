"""``pptp-search``: one command for the user's path, installed with the package.

``pptp-search run|localize|pick|compare|report|ui [OPTIONS]`` dispatches to the entry points
(``search/run.py``, ``search/localize.py``, ``search/pick.py``, ``search/compare.py``,
:mod:`search.report`, :mod:`search.ui`), which keep working on their own
(``python search/run.py ...``). ``pptp-search --help`` and ``pptp-search COMMAND --help`` print a
manual page: name, synopsis, description, options, examples, exit status, files, environment.

The subcommands are a registry (:data:`COMMANDS`): a new entry point is one
:class:`Subcommand`. A command's description is its module's docstring, its options its own
argparse parser's (``build_parser(prog)`` when the module has one, else what ``--help`` prints),
so the manual cannot drift from the code.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import io
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

PROG = "pptp-search"
INDENT = "       "
WIDTH = 92


@dataclass(frozen=True)
class Subcommand:
    """One ``pptp-search`` subcommand: the module whose ``main(argv)`` runs it, and the parts of
    its manual page that the module's parser does not say."""

    name: str
    module: str
    summary: str
    examples: tuple[tuple[str, str], ...]
    exit_status: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...] = ()


_BAD_INPUT = ("2", "bad input (a space file, a run directory, an option): one line on stderr")

COMMANDS: dict[str, Subcommand] = {}


def register(command: Subcommand) -> Subcommand:
    COMMANDS[command.name] = command
    return command


register(
    Subcommand(
        "run",
        "search.run",
        "run (or resume) a PPTP search: Ray Tune trials, Optuna sampling, MLflow tracking",
        examples=(
            (
                "pptp-search run --space spaces/quickstart.yaml",
                "a new study under runs/quickstart/",
            ),
            ("pptp-search run --space spaces/quickstart.yaml --resume", "continue the newest run"),
            (
                "pptp-search run --space spaces/quickstart.yaml --resume --n-trials 24",
                "extend a finished study to 24 trials",
            ),
            (
                "pptp-search run --space spaces/resnet.yaml --data-dir /data/cifar10",
                "the main job: ResNet-18 on CIFAR-10 (GPU)",
            ),
        ),
        exit_status=(
            ("0", "the study has all its trials"),
            ("1", "stopped before the last trial (resume with --resume)"),
            _BAD_INPUT,
            ("130", "interrupted (Ctrl-C); the resume command is printed"),
        ),
        files=(
            (
                "runs/<study>/<timestamp>/",
                "the run directory: study.db (Optuna), state.json, "
                "space.yaml, pareto_front.csv, report.html",
            ),
            ("mlflow/mlflow.db, mlflow/artifacts/", "the embedded MLflow store (default)"),
            ("bank/", "reference models shared by trials, runs and studies"),
        ),
    )
)
register(
    Subcommand(
        "localize",
        "search.localize",
        "measure where privacy risk and generalization sit, per layer group",
        examples=(
            ("pptp-search localize --space spaces/quickstart.yaml", "3 seeds, about 1 minute"),
            (
                "pptp-search localize --space spaces/quickstart.yaml --seeds 0,1,2,3,4 "
                "--output runs/loc-5",
                "5 seeds into a folder of your choice",
            ),
        ),
        exit_status=(("0", "written and logged"), _BAD_INPUT, ("130", "interrupted (Ctrl-C)")),
        files=(
            (
                "runs/<study>/localize-<timestamp>/",
                "localization.json, localization.csv, localization.png",
            ),
        ),
    )
)
register(
    Subcommand(
        "pick",
        "search.pick",
        "choose a Pareto config by a stated rule, re-audit it, export and register it",
        examples=(
            ("pptp-search pick --run runs/quickstart/<timestamp> --rule knee", "the knee"),
            (
                "pptp-search pick --run RUN --rule max-acc --max attack_tpr@0.1%fpr=0.01 "
                "--seeds 3 --adaptive --register digits-cnn --alias production",
                "the most accurate config under a TPR bound, re-trained on 3 seeds, audited "
                "adaptively, registered as models:/digits-cnn@production",
            ),
        ),
        exit_status=(("0", "picked and exported"), _BAD_INPUT, ("130", "interrupted")),
        files=(("<run>/picked.yaml", "the exported config (a space that pins every key)"),),
    )
)
register(
    Subcommand(
        "compare",
        "search.compare",
        "draw PPTP's front against the classic defenses, with hypervolumes",
        examples=(
            ("pptp-search compare --run runs/fashion/<timestamp>", "one study with baselines"),
            ("pptp-search compare --run RUN_A --run RUN_B", "a PPTP study and a baseline study"),
        ),
        exit_status=(
            ("0", "compared, with a verdict"),
            _BAD_INPUT,
            (
                "3",
                "compared, but the runs support no verdict: a family has no trial or too few "
                "(3), or its trials trained one seed (the output says which)",
            ),
        ),
        files=(("<run>/comparison.png, .csv, .md", "the figure, one row per trial, the table"),),
    )
)
register(
    Subcommand(
        "report",
        "search.report",
        "write a study's report page and make its MLflow runs explain themselves",
        examples=(
            ("pptp-search report --run runs/quickstart/<timestamp>", "rewrite report.html"),
            ("pptp-search report --run RUN --no-mlflow", "the page only; MLflow untouched"),
        ),
        exit_status=(("0", "written (the page lists any part it could not draw)"), _BAD_INPUT),
        files=(("<run>/report.html", "the page; also attached to the study's MLflow run"),),
    )
)
register(
    Subcommand(
        "ui",
        "search.ui",
        "start the MLflow UI on 127.0.0.1, opened on the study's runs table",
        examples=(
            ("pptp-search ui --run runs/quickstart/<timestamp> --open", "a study's UI"),
            ("pptp-search ui", "every study in the embedded store"),
            (
                "pptp-search ui --tracking-uri sqlite:////srv/pptp/mlflow.db --port 5001",
                "another store, another port",
            ),
        ),
        exit_status=(
            ("0", "stopped with Ctrl-C (or SIGTERM), or a tracking server's URLs printed"),
            ("1", "the UI did not start, or stopped on its own (its log is shown)"),
            _BAD_INPUT,
        ),
        files=(("<run>/state.json", "the store and study a run directory belongs to"),),
    )
)

ENVIRONMENT = (
    ("MLFLOW_TRACKING_URI", "the MLflow store when --tracking-uri is not given"),
    ("MLFLOW_DISABLE_TELEMETRY", "set to true by default (no files under the home directory)"),
    ("RAY_AUTH_MODE", "set to disabled by default (no ~/.ray/auth_token)"),
)


# ---------------------------------------------------------------------------------------------
# manual pages


def _section(title: str, body: str) -> str:
    return f"{title}\n{textwrap.indent(body.rstrip(), INDENT)}\n"


def _pairs(pairs: Sequence[tuple[str, str]], *, width: int = 0) -> str:
    """``term  text`` lines (text wrapped), or ``term`` then indented text for long terms."""
    width = width or max(len(t) for t, _ in pairs)
    lines = []
    for term, text in pairs:
        if width <= 24:
            wrapped = textwrap.wrap(text, WIDTH - len(INDENT) - width - 2) or [""]
            lines.append(f"{term.ljust(width)}  {wrapped[0]}")
            lines += [" " * (width + 2) + w for w in wrapped[1:]]
        else:
            lines.append(term)
            lines += ["    " + w for w in textwrap.wrap(text, WIDTH - len(INDENT) - 4)]
    return "\n".join(lines)


_ROLE = re.compile(r":(?:mod|func|class|meth|data|attr):`~?([^`]+)`")


def plain(docstring: str) -> str:
    """A module docstring as plain text: roles and double backticks dropped."""
    text = _ROLE.sub(lambda m: m.group(1), docstring)
    return text.replace("``", "")


def _load(module: str) -> ModuleType:
    return importlib.import_module(module)


def parser_help(command: Subcommand) -> tuple[str, str]:
    """``(usage, options)`` of the command's own parser, with ``pptp-search <name>`` as prog."""
    mod = _load(command.module)
    prog = f"{PROG} {command.name}"
    builder = getattr(mod, "build_parser", None)
    if builder is not None:
        text = builder(prog).format_help()
    else:  # an entry point whose parser exists only inside parse_args: ask it for --help
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
            mod.parse_args(["--help"])
        text = buffer.getvalue()
        old = re.match(r"usage: (\S+)", text)
        if old:
            text = text.replace(old.group(1), prog)
    usage, _, rest = text.partition("\n\n")
    usage = re.sub(r"\s+", " ", usage.removeprefix("usage:")).strip()
    options = rest[rest.find("options:") :] if "options:" in rest else rest
    options = options.removeprefix("options:").strip("\n")
    return usage, textwrap.dedent(options)


def command_manual(command: Subcommand) -> str:
    """The manual page of ``pptp-search <command>``."""
    mod = _load(command.module)
    usage, options = parser_help(command)
    doc = plain(inspect.getdoc(mod) or command.summary)
    description = doc.split("\n", 1)[1].strip() if "\n" in doc else doc
    parts = [
        f"{PROG.upper()}-{command.name.upper()}(1)\n",
        _section("NAME", f"{PROG} {command.name} - {command.summary}"),
        _section(
            "SYNOPSIS",
            "\n".join(
                textwrap.wrap(
                    usage,
                    WIDTH - len(INDENT),
                    subsequent_indent="    ",
                    break_on_hyphens=False,
                )
            ),
        ),
        _section("DESCRIPTION", description),
        _section("OPTIONS", options),
        _section("EXAMPLES", _pairs(command.examples, width=40)),
        _section("EXIT STATUS", _pairs(command.exit_status)),
    ]
    if command.files:
        parts.append(_section("FILES", _pairs(command.files, width=40)))
    parts.append(_section("ENVIRONMENT", _pairs(ENVIRONMENT, width=40)))
    parts.append(
        _section("SEE ALSO", f"{PROG} --help; README.md; spaces/README.md; mlflow/README.md")
    )
    return "\n".join(parts)


def _version() -> str:
    try:
        return metadata.version("pptp-search")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def manual() -> str:
    """The manual page of ``pptp-search`` itself."""
    width = max(len(n) for n in COMMANDS)
    commands = "\n".join(f"{n.ljust(width)}  {c.summary}" for n, c in COMMANDS.items())
    description = (
        "Searches how to train a classifier so that it keeps its accuracy while leaking little "
        "membership information, following the Privacy-Preserving Training Principle (PPTP, "
        "Fang & Kim, arXiv 2602.02296): protect the layer groups that carry membership risk, "
        "leave the ones that carry generalization free. Ray Tune runs trials, each trains a "
        "model with a protection operator on chosen layer groups and attacks it with "
        "membership inference (loss, LiRA, RMIA); Optuna optimises accuracy up and attack "
        "success down; MLflow records every trial. What a study found is in its run directory "
        "(report.html) and in the MLflow UI."
    )
    path = (
        (
            "1. pptp-search run --space spaces/quickstart.yaml",
            "a study (about a minute on 2 "
            "CPU cores); prints the Pareto front and where to look next",
        ),
        (
            "2. pptp-search ui --run runs/quickstart/<timestamp> --open",
            "the trials in the MLflow UI, objectives as columns",
        ),
        (
            "3. open runs/quickstart/<timestamp>/report.html",
            "the interactive front, ROC curves, layer risk",
        ),
        (
            "4. pptp-search pick --run runs/quickstart/<timestamp> --rule knee",
            "choose, re-audit and export a config",
        ),
    )
    parts = [
        f"{PROG.upper()}(1)\n",
        _section("NAME", f"{PROG} - search PPTP configs for accuracy against membership risk"),
        _section(
            "SYNOPSIS",
            f"{PROG} COMMAND [OPTIONS]\n{PROG} COMMAND --help\n{PROG} --help | --version",
        ),
        _section("DESCRIPTION", "\n".join(textwrap.wrap(description, WIDTH - len(INDENT)))),
        _section("COMMANDS", commands),
        _section("EXAMPLES", _pairs(path, width=40)),
        _section(
            "EXIT STATUS",
            _pairs(
                (
                    ("0", "success"),
                    ("1", "the work stopped before its end (see the command's page)"),
                    ("2", "bad input: one line on stderr naming the file, key or option"),
                    ("130", "interrupted with Ctrl-C"),
                )
            ),
        ),
        _section(
            "FILES",
            _pairs(
                (
                    ("runs/<study>/<timestamp>/", "a study's run directory"),
                    ("mlflow/", "the embedded MLflow store"),
                    ("bank/", "reference models"),
                    ("spaces/*.yaml", "search spaces (spaces/README.md)"),
                ),
                width=40,
            ),
        ),
        _section("ENVIRONMENT", _pairs(ENVIRONMENT, width=40)),
        _section("SEE ALSO", f"{PROG} COMMAND --help; README.md"),
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# dispatch


def _usage() -> str:
    return f"usage: {PROG} {{{','.join(COMMANDS)}}} [OPTIONS]   ({PROG} --help for the manual)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pptp-search`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(_usage(), file=sys.stderr)
        return 2
    first, rest = args[0], args[1:]
    if first in ("-h", "--help"):
        print(manual())
        return 0
    if first == "--version":
        print(f"{PROG} {_version()}")
        return 0
    if first == "help":
        if not rest:
            print(manual())
            return 0
        first, rest = rest[0], ["--help"]
    command = COMMANDS.get(first)
    if command is None:
        close = difflib.get_close_matches(first, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; commands: {', '.join(COMMANDS)}"
        print(f"error: unknown command {first!r}{hint}", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in rest):
        print(command_manual(command))
        return 0
    code = _load(command.module).main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
