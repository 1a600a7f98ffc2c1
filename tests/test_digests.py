"""pptp.digests.config_digest: stable, order-free, and the same recipe the bank and config use."""

from __future__ import annotations

import hashlib
import json

from pptp.config import TrialConfig
from pptp.digests import DIGEST_CHARS, config_digest


def test_order_free_and_short() -> None:
    a = config_digest({"lr": 0.1, "epochs": 3, "nested": {"x": [1, 2]}})
    b = config_digest({"nested": {"x": [1, 2]}, "epochs": 3, "lr": 0.1})
    assert a == b and len(a) == DIGEST_CHARS
    assert config_digest({"lr": 0.2, "epochs": 3}) != config_digest({"lr": 0.1, "epochs": 3})
    assert config_digest((1, 2)) == config_digest([1, 2])


def test_known_value_and_non_json_values() -> None:
    payload = {"b": 1, "a": None}
    expected = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert config_digest(payload) == expected
    assert config_digest({"path": object}) == config_digest({"path": str(object)})


def test_same_digest_as_trial_config() -> None:
    """TrialConfig.digest follows the same recipe, so it can switch to config_digest unchanged."""
    import dataclasses

    cfg = TrialConfig()
    payload = {s: dataclasses.asdict(getattr(cfg, s)) for s in ("train", "model")}
    assert cfg.digest("train", "model") == config_digest(payload)
