"""What a user reads in ``--help``: one page per command, shared by ``python search/<cmd>.py
--help`` and ``pptp-search <cmd> --help`` (and ``pptp-search --help``).

A :class:`Page` holds what the command's argparse options do not say: a summary, a description
written for users, examples, every exit status, the files it writes, and optional extra sections
(``pick``'s rules). :func:`parser` makes the command's ``ArgumentParser`` from it, so the page and
the options live in one place each. This module imports only the standard library: ``--help``
never pays for torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PROG = "pptp-search"
INDENT = "  "
WIDTH = 92

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Page:
    """One command's manual page, less its options (its parser's).

    ``module``: the module whose ``main(argv)`` runs it; ``sections``: extra sections made when the
    page is shown, as ``(title, [(term, text), ...])`` (e.g. pick's rules, read from their
    registry).
    """

    name: str
    module: str
    summary: str
    description: str
    examples: Pairs
    exit_status: Pairs
    files: Pairs = ()
    sections: Callable[[], Sequence[tuple[str, Pairs]]] | None = None


BAD_INPUT = (
    "2",
    "bad input (a space file, a run directory, an option): one line on stderr, nothing started",
)
INTERRUPTED = ("130", "interrupted with Ctrl-C")

PAGES: dict[str, Page] = {}


def register(page: Page) -> Page:
    """Add ``page`` (its command appears in ``pptp-search --help`` in registration order)."""
    PAGES[page.name] = page
    return page


def _pick_rules() -> Sequence[tuple[str, Pairs]]:
    from search.picking.rules import RULES  # imported when pick's page is shown

    rules = tuple((name, _first_line(rule.__doc__ or "")) for name, rule in RULES.items())
    return (("rules (--rule):", rules),)


def _first_line(doc: str) -> str:
    """A docstring's first paragraph as plain text (Sphinx roles and backticks dropped)."""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


ENVIRONMENT: Pairs = (
    ("MLFLOW_TRACKING_URI", "the MLflow store when --tracking-uri is not given"),
    ("MLFLOW_DISABLE_TELEMETRY", "set to true by default (no files under the home directory)"),
    ("RAY_AUTH_MODE", "set to disabled by default (no ~/.ray/auth_token)"),
)


def _pairs(pairs: Sequence[tuple[str, str]], *, width: int = 0) -> str:
    """``term  text`` lines (text wrapped), or the term then indented text for long terms."""
    width = width or max(len(t) for t, _ in pairs)
    lines: list[str] = []
    for term, text in pairs:
        if width <= 24:
            wrapped = textwrap.wrap(text, WIDTH - len(INDENT) - width - 2) or [""]
            lines.append(f"{term.ljust(width)}  {wrapped[0]}")
            lines += [" " * (width + 2) + w for w in wrapped[1:]]
        else:
            lines.append(term)
            lines += ["    " + w for w in textwrap.wrap(text, WIDTH - len(INDENT) - 4)]
    return "\n".join(lines)


def section(title: str, body: str) -> str:
    """A titled block, its body indented."""
    return f"{title}\n{textwrap.indent(body.rstrip(), INDENT)}\n"


def _wrap(text: str) -> str:
    """Paragraphs (blank-line separated) wrapped to the page width."""
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    return "\n\n".join(textwrap.fill(p, WIDTH - len(INDENT)) for p in paragraphs)


def epilog(page: Page) -> str:
    """The sections after the options: extra sections, examples, exit status, files, environment."""
    parts = [section(title, _pairs(pairs)) for title, pairs in (page.sections or tuple)()]
    parts.append(section("examples:", _pairs(page.examples, width=40)))
    parts.append(section("exit status:", _pairs(page.exit_status)))
    if page.files:
        parts.append(section("files:", _pairs(page.files, width=40)))
    parts.append(section("environment:", _pairs(ENVIRONMENT, width=40)))
    return "\n".join(parts)


