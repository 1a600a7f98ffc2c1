"""Checks across sections: every name a study can use is registered, and the combinations make
sense, before anything is built or loaded.

- each name (dataset, model, norm, operator, direction, defense, attack) the study fixes or can
  sample is in its registry (cheap lookups only);
- the attacks have the reference models they need (``attack.attacks: null``: the default set for
  ``attack.n_references``, :func:`pptp.attacks.attack_names`);
- no objective or constraint is a TPR at an FPR the pool cannot resolve (always NaN);
- per-example gradients (``noise``, ``dpsgd``) never meet BatchNorm, which makes them ill-defined;
- an ``epsilon`` objective has DP-SGD fixed (only DP-SGD trials report epsilon);
- a protection operator and a defense that do not compose (:mod:`pptp.compose`) are refused when
  the study fixes or enqueues them together; a pair the sampler could draw is a warning (such a
  trial fails at once, naming both), unless ``study.combine: false`` keeps them apart;
- NSGA-II's population fits in the study (a warning otherwise: every trial would be random).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution

from pptp.attacks import check_attacks
from pptp.canary_kinds import CANARY_KINDS
from pptp.compose import pair
from pptp.config import TrialConfig
from pptp.data import dataset_spec
from pptp.datasets import DATASETS
from pptp.defenses import DEFENSES
from pptp.errors import ConfigError
from pptp.imports import is_import_path
from pptp.models import MODELS, NORMS, TORCHVISION_PREFIX
from pptp.operators import OPERATORS
from pptp.own_data import SOURCES, is_own_data
from pptp.selection import DIRECTIONS
from pptp.treatment import operator_acts
from pptp.trial import unresolvable_metrics
from search.space.errors import space_error
from search.space.study import StudySpec

logger = logging.getLogger(__name__)


def _model_exists(name: Any) -> bool:
    """A registered model, ``torchvision.<name>``, or a user's factory by import path (built and
    checked by :func:`pptp.models.check_model` before anything trains)."""
    return (
        name in MODELS
        or (isinstance(name, str) and name.startswith(TORCHVISION_PREFIX))
        or is_import_path(name)
    )


def _data_exists(name: Any) -> bool:
    """A built-in dataset, a user's data source, or a loader by import path."""
    return name in DATASETS or is_own_data(name)


# key -> (predicate, what to list when wrong)
_NAME_CHECKS: dict[str, tuple[Callable[[Any], bool], Callable[[], str]]] = {
    "data.name": (
        _data_exists,
        lambda: (
            ", ".join(sorted(DATASETS))
            + "; your own data: "
            + ", ".join(sorted(SOURCES))
            + " (with data.data_dir), or a loader package.module:function / file.py:function"
        ),
    ),
    "data.canary_kind": (lambda v: v in CANARY_KINDS, lambda: ", ".join(CANARY_KINDS)),
    "model.name": (
        _model_exists,
        lambda: (
            ", ".join(sorted(MODELS))
            + f", {TORCHVISION_PREFIX}<name>, or your own factory package.module:function / "
            "path/to/file.py:function"
        ),
    ),
    "model.norm": (lambda v: v in NORMS, lambda: ", ".join(sorted(NORMS))),
    "protect.operator": (lambda v: v in OPERATORS, lambda: ", ".join(sorted(OPERATORS))),
    "protect.direction": (lambda v: v in DIRECTIONS, lambda: ", ".join(DIRECTIONS)),
    "defense.name": (lambda v: v in DEFENSES, lambda: ", ".join(sorted(DEFENSES))),
}

#: keys naming a mechanism, and the registry whose entries declare what they need (pptp.hooks)
_MECHANISMS: dict[str, Mapping[str, Any]] = {
    "protect.operator": OPERATORS,
    "defense.name": DEFENSES,
}


def possible_values(
    key: str, base: Mapping[str, Any], params: Mapping[str, BaseDistribution]
) -> list[tuple[str, Any]]:
    """``(where, value)`` for each value ``key`` can take in the study: its categorical choices
    when searched, else its fixed (or default) value."""
    dist = params.get(key)
    if isinstance(dist, CategoricalDistribution):
        return [(f"params.{key}.choices[{i}]", c) for i, c in enumerate(dist.choices)]
    return [(f"fixed.{key}", base[key])]


def check_names(base: TrialConfig, params: Mapping[str, BaseDistribution], *, source: str) -> None:
    """Registered names, enough references per attack, no per-example gradients with BatchNorm."""
    flat = base.to_flat()
    for key, (exists, known) in _NAME_CHECKS.items():
        for where, value in possible_values(key, flat, params):
            if not exists(value):
                raise space_error(
                    source, where, f"unknown {key.replace('.', ' ')} {value!r}; known: {known()}"
                )
    try:
        check_attacks(base.attack)  # attack.attacks: null -> the default set for K
    except ConfigError as error:
        raise space_error(source, f"fixed.{error.key or 'attack.attacks'}", str(error)) from None
    # a user's model has no model.norm: search/run.py looks for BatchNorm in the built model
    own = all(is_import_path(v) for _, v in possible_values("model.name", flat, params))
    if not own and "batch" in {v for _, v in possible_values("model.norm", flat, params)}:
        for where, v in per_example_mechanisms(base, params):
            raise space_error(
                source,
                where,
                f"{v} needs per-example gradients, which "
                "BatchNorm (model.norm: batch, the default) makes "
                "ill-defined; fix model.norm: group",
            )


