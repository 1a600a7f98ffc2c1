"""Short stable digests of configuration data: the keys of the bank, of cached results and of
localisation recipes.

One recipe everywhere: ``sha256`` of the payload as JSON with sorted keys (values JSON cannot
write go through ``str``), the first :data:`DIGEST_CHARS` hex characters. Equal payloads give
equal digests on any machine and Python version; dict order does not matter.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

DIGEST_CHARS = 16
"""64 bits: collisions among the few thousand configs a project stores are out of reach."""


def config_digest(payload: Any, *, chars: int = DIGEST_CHARS) -> str:
    """``sha256(json.dumps(payload, sort_keys=True, default=str))``, first ``chars`` hex digits.

    ``payload``: JSON-like data (mappings, lists, str, numbers, bool, None); tuples hash like
    lists. Example: ``config_digest({"lr": 0.1, "epochs": 3}) == config_digest({"epochs": 3,
    "lr": 0.1})``.
    """
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:chars]
