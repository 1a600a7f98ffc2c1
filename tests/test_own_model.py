"""A user's model by import path (pptp.own_model, pptp.imports): built from the data's facts,
layer groups declared or derived and checked, every mistake one ConfigError before training; the
reference bank keys the model file and the data (pptp.bank_key.user_fingerprints)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pptp.bank_key import recipe_key
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


def test_a_node_without_the_file_imports_the_shipped_copy(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's runtime_env puts a shipped file on the worker's path under its stem; a worker on a
    node without the driver's path imports that copy, with the same fingerprint."""
    from pptp.imports import source_fingerprint

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "mynet.py").write_text(model_file.read_text())
    driver_fingerprint = source_fingerprint(f"{model_file}:build", key="model.name")
    monkeypatch.syspath_prepend(str(shipped))
    monkeypatch.delitem(sys.modules, "mynet", raising=False)
    elsewhere = f"{tmp_path}/on-the-driver-only/mynet.py:build"
    model = model_from_config(ModelConfig(name=elsewhere), FACTS)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert source_fingerprint(elsewhere, key="model.name") == driver_fingerprint


BN_FILE = """
from torch import nn


def build(facts):
    return nn.Sequential(
        nn.Conv2d(facts.channels, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
        nn.Linear(4 * (facts.image_size - 2) ** 2, facts.num_classes),
    )
"""


@pytest.mark.parametrize(
    ("model", "operator", "message"),
    [
        ("mynet.py:wrong_shape", "damp", r"fixed\.model\.name: model .*gives \(1, 3\)"),
        (
            "bn.py:build",
            "noise",
            r"params\.protect\.operator\.choices\[0\]: noise needs per-"
            r"example gradients, which the BatchNorm layers of .*bn\.py:build make ill-defined",
        ),
    ],
)
def test_run_refuses_a_bad_user_model_before_anything_starts(
    model_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    operator: str,
    message: str,
) -> None:
    import re

    from search import run

    (tmp_path / "bn.py").write_text(BN_FILE)
    space = tmp_path / "space.yaml"
    space.write_text(
        "study: {name: own, n_trials: 1}\n"
        f"fixed: {{data.name: digits, model.name: {tmp_path / model}}}\n"
        f"params: {{protect.operator: {{type: categorical, choices: [{operator}]}}}}\n"
    )
    argv = ["--space", str(space), "--output", str(tmp_path / "run")]
    assert run.main([*argv, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "run" / "study.db").exists()