def per_example_mechanisms(
    base: TrialConfig, params: Mapping[str, BaseDistribution]
) -> list[tuple[str, str]]:
    """``(where, name)`` of each operator or defense the study can run that needs per-example
    gradients (``noise``, ``dpsgd``)."""
    flat = base.to_flat()
    return [
        (where, v)
        for key, registry in _MECHANISMS.items()
        for where, v in possible_values(key, flat, params)
        if registry[v].needs.per_example_grads
    ]


def check_resolution(study: StudySpec, base: TrialConfig, *, source: str) -> None:
    """A TPR at an FPR below 1 / (non-members) is never resolved (always NaN,
    docs/design.md#metrics-and-fpr-resolution):
    an objective or constraint on one is an error naming the key and what would resolve it.

    A user's data must be read to know its size: where it cannot be (a report or compare run
    from another folder or machine than the study), the check is skipped; search/run.py reads
    the data before anything starts (:func:`pptp.data.check_data`) and stops there if it must."""
    if is_own_data(base.data.name):
        try:
            dataset_spec(base.data)
        except ConfigError as err:
            logger.info("%s: data not read here, resolution not checked (%s)", source, err)
            return
    try:
        unresolved = unresolvable_metrics(
            base, [*study.metrics, *(c.metric for c in study.constraints)]
        )
    except ConfigError as err:  # a pool that cannot hold members and non-members
        raise space_error(source, "fixed.data", str(err)) from None
    for metric in study.metrics:
        if metric in unresolved:
            raise space_error(source, f"study.objectives.{metric}", unresolved[metric])
    for i, c in enumerate(study.constraints):
        if c.metric in unresolved:
            raise space_error(source, f"study.constraints[{i}].metric", unresolved[c.metric])


def _acts(operator: Any, strength: Any) -> bool:
    """:func:`pptp.treatment.operator_acts`, for values that may still be distributions (a
    searched strength counts as acting)."""
    return operator_acts(str(operator), strength if isinstance(strength, int | float) else 1.0)


def check_pairs(
    study: StudySpec, base: TrialConfig, params: Mapping[str, BaseDistribution], *, source: str
) -> None:
    """Operator and defense pairs the study runs must compose (:func:`pptp.compose.pair`).

    Fixed together, or together in an enqueued trial: a :class:`SpaceError` naming both and why.
    Drawn by the sampler (either key searched): a warning listing the refused pairs, since each
    such trial fails at once with the reason; ``study.combine: false`` never draws them.
    """
    flat = base.to_flat()

    def refused(operator: Any, defense: Any, strength: Any) -> str | None:
        if not study.combine and defense != "none":
            return None
        verdict = pair(operator, defense)
        return None if verdict.allowed or not _acts(operator, strength) else verdict.reason

    for i, entry in enumerate(study.enqueue):
        point = {**flat, **entry}
        reason = refused(
            point["protect.operator"], point["defense.name"], point["protect.strength"]
        )
        if reason:
            raise space_error(
                source,
                f"study.enqueue[{i}]",
                f"protect.operator {point['protect.operator']!r} does not compose with "
                f"defense.name {point['defense.name']!r}: {reason}",
            )
    operators = [v for _, v in possible_values("protect.operator", flat, params)]
    defenses = [v for _, v in possible_values("defense.name", flat, params)]
    strength = "searched" if "protect.strength" in params else flat["protect.strength"]
    bad = [(o, d, r) for o in operators for d in defenses if (r := refused(o, d, strength))]
    if not bad:
        return
    searched = "protect.operator" in params or "defense.name" in params
    if not searched:
        operator, defense, reason = bad[0]
        raise space_error(
            source,
            "fixed.protect.operator",
            f"{operator!r} does not compose with defense.name {defense!r}: {reason}",
        )
    logger.warning(
        "%s: the sampler can draw operator/defense pairs that do not compose (%s); each such "
        "trial fails at once naming both. Set study.combine: false to search PPTP and the "
        "defenses apart, or drop one of each pair from the choices",
        source,
        ", ".join(f"{o} + {d}" for o, d, _ in bad),
    )


def check_epsilon(
    study: StudySpec, base: TrialConfig, params: Mapping[str, BaseDistribution], *, source: str
) -> None:
    """``epsilon`` exists only for DP-SGD trials: an objective on it needs dpsgd fixed."""
    for i, o in enumerate(study.objectives):
        if o.metric == "epsilon" and ("defense.name" in params or base.defense.name != "dpsgd"):
            raise space_error(
                source,
                f"study.objectives.{o.metric}",
                f"objective {i + 1} needs defense.name fixed to dpsgd (only DP-SGD "
                "trials report epsilon)",
            )


def warn_small_population(study: StudySpec, *, source: str) -> None:
    """NSGA-II draws its first ``population_size`` trials at random: say so when that is all."""
    if study.sampler != "nsga2":
        return
    population = study.sampler_options.get("population_size", 50)
    if population > study.n_trials:
        logger.warning(
            "%s: nsga2 population_size %d exceeds n_trials %d: every trial is drawn at random",
            source,
            population,
            study.n_trials,
        )
