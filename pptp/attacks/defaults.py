"""Which attacks a trial runs: the configured list, or the strongest default for its references.

``attack.attacks: null`` (the default) picks the set from ``attack.n_references`` (K):

=========  ===================================================
K          attacks
=========  ===================================================
0          ``loss``
1          ``loss``, ``lira_offline_fixed_variance``, ``rmia_offline``
2 .. 15    ``loss``, ``lira_fixed_variance``, ``rmia_online``
>= 16      ``loss``, ``lira_online``, ``rmia_online``
=========  ===================================================

Why: online LiRA with per-example variances estimates each example's IN and OUT variance from
about K/2 models each. Carlini et al. 2022 recommend the global ("fixed") variance
with few reference models; this project's own attack table (``bench/README.md``) shows per-example
online LiRA at the loss attack's level for K <= 8 on digits, and fixed-variance LiRA above it at
every K. The threshold 16 is this project's choice (8 IN and 8 OUT models per example on average).
RMIA is strong already at K = 2-4 (Zarifzadeh et al. 2024). The loss attack needs no references and
bounds what a reference-free attacker sees. A configured list naming ``lira_online`` with K < 16
is honoured, with a warning.
"""

from __future__ import annotations

import logging

from pptp.attacks.base import ATTACKS
from pptp.config import AttackConfig
from pptp.errors import ConfigError

logger = logging.getLogger(__name__)

#: fewest references with which per-example-variance online LiRA is the default
LIRA_ONLINE_MIN_REFS = 16


#: ``(fewest references, attacks)``, by increasing K: the table above
_DEFAULTS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (0, ("loss",)),
    (1, ("loss", "lira_offline_fixed_variance", "rmia_offline")),
    (2, ("loss", "lira_fixed_variance", "rmia_online")),
    (LIRA_ONLINE_MIN_REFS, ("loss", "lira_online", "rmia_online")),
)


def default_attacks(n_references: int) -> tuple[str, ...]:
    """The default attack names for ``n_references`` reference models (the table above)."""
    if n_references < 0:
        raise ConfigError(f"attack.n_references = {n_references} must be >= 0")
    return [names for fewest, names in _DEFAULTS if n_references >= fewest][-1]


def attack_names(cfg: AttackConfig) -> tuple[str, ...]:
    """The attacks a trial with this attack config runs, in order (the metric names use them).

    Pure and cheap: the space validator calls it to know every ``<metric>/<attack>`` name.
    """
    return default_attacks(cfg.n_references) if cfg.attacks is None else tuple(cfg.attacks)


def check_attacks(cfg: AttackConfig) -> tuple[str, ...]:
    """:func:`attack_names`, each checked: known, enough references; warns about weak choices.

    Raises :class:`~pptp.errors.ConfigError` for an empty list, an unknown name (listing the known
    ones) or an attack that needs more references than ``attack.n_references``.
    """
    names = attack_names(cfg)
    if not names:
        raise ConfigError(
            "attack.attacks is empty; name at least one attack, e.g. loss, or leave it null "
            "for the default set",
            key="attack.attacks",
        )
    for name in names:
        if name not in ATTACKS:
            raise ConfigError(
                f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}",
                key="attack.attacks",
            )
        spec = ATTACKS[name]
        if spec.min_refs > cfg.n_references:
            raise ConfigError(
                f"attack {name!r} needs at least {spec.min_refs} reference models but "
                f"attack.n_references = {cfg.n_references}",
                key="attack.n_references",
            )
    if not 0 < cfg.audit_confidence < 1:
        raise ConfigError(
            f"attack.audit_confidence = {cfg.audit_confidence} must lie strictly between 0 and 1 "
            "(0.95 is the usual choice)",
            key="attack.audit_confidence",
        )
    if cfg.audit_delta is not None and not 0 <= cfg.audit_delta < 1:
        raise ConfigError(
            f"attack.audit_delta = {cfg.audit_delta} must lie in [0, 1) (e.g. 1.0e-5), or be "
            "null for defense.delta",
            key="attack.audit_delta",
        )
    if "lira_online" in names and cfg.n_references < LIRA_ONLINE_MIN_REFS:
        logger.warning(
            "attack.attacks names lira_online with %d reference models: its per-example "
            "variances need about %d or more; lira_fixed_variance is stronger with few "
            "references (or leave attack.attacks null for the default set)",
            cfg.n_references,
            LIRA_ONLINE_MIN_REFS,
        )
    return names
