"""``pptp-search``: one command for the user's path, installed with the package.

``pptp-search run|localize|pick|compare|report|ui|sync [OPTIONS]`` dispatches to the entry points
(``search/run.py``, ``search/pick.py``, ...), which keep working on their own
(``python search/run.py ...``). ``pptp-search --help`` prints an overview;
``pptp-search COMMAND --help`` prints the same page as ``python search/COMMAND.py --help``
(:mod:`search.cli.manual`: one page per command, options from the command's own parser).
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata

from search.cli.manual import PAGES, PROG, overview

COMMANDS = PAGES
"""The subcommands: :data:`search.cli.manual.PAGES` (a new entry point is one page there)."""


def _version() -> str:
    try:
        return metadata.version("pptp-search")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def manual() -> str:
    """``pptp-search --help``."""
    return overview(_version())


def command_help(name: str) -> str:
    """``pptp-search NAME --help``: the command's page with ``pptp-search NAME`` as its prog."""
    module = importlib.import_module(COMMANDS[name].module)
    return str(module.build_parser(f"{PROG} {name}").format_help())


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
        print(command_help(first))
        return 0
    code = importlib.import_module(command.module).main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
