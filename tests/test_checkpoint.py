"""model.init (pptp.checkpoint): a local checkpoint loaded strictly with weights_only=True before
training, part of the recipe and of the reference bank's key."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from pptp.bank_key import recipe_key
from pptp.config import ModelConfig, TrialConfig
from pptp.data import make_pool
from pptp.errors import ConfigError
from pptp.models import build_model, create_model

MLP = {"num_classes": 10, "in_channels": 1, "image_size": 8, "width": 16, "norm": "none"}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(123)
    path = tmp_path / "start.pt"
    torch.save(create_model("mlp", **MLP).state_dict(), path)  # type: ignore[arg-type]
    return path


def test_targets_start_from_the_checkpoint(checkpoint: Path) -> None:
    pool = make_pool("digits", test_size=100, pool_size=50)
    cfg = ModelConfig(name="mlp", width=16, norm="none", init=str(checkpoint))
    model = build_model(cfg, pool, seed=0)
    saved = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    other = build_model(ModelConfig(name="mlp", width=16, norm="none"), pool, seed=0)
    assert not torch.equal(other.head.weight, model.head.weight)  # type: ignore[union-attr]


def test_a_checkpoint_that_does_not_fit_is_one_error(checkpoint: Path, tmp_path: Path) -> None:
    pool = make_pool("digits", test_size=100, pool_size=50)
    wider = ModelConfig(name="mlp", width=32, norm="none", init=str(checkpoint))
    with pytest.raises(ConfigError, match=r"does not fit MLP \(shape: fc1.0.weight \(16, 64\)"):
        build_model(wider, pool, seed=0)
    code = tmp_path / "code.pt"
    torch.save({"w": torch.zeros(1), "f": Path("x")}, code)  # not only tensors: refused
    with pytest.raises(ConfigError, match="weights_only=True"):
        build_model(ModelConfig(name="mlp", width=16, norm="none", init=str(code)), pool, seed=0)
    missing = ModelConfig(name="mlp", init=str(tmp_path / "absent.pt"))
    with pytest.raises(ConfigError, match=r"absent\.pt is not a file"):
        build_model(missing, pool, seed=0)


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is not None, reason="installed")
def test_safetensors_without_the_package_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\0" * 16)
    pool = make_pool("digits", test_size=100, pool_size=50)
    with pytest.raises(ConfigError, match="pip install safetensors"):
        build_model(ModelConfig(name="mlp", init=str(path)), pool, seed=0)


def test_the_checkpoint_is_in_the_bank_key(checkpoint: Path) -> None:
    cfg = TrialConfig.from_flat({"model.name": "mlp", "model.init": str(checkpoint)})
    key, recipe = recipe_key(cfg, adaptive=False)
    assert recipe["model.init"] == "start.pt" and "model.init_fingerprint" in recipe
    assert key != recipe_key(TrialConfig.from_flat({"model.name": "mlp"}), adaptive=False)[0]
    torch.save({"other": torch.ones(2)}, checkpoint)
    assert recipe_key(cfg, adaptive=False)[0] != key
