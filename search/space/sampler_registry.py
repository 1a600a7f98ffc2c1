"""The samplers a space file can name (``study.sampler``) and the options it may give them.

:data:`SAMPLERS` maps a name to an Optuna sampler factory; :func:`sampler_options` reads the
plain-data arguments a factory takes from its signature (so a new Optuna option is usable without
code here), and :func:`build_sampler` builds one with the study's seed and options.
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable
from typing import Any

import optuna

from pptp.errors import ConfigError
from pptp.registry import Registry
from search.space.errors import coerce_value, space_error
from search.space.study import StudySpec

SAMPLERS: Registry[Callable[..., optuna.samplers.BaseSampler]] = Registry("sampler")
"""Sampler name -> factory called as ``factory(seed=..., **sampler_options)``.

``tpe`` is multivariate TPE (Falkner et al. 2018, BOHB): Optuna's default for several objectives
is the independent TPE, but the operator, strength and split interact, so the joint model is the
better default (``sampler_options: {multivariate: false}`` restores Optuna's). ``gp`` handles
several objectives (log EHVI) and constraints (tests/test_space_samplers.py runs it on Optuna 5).
"""
SAMPLERS.register("nsga2")(optuna.samplers.NSGAIISampler)
SAMPLERS.register("tpe")(functools.partial(optuna.samplers.TPESampler, multivariate=True))
SAMPLERS.register("gp")(optuna.samplers.GPSampler)
SAMPLERS.register("random")(optuna.samplers.RandomSampler)
SAMPLERS.register("qmc")(optuna.samplers.QMCSampler)

# Arguments a space file may not set: the seed comes from study.seed, constraints from
# study.constraints (through Trial.set_constraint; constraints_func is deprecated in Optuna 5).
_RESERVED_OPTIONS = ("self", "seed", "constraints_func")
_OPTION_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "None": type(None),
}


def _option_hint(annotation: Any) -> Any | None:
    """The type hint of a plain-data sampler argument (``"float | None"``), else None.

    Arguments taking objects or callables (mutation, crossover, gamma, independent_sampler,
    strategies) cannot come from YAML and are not offered.
    """
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    names = [t.strip() for t in text.split("|")]
    if not text or any(n not in _OPTION_TYPES for n in names):
        return None
    return functools.reduce(operator.or_, (_OPTION_TYPES[n] for n in names))


def sampler_options(name: str) -> dict[str, Any]:
    """The options a space file may give sampler ``name``: argument name -> type hint."""
    params = inspect.signature(SAMPLERS[name]).parameters
    out = {}
    for arg, p in params.items():
        if arg in _RESERVED_OPTIONS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = _option_hint(p.annotation)
        if hint is not None:
            out[arg] = hint
    return out


def check_sampler_options(study: StudySpec, *, source: str) -> dict[str, Any]:
    """``study.sampler_options`` coerced to the sampler's argument types; an unknown option or a
    value of the wrong type is a SpaceError at ``study.sampler_options.<option>``."""
    known = sampler_options(study.sampler)
    checked = {}
    for arg, value in study.sampler_options.items():
        key = f"study.sampler_options.{arg}"
        if arg not in known:
            hint = " (set by study.seed)" if arg == "seed" else ""
            raise space_error(
                source,
                key,
                f"unknown option for sampler {study.sampler!r}{hint}; known: "
                f"{', '.join(sorted(known))}",
            )
        checked[arg] = coerce_value(value, known[arg], key=key, source=source)
    return checked


def build_sampler(study: StudySpec, *, source: str = "space") -> optuna.samplers.BaseSampler:
    """``SAMPLERS[study.sampler](seed=study.seed, **study.sampler_options)``.

    Unknown options (checked against the sampler's signature) and values the sampler refuses are
    :class:`~search.space.errors.SpaceError` naming ``source`` and the key.
    """
    try:
        factory = SAMPLERS[study.sampler]
    except ConfigError as err:
        raise space_error(source, "study.sampler", str(err)) from None
    options = check_sampler_options(study, source=source)
    try:
        return factory(seed=study.seed, **options)
    except (TypeError, ValueError) as err:
        raise space_error(
            source, "study.sampler_options", f"sampler {study.sampler!r} refused {options}: {err}"
        ) from None
