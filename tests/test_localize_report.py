"""pptp.localize.report: the table, the CSV and the chart of a result."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fixtures_localize import fake_result, tiny_config

from pptp.localize import CSV_COLUMNS, localization_table, plot_localization, write_csv


def test_table_csv_and_chart(tmp_path: Path) -> None:
    cfg = tiny_config("small_cnn")
    result = fake_result(
        cfg, {"block1": 0.1, "block2": -0.2, "block3": 0.3, "block4": 0.0, "head": 0.25}
    )
    table = localization_table(result)
    lines = table.splitlines()
    for g in result.groups:
        assert any(line.startswith(g.group) for line in lines)
    assert "+0.3000 ± 0.0100" in table
    rows = write_csv(result, tmp_path / "l.csv").read_text().splitlines()
    assert rows[0].split(",") == list(CSV_COLUMNS)
    assert len(rows) == 1 + len(result.groups)
    png = plot_localization(result, tmp_path / "l.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = dataclasses.replace(result, groups=result.groups[:2])  # degenerate spreads still plot
    plot_localization(one, tmp_path / "one.png")