def parser(name: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The ``ArgumentParser`` of command ``name``: its page's description and epilog, the
    options left to the caller. ``prog`` defaults to ``search/<name>.py``."""
    page = PAGES[name]
    return argparse.ArgumentParser(
        prog=prog or f"search/{name}.py",
        description=_wrap(f"{page.summary[0].upper()}{page.summary[1:]}.\n\n{page.description}"),
        epilog=epilog(page),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def overview(version: str) -> str:
    """``pptp-search --help``: what the tool does, its commands, the path through them."""
    width = max(len(n) for n in PAGES)
    commands = "\n".join(f"{n.ljust(width)}  {p.summary}" for n, p in PAGES.items())
    description = (
        "Searches how to train a classifier so that it keeps its accuracy while leaking little "
        "about who was in its training data. Following the Privacy-Preserving Training Principle "
        "(PPTP, Fang & Kim, arXiv 2602.02296), each trial protects the layer groups that carry "
        "membership risk and leaves the others free, or trains with a classic defense tuned the "
        "same way; it is then attacked with membership inference (loss, LiRA, RMIA). Ray Tune "
        "runs the trials, Optuna optimises accuracy up and attack success down, MLflow records "
        "every trial. What a study found is in its run directory (report.html) and in the MLflow "
        "UI."
    )
    path: Pairs = (
        (
            "1. pptp-search run --space spaces/quickstart.yaml",
            "a study (about a minute on 2 CPU cores); prints the Pareto front and the next steps",
        ),
        (
            "2. pptp-search ui --run runs/quickstart/<timestamp> --open",
            "the trials in the MLflow UI, objectives as columns",
        ),
        ("3. open runs/quickstart/<timestamp>/report.html", "the front, ROC curves, layer risk"),
        (
            "4. pptp-search pick --run runs/quickstart/<timestamp> --rule knee",
            "choose, re-audit, export and register a config",
        ),
    )
    parts = [
        f"{PROG} {version}\n",
        section("usage:", f"{PROG} COMMAND [OPTIONS]\n{PROG} COMMAND --help\n{PROG} --version"),
        section("description:", _wrap(description)),
        section("commands:", commands),
        section("a first study:", _pairs(path, width=40)),
        section(
            "exit status:",
            _pairs(
                (
                    ("0", "success"),
                    ("1", "the work stopped before its end (the command's page says when)"),
                    ("2", "bad input: one line on stderr naming the file, key or option"),
                    ("3", "done, with a part missing (the command's page says which)"),
                    ("130", "interrupted with Ctrl-C (143: SIGTERM, where a page says so)"),
                )
            ),
        ),
        section(
            "files:",
            _pairs(
                (
                    ("runs/<study>/<timestamp>/", "a study's run directory"),
                    ("mlflow/", "the embedded MLflow store"),
                    ("bank/", "reference models shared by studies"),
                    ("spaces/*.yaml", "search spaces (spaces/README.md)"),
                ),
                width=40,
            ),
        ),
        section("environment:", _pairs(ENVIRONMENT, width=40)),
        section("see also:", f"{PROG} COMMAND --help; README.md; spaces/README.md"),
    ]
    return "\n".join(parts)


register(
    Page(
        "run",
        "search.run",
        "run (or resume) a PPTP search: Ray Tune trials, Optuna sampling, MLflow tracking",
        """
        Reads a space file (spaces/README.md), checks everything that can be wrong before
        anything starts, trains the reference models the attacks need (kept in bank/ for later
        studies), then runs the trials: each trains the space's model with a protection
        operator on some layer groups (or a baseline defense), attacks it, and reports test
        accuracy and attack success. Progress lines show each trial; at the end the Pareto
        front is printed with the commands to look at it, and the run directory holds
        study.db, the front as CSV and report.html.

        A study stopped for any reason resumes with --resume: finished trials are kept, the
        ones that were running are run again. --sync replays into MLflow what a run directory
        holds and MLflow lacks.
        """,
        examples=(
            ("pptp-search run --space spaces/quickstart.yaml", "a new study in runs/quickstart/"),
            ("pptp-search run --space spaces/quickstart.yaml --resume", "continue the newest run"),
            (
                "pptp-search run --space spaces/quickstart.yaml --resume --n-trials 24",
                "extend a finished study to 24 trials",
            ),
            (
                "pptp-search run --space spaces/resnet.yaml --data-dir /data/cifar10",
                "the main job: ResNet-18 on CIFAR-10 (GPU)",
            ),
            ("pptp-search run --sync --output runs/quickstart/<timestamp>", "MLflow catches up"),
        ),
        exit_status=(
            ("0", "the study has all its trials and MLflow holds them"),
            ("1", "stopped before the last trial by a failure outside any trial (resume it)"),
            BAD_INPUT,
            ("3", "the study is complete but MLflow lacks part of it (run --sync)"),
            ("130", "interrupted (Ctrl-C); the resume command is printed"),
        ),
        files=(
            (
                "runs/<study>/<timestamp>/",
                "the run directory: study.db (Optuna), state.json, space.yaml, "
                "pareto_front.csv, report.html, trials/",
            ),
            ("mlflow/mlflow.db, mlflow/artifacts/", "the embedded MLflow store (default)"),
            ("bank/", "reference models shared by trials, runs and studies"),
        ),
    )
)
register(
    Page(
        "localize",
        "search.localize",
        "measure where privacy risk and generalization sit, per layer group",
        """
        Trains the space's model twice per seed (on two halves of the pool) and measures, for
        each layer group, how much the group's weights tell members from non-members and how
        much they carry what generalizes. Writes a table, a JSON file and a chart; a study can
        start from the groups it ranks riskiest (study.localization in the space).
        """,
        examples=(
            ("pptp-search localize --space spaces/quickstart.yaml", "3 seeds, about 1 minute"),
            (
                "pptp-search localize --space spaces/quickstart.yaml --seeds 0,1,2,3,4 "
                "--output runs/loc-5",
                "5 seeds into a folder of your choice",
            ),
        ),
        exit_status=(("0", "written and logged"), BAD_INPUT, INTERRUPTED),
        files=(
            (
                "runs/<study>/localize-<timestamp>/",
                "localization.json, localization.csv, localization.png",
            ),
        ),
    )
)
register(
    Page(
        "pick",
        "search.pick",
        "choose a Pareto config by a stated rule, re-audit it, export and register it",
        """
        Reads a finished (or running) study, keeps the candidates that meet your bounds
        (--max, --min), and lets a rule choose one, saying why. Optionally re-trains the pick
        on new seeds (--seeds) and audits it with an attacker who knows the defense
        (--adaptive: reference models trained under the pick's own config). Prints the
        screening and re-audited numbers side by side, writes picked.yaml (a space that runs
        as it is with search/run.py) and, with --register, trains the model to ship and
        registers it in MLflow under an alias.
        """,
        examples=(
            ("pptp-search pick --run runs/quickstart/<timestamp>", "the knee of the front"),
            (
                "pptp-search pick --run RUN --rule max-acc --max attack_tpr@1%fpr=0.05 "
                "--seeds 3 --adaptive --register digits-cnn",
                "the most accurate config under a TPR bound, re-trained on 3 seeds, audited "
                "adaptively, registered as models:/digits-cnn@production",
            ),
        ),
        exit_status=(("0", "picked and exported"), BAD_INPUT, INTERRUPTED),
        files=(("<run>/picked.yaml", "the exported config (a space that pins every key)"),),
        sections=_pick_rules,
    )
)
register(
    Page(
        "compare",
        "search.compare",
        "draw PPTP's front against the classic defenses, with hypervolumes",
        """
        Splits the trials of one or more studies into PPTP and the baselines, draws both
        fronts with the undefended model, and compares their hypervolumes with intervals from
        each family's pooled seed noise. It says "no verdict" (exit 3) when the runs cannot
        support one: a family with no trial or fewer than 3, or trials of one seed.
        """,
        examples=(
            ("pptp-search compare --run runs/fashion/<timestamp>", "one study with baselines"),
            ("pptp-search compare --run RUN_A --run RUN_B", "a PPTP study and a baseline study"),
        ),
        exit_status=(
            ("0", "compared, with a verdict"),
            BAD_INPUT,
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
    Page(
        "report",
        "search.report",
        "write a study's report page and make its MLflow runs explain themselves",
        """
        Writes (or rewrites) report.html for a study: the interactive front with the baselines
        and the undefended model, ROC curves of the Pareto trials, the layer-risk chart of the
        localisation that steered it, the picked config and every trial. The file works
        offline. When the study's MLflow store answers, it also names the trial runs by what
        they tried, saves the runs-table views and attaches the page to the study's run; when
        it does not, the page says which parts are missing.
        """,
        examples=(
            ("pptp-search report --run runs/quickstart/<timestamp>", "rewrite report.html"),
            ("pptp-search report --run RUN --no-mlflow", "the page only; MLflow untouched"),
        ),
        exit_status=(
            ("0", "written (the page lists any part it could not draw)"),
            BAD_INPUT,
            ("3", "nothing to report: the study has no finished trial yet"),
        ),
        files=(("<run>/report.html", "the page; also attached to the study's MLflow run"),),
    )
)
register(
    Page(
        "ui",
        "search.ui",
        "start the MLflow UI on 127.0.0.1, opened on the study's runs table",
        """
        Starts the MLflow UI over the store a study wrote to, waits until it answers, and
        prints the address of the study's runs table first (trials with their objectives as
        columns), then its Pareto trials and its report. Ctrl-C stops the server. With a
        tracking server (http://...) nothing is started: the addresses are printed.
        """,
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
            BAD_INPUT,
        ),
        files=(("<run>/state.json", "the store and study a run directory belongs to"),),
    )
)
register(
    Page(
        "sync",
        "search.sync",
        "replay into MLflow what a run directory holds and MLflow lacks",
        """
        A study keeps every trial's record in its run directory whatever happens to MLflow.
        When the store was unreachable or lost during a study (run exited 3), sync replays
        the trials, the front and the report into it, or into a new store with
        --tracking-uri. Nothing is trained; running it twice changes nothing the second time.
        """,
        examples=(
            ("pptp-search sync --run runs/quickstart/<timestamp>", "into the study's own store"),
            (
                "pptp-search sync --run RUN --tracking-uri sqlite:///new/mlflow.db",
                "into a new store",
            ),
        ),
        exit_status=(
            ("0", "MLflow holds the whole study"),
            BAD_INPUT,
            ("3", "MLflow still lacks part of it (the lines say what)"),
        ),
    )
)
