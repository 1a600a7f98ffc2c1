"""The ``fixed`` and ``params`` sections: which trial-config keys a study fixes, which it searches.

Both name dotted :class:`~pptp.config.TrialConfig` keys (``train.lr``); ``fixed`` may also nest
them (``train: {lr: 0.1}``). Fixed values are coerced to the key's type with the trial config's
own rules (:func:`pptp.config.coerce`); a searched key's distribution must only produce values the
key accepts (a float distribution cannot feed an int key; categorical choices are coerced). An
unknown key suggests the closest known one.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from pptp.config import config_keys
from search.space.distributions import SCALAR_TYPES, distribution_from_short
from search.space.errors import SpaceError, coerce_value, space_error
from search.space.reading import flat_dict, mapping

UNSEARCHABLE = {"attack.attacks": "the attacks define the objective metrics; fix them"}
"""Keys a study may not search, and why."""


def unknown_key(key: str, *, where: str, source: str) -> SpaceError:
    """``<where>.<key>: unknown key; did you mean ...? <section> has ...``."""
    keys = config_keys()
    section = key.partition(".")[0]
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    in_section = [k for k in keys if k.startswith(f"{section}.")]
    if in_section:
        known = f"{section} has {', '.join(k.partition('.')[2] for k in in_section)}"
    else:
        sections = sorted({k.partition(".")[0] for k in keys})
        known = f"keys look like 'section.name' with section one of {', '.join(sections)}"
    return space_error(source, f"{where}.{key}", f"unknown key; {hint}{known}")


def parse_fixed(raw: Any, *, source: str) -> dict[str, Any]:
    """``fixed`` as flat dotted keys -> values coerced to the TrialConfig field types."""
    flat = flat_dict(mapping(raw, key="fixed", source=source), key="fixed", source=source)
    hints = config_keys()
    fixed = {}
    for k, v in flat.items():
        if k not in hints:
            raise unknown_key(k, where="fixed", source=source)
        fixed[k] = coerce_value(v, hints[k], key=f"fixed.{k}", source=source)
    return fixed


def parse_params(raw: Any, fixed: Mapping[str, Any], *, source: str) -> dict[str, BaseDistribution]:
    """``params``: dotted key -> Optuna distribution, in file order (see module docstring)."""
    hints = config_keys()
    params: dict[str, BaseDistribution] = {}
    for key, spec in mapping(raw, key="params", source=source).items():
        if "." not in key:
            raise space_error(
                source,
                f"params.{key}",
                "params keys are dotted, e.g. 'train.lr: "
                "{type: float, ...}' (nesting is for fixed only)",
            )
        if key not in hints:
            raise unknown_key(key, where="params", source=source)
        if key in UNSEARCHABLE:
            raise space_error(source, f"params.{key}", f"cannot be searched: {UNSEARCHABLE[key]}")
        if key in fixed:
            raise space_error(
                source, f"params.{key}", "is also in fixed; a key is either fixed or searched"
            )
        dist = distribution_from_short(f"params.{key}", spec, source=source)
        params[key] = fit_to_key(key, dist, hints[key], source=source)
    return params


def choice_value(value: Any, hint: Any, *, key: str, source: str) -> Any:
    """A categorical choice coerced to the key's type; a list-typed key keeps the scalar."""
    out = coerce_value(value, hint, key=key, source=source)
    return out if isinstance(out, SCALAR_TYPES) else value


def fit_to_key(key: str, dist: BaseDistribution, hint: Any, *, source: str) -> BaseDistribution:
    """Check that every value of ``dist`` is a valid ``key`` value; coerce categorical choices."""
    where = f"params.{key}"
    if hint is Any:  # model.kwargs.<name>: the factory takes whatever the distribution gives
        return dist
    accepts = _scalar_types(hint)
    if isinstance(dist, FloatDistribution) and float not in accepts:
        raise space_error(
            source,
            where,
            f"a float distribution cannot feed {key}, which takes "
            f"{_type_names(accepts)}; use type: int or categorical",
        )
    if isinstance(dist, IntDistribution) and not accepts & {int, float}:
        raise space_error(
            source,
            where,
            f"an int distribution cannot feed {key}, which takes "
            f"{_type_names(accepts)}; use type: categorical",
        )
    if isinstance(dist, CategoricalDistribution):
        choices = [
            choice_value(c, hint, key=f"{where}.choices[{i}]", source=source)
            for i, c in enumerate(dist.choices)
        ]
        return CategoricalDistribution(choices)
    return dist


def _scalar_types(hint: Any) -> set[Any]:
    """The types a key accepts, unions unpacked: ``int | None`` -> ``{int, NoneType}``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(_scalar_types(a) for a in typing.get_args(hint)))
    return {typing.get_origin(hint) or hint}


def _type_names(accepts: set[Any]) -> str:
    names = {type(None): "null", tuple: "a list"}
    return " or ".join(sorted(names.get(t, getattr(t, "__name__", str(t))) for t in accepts))
