"""Who gets a study's trainings: shares per family, and steering away from repeated proposals.

A study's budget (``study.n_trials``) counts **distinct trainings**: a proposal that repeats a
finished trial is reused without training (:mod:`search.running.samplers`) and does not use up a
trial. Two things decide which configs get those trainings besides the sampler:

**Shares per family** (``study.budget: {pptp: 0.5, baselines: 0.5}``, with ``study.combine:
false``). A sampler follows early results: left alone, TPE gave 24 of 28 free trials of
``spaces/fashion.yaml`` to the baselines. With shares, before each proposal
:func:`family_to_pin` compares each family's distinct trainings so far with its share of the
study so far: when a family has fewer than ``floor(share x (k + 1))`` of the first ``k + 1``
trainings, the next proposal is pinned to it (PPTP: ``defense.name: none``; baselines: the
baseline defense with fewest trainings, ties in the order of its choices), and the sampler draws
every other key. So each family gets at least its share of every prefix of the study (rounded
down), and the sampler still chooses within the family and, while no family is behind, between
them. The undefended model and the space's enqueued first trials count toward the total but
toward no family's share; enqueued first trials run before any pinned one.

**Steering away from repeats.** NSGA-II's population converges and keeps proposing its parents
(600 proposals of a quickstart study held 279 distinct configs). After :data:`STEER_AFTER`
repeats in a row, the next proposal is a uniformly random point of the space
(:func:`random_point`, Optuna's ``RandomSampler``; pinned keys kept), which the sampler then
learns from like any other trial. After :data:`GIVE_UP_AFTER` repeats in a row the space has
no unseen config the sampler finds, and the study ends early, saying so.

The pinning and steering reach Optuna as ``study.enqueue_trial`` with only the pinned keys: the
sampler draws the rest. The enqueued trial's user attribute :data:`STEERED` says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from pptp.treatment import KINDS, Kind, treatment_of
from search.space import Space
from search.space.study import FAMILY_KINDS
from search.study.rundir import DUPLICATE_OF, INTERRUPTED

#: user attribute of a trial whose proposal was pinned or steered: why
STEERED = "steered"
#: repeats in a row after which the next proposal is a random point
STEER_AFTER = 2
#: repeats in a row (random points included) after which the study stops proposing
GIVE_UP_AFTER = 25
_DEFENSE = "defense.name"


def counts_as_training(trial: FrozenTrial) -> bool:
    """Whether ``trial`` used up one of the study's trainings: proposed (not WAITING), not a
    reused repeat, and not interrupted by a stopped driver (it runs again on resume)."""
    if trial.state == TrialState.WAITING or trial.user_attrs.get(DUPLICATE_OF) is not None:
        return False
    return not (trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED))


def family_to_pin(shares: Mapping[str, float], counts: Mapping[str, int], total: int) -> str | None:
    """The family the next training must go to, or None when the sampler may choose.

    ``counts``: each family's trainings so far; ``total``: all trainings so far (undefended and
    other kinds included). A family is behind when it has fewer than ``floor(share x (total +
    1))``; the most behind is pinned (ties: the order of ``shares``).
    """
    best, best_deficit = None, 0
    for family, share in shares.items():
        deficit = math.floor(share * (total + 1) + 1e-9) - counts.get(family, 0)
        if deficit > best_deficit:
            best, best_deficit = family, deficit
    return best


@dataclass(frozen=True)
class FamilyShares:
    """``study.budget`` for one space: shares per family and how to tell a trial's family.

    ``kind_of``: the treatment kind of a trial's sampled params (``Space.trial_config`` then
    :func:`pptp.treatment.treatment_of`); ``baselines``: the baseline choices of
    ``defense.name``, in the space's order.
    """

    shares: Mapping[str, float]
    kind_of: Callable[[Mapping[str, Any]], Kind]
    baselines: Sequence[str]

    def pin(self, trials: Sequence[FrozenTrial]) -> tuple[str, dict[str, Any]] | None:
        """``(family, params to pin)`` for the next proposal, or None (module docstring)."""
        trained = [t for t in trials if counts_as_training(t)]
        kinds = [self.kind_of(t.params) for t in trained]
        counts = {f: sum(k == kind for k in kinds) for f, kind in FAMILY_KINDS.items()}
        family = family_to_pin(self.shares, counts, len(trained))
        if family is None:
            return None
        if family == "pptp":
            return family, {_DEFENSE: "none"}
        used = {b: sum(t.params.get(_DEFENSE) == b for t in trained) for b in self.baselines}
        return family, {_DEFENSE: min(self.baselines, key=lambda b: used[b])}


def kind_of(space: Space) -> Callable[[Mapping[str, Any]], Kind]:
    """What kind of trial (:mod:`pptp.treatment`) a proposal of ``space`` trains."""
    return lambda params: treatment_of(space.trial_config(params)).kind


def shares_for(space: Space) -> FamilyShares | None:
    """The space's ``study.budget`` as :class:`FamilyShares`; None when it states none."""
    if not space.study.budget:
        return None
    defense = space.params["defense.name"]  # checked searched when the space was read
    assert isinstance(defense, CategoricalDistribution)
    baselines = [str(c) for c in defense.choices if c != "none"]
    return FamilyShares(space.study.budget, kind_of(space), baselines)


def random_point(space: Mapping[str, BaseDistribution], seed: int) -> dict[str, Any]:
    """A uniformly random point of ``space`` (Optuna's ``RandomSampler`` on a throwaway study)."""
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return dict(scratch.ask(dict(space)).params)


@dataclass
class RepeatCounter:
    """Repeats in a row of one searcher, and what to do about them (module docstring)."""

    in_a_row: int = 0
    total: int = 0

    def saw(self, *, repeat: bool) -> None:
        self.in_a_row = self.in_a_row + 1 if repeat else 0
        self.total += int(repeat)

    @property
    def steer(self) -> bool:
        return self.in_a_row >= STEER_AFTER

    @property
    def exhausted(self) -> bool:
        return self.in_a_row >= GIVE_UP_AFTER


def repeat_share(trials: Sequence[FrozenTrial]) -> tuple[int, int]:
    """``(repeats, proposals)`` of a study: reused proposals among all proposed trials."""
    proposed = [t for t in trials if t.state != TrialState.WAITING]
    repeats = sum(t.user_attrs.get(DUPLICATE_OF) is not None for t in proposed)
    return repeats, len(proposed)


def repeat_line(trials: Sequence[FrozenTrial]) -> str | None:
    """``repeats: 12 of 48 proposals (25%) repeated a finished config: reused, not trained``,
    or None when the study has no proposal."""
    repeats, proposed = repeat_share(trials)
    if not proposed:
        return None
    return (
        f"repeats: {repeats} of {proposed} proposals ({100 * repeats / proposed:.0f}%) repeated "
        "a finished config: reused, not trained, not counted in n_trials"
    )


def family_line(trials: Sequence[FrozenTrial], kind_of: Callable[[Mapping[str, Any]], Kind]) -> str:
    """``trainings per family: undefended 2, pptp 17, baseline 17`` over the study's trainings
    (kinds in :data:`pptp.treatment.KINDS` order)."""
    kinds = [kind_of(t.params) for t in trials if counts_as_training(t)]
    found = {k: kinds.count(k) for k in KINDS if k in kinds}
    return "trainings per family: " + ", ".join(f"{k} {n}" for k, n in found.items())
