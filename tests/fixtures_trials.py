"""Finished trials built by hand (search.study.trials.FinishedTrial), for pure tests of the
tables, rules and comparisons that read them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pptp.treatment import Treatment
from search.study.trials import FinishedTrial


def trial(
    number: int,
    values: Mapping[str, float],
    *,
    pareto: bool = True,
    treatment: Treatment | None = None,
    per_seed: Mapping[str, Sequence[float]] | None = None,
    params: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    state: str = "COMPLETE",
    study: str = "s",
) -> FinishedTrial:
    """A finished trial with these values (means), seeds and treatment (default: undefended)."""
    return FinishedTrial(
        study=study,
        number=number,
        state=state,
        treatment=treatment or Treatment(),
        values=dict(values),
        per_seed={m: tuple(v) for m, v in (per_seed or {}).items()},
        params=dict(params or {}),
        attrs=dict(attrs or {}),
        pareto=pareto,
    )


def seeded(
    kind: str,
    acc: Sequence[float],
    auc: Sequence[float],
    *,
    trial_number: int = 0,
    defense: str = "relaxloss",
) -> FinishedTrial:
    """A trial of ``kind`` whose accuracy and attack AUC per training seed are given."""
    treatment = {
        "undefended": Treatment(),
        "pptp": Treatment("noise", 0.5, ("head",)),
        "baseline": Treatment(defense=defense, knobs=(("strength", 0.5),)),
        "combined": Treatment("noise", 0.5, ("head",), defense=defense),
    }[kind]
    means = {"test_acc": sum(acc) / len(acc), "attack_auc": sum(auc) / len(auc)}
    return trial(
        trial_number,
        means,
        treatment=treatment,
        per_seed={"test_acc": acc, "attack_auc": auc} if len(acc) > 1 else None,
    )
