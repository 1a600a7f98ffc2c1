"""Steer a study with a localisation: first trials that protect the riskiest layer groups.

A space may name a localisation that ``python search/localize.py`` wrote::

    study:
      localization: {run: runs/quickstart/localize-20261128-101500/localization.json, top_k: 3}

``run`` is a path to ``localization.json`` (relative paths are taken from the current directory,
like ``--space``); ``top_k`` (default 3) is how many of the riskiest groups the first trials try.
:func:`load_for_space` reads it and checks it belongs to the space's model and dataset;
:func:`enqueue_from_localization` turns it into first trials; :func:`localization_enqueue` does
both for a space (nothing when the space names no localisation).

Which trials (one per k = 1 .. min(top_k, n_groups - 1), the k riskiest groups by mean privacy
risk; duplicates dropped):

- the space searches ``protect.split`` (and ``protect.direction``, or fixes it): the k groups are
  enqueued as ``split: k`` with ``direction: prefix`` or ``suffix`` only when they are exactly the
  first or the last k groups, and k and the direction lie inside the searched distributions. A
  split protecting more groups than the risky ones is not tried: it would test another question.
- else, the space searches ``protect.groups`` (categorical choices are single group names): the
  riskiest group alone (k = 1), when it is one of the choices.
- a k that neither form can express is skipped, with a log line saying why.

Every other searched key gets one value inside its distribution: categorical keys their first
choice (``protect.operator``: the first choice, or each choice with ``operators="each"``),
floats the midpoint (geometric for log scales; ``protect.strength`` over [0, 1] gives 0.5), ints
the midpoint rounded onto their step. So the first trials differ only in which groups they
protect, and the sampler takes over from there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from pptp.errors import ConfigError
from pptp.localize import LocalizationResult, check_matches
from search.space import Space, SpaceError, contains

logger = logging.getLogger(__name__)

SPEC_KEYS = ("run", "top_k")
DEFAULT_TOP_K = 3
OPERATOR_MODES = ("first", "each")

_SPLIT, _DIRECTION, _GROUPS, _OPERATOR = (
    "protect.split",
    "protect.direction",
    "protect.groups",
    "protect.operator",
)


def _spec_error(space: Space, key: str, message: str) -> SpaceError:
    return SpaceError(f"{space.path}: study.localization{'.' + key if key else ''}: {message}")


def load_for_space(spec: Mapping[str, Any], space: Space) -> LocalizationResult:
    """The localisation ``spec["run"]`` names, checked against ``space``'s base config.

    Raises :class:`~search.space.SpaceError` (a ConfigError) for an unknown key, a missing
    ``run``, a missing or unreadable file, or a result measured on another model or dataset.
    """
    if not isinstance(spec, Mapping):
        raise _spec_error(
            space, "", f"needs a mapping like {{run: path/to/localization.json}}, got {spec!r}"
        )
    for key in spec:
        if key not in SPEC_KEYS:
            raise _spec_error(space, str(key), f"unknown key; known: {', '.join(SPEC_KEYS)}")
    run = spec.get("run")
    if not isinstance(run, str) or not run.strip():
        raise _spec_error(
            space,
            "run",
            "needs the path of a localization.json written by "
            "`python search/localize.py --space ...`",
        )
    _top_k(spec, space)
    try:
        result = LocalizationResult.load(Path(run).expanduser())
        check_matches(result, space.base_config(), source=run)
    except SpaceError:
        raise
    except ConfigError as err:
        raise _spec_error(space, "run", str(err)) from None
    return result


def _top_k(spec: Mapping[str, Any], space: Space) -> int:
    value = spec.get("top_k", DEFAULT_TOP_K)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _spec_error(space, "top_k", f"must be an integer >= 1, got {value!r}")
    return value


def localization_enqueue(space: Space, *, operators: str = "first") -> list[dict[str, Any]]:
    """First trials from the space's ``study.localization``; ``[]`` when it names none."""
    spec = space.study.localization
    if spec is None:
        return []
    result = load_for_space(spec, space)
    return enqueue_from_localization(result, space, top_k=_top_k(spec, space), operators=operators)


