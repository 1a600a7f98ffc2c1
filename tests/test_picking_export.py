"""search.picking.export: the written file is YAML under a comment header, written atomically."""

from __future__ import annotations

from pathlib import Path

import yaml

from search.picking.export import write_export


def test_write_export(tmp_path: Path) -> None:
    path = tmp_path / "out" / "picked.yaml"
    write_export(path, {"study": {"name": "s"}, "fixed": {"train.lr": 0.1}}, ["first", "", "b"])
    text = path.read_text()
    assert text.startswith("# first\n#\n# b\nstudy:")
    assert yaml.safe_load(text) == {"study": {"name": "s"}, "fixed": {"train.lr": 0.1}}
    assert [p.name for p in path.parent.iterdir()] == ["picked.yaml"]  # no temporary left
