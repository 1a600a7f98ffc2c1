"""The names the project writes into MLflow: tag keys and metric keys MLflow accepts.

Kept apart from :mod:`search.tracking.store` so that readers of names (the UI launcher, saved
views, ``--help``) do not import MLflow (about 1.5-3 s on 2 cores).
"""

from __future__ import annotations

import re

#: tag keys shared with the search driver, pick.py, localize.py and the docs
TAG_KIND = "pptp.kind"
TAG_PARENT = "mlflow.parentRunId"
TAG_FAIL_REASON = "fail_reason"
TAG_PARETO = "pareto"
TAG_TRIAL_NUMBER = "trial_number"
TAG_STUDY = "pptp.study"

#: characters the project's metric names use that MLflow rejects, and what replaces them
METRIC_KEY_REPLACEMENTS = {"@": "_at_", "%": "pct_"}

#: MLflow's longest metric, param or tag key (``mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH``;
#: tests/test_tracking_store.py checks the two agree)
MAX_KEY_LENGTH = 250

_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- ]")


def metric_key(name: str) -> str:
    """A metric, param or tag name MLflow accepts, from one of the project's names.

    ``@`` -> ``_at_``, ``%`` -> ``pct_`` (:data:`METRIC_KEY_REPLACEMENTS`), so
    ``tpr@0.1%fpr/lira`` -> ``tpr_at_0.1pct_fpr/lira``; any other character outside
    ``[A-Za-z0-9_ ./-]`` -> ``_``; empty, ``.`` and ``..`` path segments are dropped (MLflow
    rejects names that a path normalisation would change); at most 250 characters. Names that are
    already valid come back unchanged, so the function is idempotent.
    """
    out = name
    for char, replacement in METRIC_KEY_REPLACEMENTS.items():
        out = out.replace(char, replacement)
    out = _INVALID_KEY_CHARS.sub("_", out)
    out = "/".join(seg for seg in out.split("/") if seg not in ("", ".", ".."))
    out = out[:MAX_KEY_LENGTH].rstrip("/")
    if not out:
        raise ValueError(f"metric name {name!r} has nothing MLflow can keep")
    return out
