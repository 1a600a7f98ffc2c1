"""The trial config: flat dotted keys in and out, unknown keys and wrong types named."""

from __future__ import annotations

import pytest

from pptp.config import TrialConfig, config_keys
from pptp.errors import ConfigError


def test_round_trip_through_flat_keys() -> None:
    cfg = TrialConfig.from_flat(
        {
            "train.lr": 0.2,
            "protect.groups": ["block1", "head"],
            "attack.attacks": ["loss"],
            "data.pool_size": None,
            "protect.strength": 1,
        }
    )
    assert cfg.protect.groups == ("block1", "head") and cfg.protect.strength == 1.0
    assert isinstance(cfg.protect.strength, float)
    flat = cfg.to_flat()
    assert set(flat) == set(config_keys())
    assert TrialConfig.from_flat(flat) == cfg
    assert cfg.replace(**{"train.seed": 4}).train.seed == 4


def test_attack_defaults_are_resolved_later_and_round_trip() -> None:
    cfg = TrialConfig()
    assert cfg.attack.attacks is None and cfg.attack.query_augment is None
    flat = cfg.to_flat()
    assert flat["attack.attacks"] is None and flat["attack.query_augment"] is None
    assert TrialConfig.from_flat(flat) == cfg
    forced = TrialConfig.from_flat({"attack.query_augment": False, "attack.attacks": None})
    assert forced.attack.query_augment is False and forced.attack.attacks is None


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"train.lrate": 0.1}, r"unknown key 'train\.lrate'; train has epochs"),
        ({"optimizer.lr": 0.1}, r"unknown key 'optimizer\.lr'"),
        ({"lr": 0.1}, r"unknown key 'lr'"),
        ({"train.lr": "1e-4"}, r"write 1\.0e-4"),
        ({"train.epochs": 2.5}, r"train\.epochs = 2\.5 is not an int"),
        ({"train.augment": "yes"}, r"train\.augment = 'yes' is not a bool"),
        ({"data.pool_size": "all"}, r"data\.pool_size = 'all' is not an int or null"),
        ({"attack.attacks": 3}, r"attack\.attacks = 3 is not a list of strings or null"),
        ({"attack.query_augment": "auto"}, r"attack\.query_augment = 'auto' is not a bool or null"),
    ],
)
def test_bad_keys_and_types_name_the_source_and_key(flat: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        TrialConfig.from_flat(flat, source="spaces/x.yaml")
    assert str(info.value).startswith("spaces/x.yaml: ")
