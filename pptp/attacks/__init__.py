"""Membership inference attacks: pure numpy functions of per-example signals
(docs/design.md#attacks).

``ATTACKS[name](inputs)`` returns one score per example, higher = more likely a member. One module
per family, each citing its paper: ``threshold`` (loss, confidence, entropy, modified entropy),
``lira`` (Carlini et al. 2022), ``rmia`` (Zarifzadeh et al. 2024). Importing this package fills the
registry. :mod:`~pptp.attacks.defaults` says which attacks a trial runs (``attack_names``).
"""

from __future__ import annotations

from pptp.attacks import lira, rmia, threshold
from pptp.attacks.base import ATTACKS, AttackInput, AttackSpec, register_attack
from pptp.attacks.defaults import attack_names, check_attacks, default_attacks

__all__ = [
    "ATTACKS",
    "AttackInput",
    "AttackSpec",
    "attack_names",
    "check_attacks",
    "default_attacks",
    "lira",
    "register_attack",
    "rmia",
    "threshold",
]
