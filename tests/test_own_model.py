"""A user's model by import path (pptp.own_model, pptp.imports): built from the data's facts,
layer groups declared or derived and checked, every mistake one ConfigError before training; the
reference bank keys the model file and the data (pptp.bank.user_fingerprints)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pptp.bank import recipe_key
from pptp.config import DataConfig, ModelConfig, Params, TrialConfig
from pptp.datasets import DataFacts
from pptp.errors import ConfigError
from pptp.layers import layer_groups
from pptp.models import check_model, model_from_config
from pptp.treatment import planned_groups

MODEL_FILE = """
from torch import nn


class Net(nn.Module):
    def __init__(self, facts, hidden):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(facts.channels, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.pool = nn.Flatten()
        self.hidden = nn.Linear(hidden * 4, hidden)
        self.head = nn.Linear(hidden, facts.num_classes)

    def forward(self, x):
        return self.head(self.hidden(self.pool(self.features(x))).relu())


def build(facts, hidden=8):
    return Net(facts, hidden)


def wrong_shape(facts):
    return nn.Sequential(nn.Flatten(), nn.Linear(facts.features, 3), nn.Linear(3, 3))


def not_a_module(facts):
    return "a string"
"""

FACTS = DataFacts(num_classes=10, channels=1, image_size=8)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "mynet.py"
    path.write_text(MODEL_FILE)
    return path


def test_file_factory_gets_facts_and_kwargs(model_file: Path) -> None:
    cfg = ModelConfig(name=f"{model_file}:build", kwargs=Params({"hidden": 12}))
    model = model_from_config(cfg, FACTS)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert model.hidden.out_features == 12  # type: ignore[union-attr]
    # derived as for torchvision models: the parameter-holding top-level children
    assert [g.name for g in layer_groups(model)] == ["features.0", "hidden", "head"]


def test_module_factory_by_import_path(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(model_file.parent))
    monkeypatch.delitem(sys.modules, "mynet", raising=False)
    model = model_from_config(ModelConfig(name="mynet:build"), FACTS)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_declared_groups_and_their_checks(model_file: Path) -> None:
    name = f"{model_file}:build"
    groups = Params({"body": ["features", "hidden"], "head": ["head"]})
    model = model_from_config(ModelConfig(name=name, groups=groups), FACTS)
    assert [g.name for g in layer_groups(model)] == ["body", "head"]
    doubled = Params({"body": ["features", "hidden"], "all": [".*"]})
    with pytest.raises(
        ConfigError,
        match=r"model.groups: 4 parameter\(s\) .* more than one .*"
        r"features.0.weight \(body and all\)",
    ):
        model_from_config(ModelConfig(name=name, groups=doubled), FACTS)
    with pytest.raises(ConfigError, match=r"in no layer group .*: head.weight, head.bias"):
        model_from_config(
            ModelConfig(name=name, groups=Params({"a": ["features"], "b": ["hidden"]})), FACTS
        )
    with pytest.raises(ConfigError, match="at least 2"):
        model_from_config(ModelConfig(name=name, groups=Params({"all": [".*"]})), FACTS)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("wrong_shape", r"gives \(1, 3\) .* not logits \(1, 10\)"),
        ("not_a_module", "returned a str, not a torch.nn.Module"),
        ("missing", "has no 'missing'; it defines Net, build, not_a_module, wrong_shape"),
    ],
)
def test_bad_factories_are_one_config_error(model_file: Path, factory: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_model(ModelConfig(name=f"{model_file}:{factory}"), DataConfig(name="digits"))


def test_import_failures_name_the_path(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    for name, message in [
        (f"{broken}:build", "fails on import .*ModuleNotFoundError"),
        (f"{tmp_path}/absent.py:build", "absent.py is not a file"),
        ("no_such_package.models:build", "cannot import no_such_package.models"),
    ]:
        with pytest.raises(ConfigError, match=message):
            model_from_config(ModelConfig(name=name), FACTS)


def test_planned_groups_name_trials_of_a_user_model(model_file: Path) -> None:
    cfg = TrialConfig.from_flat(
        {
            "model.name": f"{model_file}:build",
            "protect.operator": "noise",
            "protect.strength": 0.5,
            "protect.split": 1,
            "protect.direction": "suffix",
            "model.norm": "group",
        }
    )
    assert planned_groups(cfg) == ("head",)


def test_flat_keys_round_trip_kwargs_and_groups() -> None:
    flat = {
        "model.name": "m.py:f",
        "model.kwargs.hidden": 64,
        "model.groups.body": ["features"],
        "model.groups.head": "head",
    }
    cfg = TrialConfig.from_flat(flat)
    assert cfg.model.kwargs == {"hidden": 64}
    assert list(cfg.model.groups or {}) == ["body", "head"]
    assert TrialConfig.from_flat(cfg.to_flat()) == cfg
    assert hash(cfg.model) == hash(TrialConfig.from_flat(cfg.to_flat()).model)


def test_bank_key_follows_the_model_file_and_the_images(model_file: Path, tmp_path: Path) -> None:
    """One changed line of the model file, one changed image: new bank entries."""
    from PIL import Image

    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    cfg = TrialConfig.from_flat(
        {
            "model.name": f"{model_file}:build",
            "data.name": "image_folder",
            "data.data_dir": str(folder),
            "data.test_size": 2,
            "data.val_size": 0,
        }
    )
    first, recipe = recipe_key(cfg, adaptive=False)
    assert recipe["model.name"] == "mynet.py:build"  # the folder is not keyed, the content is
    assert recipe_key(cfg, adaptive=False)[0] == first
    model_file.write_text(MODEL_FILE.replace("hidden=8", "hidden=9"))
    second, _ = recipe_key(cfg, adaptive=False)
    assert second != first
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a" / "0.png")
    third, _ = recipe_key(cfg, adaptive=False)
    assert third not in (first, second)
