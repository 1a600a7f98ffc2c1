"""pptp.tables: the one aligned-table layout and number spelling."""

from __future__ import annotations

import math

import pytest

from pptp.tables import MISSING, format_cell, format_table


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (0.5, {}, "0.5000"),
        (0.06, {"signed": True}, "+0.0600"),
        (-0.06, {"signed": True}, "-0.0600"),
        (1 / 3, {"digits": 2}, "0.33"),
        (7, {}, "7"),
        (True, {}, "True"),
        ("text", {}, "text"),
        (None, {}, MISSING),
        (math.nan, {}, MISSING),
        (math.inf, {"signed": True}, MISSING),
    ],
)
def test_format_cell(value: object, kwargs: dict[str, object], expected: str) -> None:
    assert format_cell(value, **kwargs) == expected  # type: ignore[arg-type]


def test_columns_align_numbers_right_and_text_left() -> None:
    table = format_table([["head", 0.5, 12], ["layer1", math.nan, 3]], ["group", "risk", "n"])
    assert table.splitlines() == [
        "group     risk   n",
        "------  ------  --",
        "head    0.5000  12",
        "layer1       -   3",
    ]


def test_explicit_alignment_no_rule_and_signed_text() -> None:
    table = format_table(
        [["1", "+0.1000"], ["12", "-0.2500"]], ["trial", "gap"], align="lr", rule=False
    )
    assert table.splitlines() == ["trial      gap", "1      +0.1000", "12     -0.2500"]


def test_header_only_and_bad_input() -> None:
    assert format_table([], ["a", "bb"]) == "a  bb\n-  --"
    with pytest.raises(ValueError, match="one per header"):
        format_table([[1]], ["a", "b"])
    with pytest.raises(ValueError, match="one letter"):
        format_table([[1, 2]], ["a", "b"], align="lx")
