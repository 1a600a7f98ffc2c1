"""pptp.localize.result: JSON round trip (never pickle), load errors, identity checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_localize import fake_result, tiny_config

from pptp.errors import ConfigError
from pptp.localize import LocalizationResult, check_matches


def test_json_round_trip(tmp_path: Path) -> None:
    cfg = tiny_config("small_cnn")
    result = fake_result(
        cfg, {"block1": 0.1, "block2": -0.2, "block3": 0.3, "block4": 0.0, "head": 0.25}
    )
    path = result.save(tmp_path / "sub" / "localization.json")
    loaded = LocalizationResult.load(path)
    assert loaded == result
    assert json.loads(path.read_text())["format"] == "pptp.localization"
    assert [g.group for g in loaded.ranked(2)] == ["block3", "head"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no localisation result.*search/localize.py"):
        LocalizationResult.load(tmp_path / "missing.json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"study": "x"}))
    with pytest.raises(ConfigError, match="not a localisation result"):
        LocalizationResult.load(other)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        LocalizationResult.load(broken)
    data = fake_result(tiny_config("mlp"), {"fc1": 0.0, "head": 0.1}).to_json()
    del data["groups"][0]["privacy_risk_mean"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="not a valid localisation result"):
        LocalizationResult.load(bad)


def test_check_matches_names_what_differs(caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config("small_cnn")
    result = fake_result(cfg, {"block1": 0.1, "head": 0.2})
    check_matches(result, cfg)
    check_matches(result, cfg.replace(**{"train.seed": 7, "train.device": "auto"}))
    with pytest.raises(ConfigError, match=r"model.name = 'small_cnn' there, 'mlp' here"):
        check_matches(result, tiny_config("mlp", **{"model.width": 8}))
    with pytest.raises(ConfigError, match=r"model.width"):
        check_matches(result, cfg.replace(**{"model.width": 16}))
    with pytest.raises(ConfigError, match=r"data.name = 'digits' there, 'mnist' here"):
        check_matches(result, cfg.replace(**{"data.name": "mnist"}))
    with pytest.raises(ConfigError, match=r"data.seed"):
        check_matches(result, cfg.replace(**{"data.seed": 1}))
    check_matches(result, cfg.replace(**{"train.epochs": 9}))  # another recipe: a warning
    assert "train.epochs" in caplog.text
