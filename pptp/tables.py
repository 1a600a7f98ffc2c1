"""Aligned text tables, the way every entry point and benchmark prints results.

:func:`format_table` lays out rows under a header and a dashed rule; :func:`format_cell` is the
one spelling of a number in them (4 decimals, ``-`` for a missing or non-finite value).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

MISSING = "-"
"""What a table shows for None, NaN and infinities."""

_NUMBER = re.compile(r"^[+-]?(\d|\.\d)")


def format_cell(value: object, *, digits: int = 4, signed: bool = False) -> str:
    """One table cell: floats with ``digits`` decimals (``+`` sign when ``signed``), ints and text
    as they are, :data:`MISSING` for None and non-finite floats."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return MISSING
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def format_table(
    rows: Sequence[Sequence[object]],
    headers: Sequence[str],
    *,
    align: str = "",
    rule: bool = True,
    digits: int = 4,
) -> str:
    """``rows`` under ``headers`` as aligned columns two spaces apart, trailing spaces stripped.

    Cells that are not strings go through :func:`format_cell` (``digits`` decimals). ``align``:
    one letter per column, ``l`` (left) or ``r`` (right); empty = numbers right, text left (a
    column is right-aligned when every body cell reads as a number or is :data:`MISSING`).
    ``rule``: a dashed line under the header.
    """
    width = len(headers)
    if any(len(r) != width for r in rows):
        raise ValueError(f"every row needs {width} cells (one per header: {list(headers)})")
    body = [[c if isinstance(c, str) else format_cell(c, digits=digits) for c in r] for r in rows]
    if align:
        if len(align) != width or set(align) - {"l", "r"}:
            raise ValueError(f"align {align!r}: give one letter l or r per column ({width})")
        sides = list(align)
    else:
        sides = ["r" if body and all(_numeric(r[i]) for r in body) else "l" for i in range(width)]
    cells = [[str(h) for h in headers], *body]
    widths = [max(len(r[i]) for r in cells) for i in range(width)]

    def line(row: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if side == "r" else c.ljust(w)
            for c, w, side in zip(row, widths, sides, strict=True)
        )
        return "  ".join(padded).rstrip()

    lines = [line(r) for r in cells]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    return text == MISSING or bool(_NUMBER.match(text))
