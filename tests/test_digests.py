"""pptp.digests.config_digest: stable, order-free, a known value."""

from __future__ import annotations

import hashlib
import json

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