def enqueue_from_localization(
    result: LocalizationResult,
    space: Space,
    *,
    top_k: int = DEFAULT_TOP_K,
    operators: str = "first",
) -> list[dict[str, Any]]:
    """First trials protecting the k riskiest groups, k = 1 .. min(top_k, n_groups - 1).

    Each trial is a ``{searched key: value}`` dict inside the space's distributions (module
    docstring), ready for Optuna's ``enqueue_trial``. ``operators``: ``"first"`` (one trial per
    k with the first operator choice) or ``"each"`` (one per k and operator choice).
    """
    if operators not in OPERATOR_MODES:
        raise ConfigError(f"operators={operators!r}; use one of {', '.join(OPERATOR_MODES)}")
    names = [g.group for g in result.groups]
    ranked = [g.group for g in result.ranked()]
    params = space.params
    base = space.base_config()
    defaults = {k: _middle(d) for k, d in params.items() if k not in (_SPLIT, _DIRECTION, _GROUPS)}
    operator_values: list[Any] = [defaults.get(_OPERATOR)]
    operator_dist = params.get(_OPERATOR)
    if operators == "each" and isinstance(operator_dist, CategoricalDistribution):
        operator_values = list(operator_dist.choices)
    trials: list[dict[str, Any]] = []
    for k in range(1, min(top_k, len(names) - 1) + 1):
        chosen = set(ranked[:k])
        selection = _as_split(chosen, names, params, base.protect.direction)
        if selection is None:
            selection = _as_mask(chosen, params, base.protect.split)
        if selection is None:
            logger.info(
                "localisation: top-%d groups %s cannot be enqueued: they are not the first or "
                "last %d groups (or split %d / that direction is outside the searched range), "
                "and the space does not search protect.groups with that name",
                k, sorted(chosen, key=names.index), k, k,
            )  # fmt: skip
            continue
        for op in operator_values:
            trial = {**defaults, **selection}
            if _OPERATOR in params:
                trial[_OPERATOR] = op
            if trial not in trials:
                trials.append(trial)
    if not trials:
        logger.warning(
            "localisation %s gives no first trials for %s: search protect.split and "
            "protect.direction, or protect.groups, to let it steer the study",
            ", ".join(ranked[:top_k]), space.path,
        )  # fmt: skip
    return trials


def _as_split(
    chosen: set[str],
    names: list[str],
    params: Mapping[str, BaseDistribution],
    fixed_direction: str,
) -> dict[str, Any] | None:
    split = params.get(_SPLIT)
    if not isinstance(split, IntDistribution):
        return None
    k = len(chosen)
    for direction, block in (("prefix", names[:k]), ("suffix", names[len(names) - k :])):
        if set(block) != chosen or not contains(split, k):
            continue
        dist = params.get(_DIRECTION)
        if dist is None and direction == fixed_direction:
            return {_SPLIT: k}
        if dist is not None and contains(dist, direction):
            return {_SPLIT: k, _DIRECTION: direction}
    return None


def _as_mask(
    chosen: set[str], params: Mapping[str, BaseDistribution], fixed_split: int | None
) -> dict[str, Any] | None:
    dist = params.get(_GROUPS)
    if len(chosen) != 1 or _SPLIT in params or fixed_split is not None:
        return None
    (name,) = chosen
    if isinstance(dist, CategoricalDistribution) and name in dist.choices:
        return {_GROUPS: name}
    return None


def _middle(dist: BaseDistribution) -> Any:
    """A value inside ``dist``: first choice, or the (geometric, for log) midpoint on the step."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0]
    if isinstance(dist, FloatDistribution):
        mid = math.sqrt(dist.low * dist.high) if dist.log else 0.5 * (dist.low + dist.high)
        if dist.step is not None:
            mid = round(dist.low + round((mid - dist.low) / dist.step) * dist.step, 12)
        return float(min(max(mid, dist.low), dist.high))
    if isinstance(dist, IntDistribution):
        mid = math.sqrt(dist.low * dist.high) if dist.log else 0.5 * (dist.low + dist.high)
        value = dist.low + round((mid - dist.low) / dist.step) * dist.step
        return int(min(max(value, dist.low), dist.high))
    raise TypeError(f"no midpoint for {type(dist).__name__}")
