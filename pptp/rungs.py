"""Rungs: the epochs of one training at which a multi-fidelity search measures a trial
(:mod:`pptp.fidelity`). Kept apart from the training code so that reading a space file
(``study.fidelity``) does not import torch."""

from __future__ import annotations

from collections.abc import Sequence


def rung_epochs(epochs: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """The epochs of rungs at ``fractions`` of ``epochs`` (rounded, at least 1, below
    ``epochs``, distinct, ascending): ``rung_epochs(30, [1/9, 1/3]) == (3, 10)``. The end of
    training is the last rung and is not listed."""
    out = sorted({max(1, round(f * epochs)) for f in fractions} - {epochs})
    return tuple(e for e in out if e < epochs)
