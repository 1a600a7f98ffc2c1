"""Space files: one YAML file = one experiment (docs/design.md#space-files).

A space file has three top-level keys::

    study:   name, objectives, sampler (+ options, seed), trial count, concurrency, resources,
             constraints, enqueued first trials, a localisation to steer from
    fixed:   dotted TrialConfig keys -> values (nested mappings are flattened)
    params:  dotted TrialConfig keys -> distributions, in the short form
             {type: float|int|categorical, low, high, log, step, choices} or Optuna's own JSON form
             {name: FloatDistribution, attributes: {...}}

:func:`load_space` parses the file with a safe YAML loader, validates everything it can without
building a model or touching data (unknown keys, wrong types, empty ranges, unknown metric,
sampler, attack, operator, defense, model and dataset names), and returns a frozen :class:`Space`.
Every problem is a :class:`SpaceError` whose message starts with the file path and the key.
``spaces/README.md`` is the user's reference for the format.

The modules, in the order a file goes through them:

- :mod:`~search.space.reading`: safe YAML without duplicate keys, nested keys made dotted;
- :mod:`~search.space.trial_keys`: the ``fixed`` and ``params`` sections;
- :mod:`~search.space.distributions`: the short form <-> Optuna distributions;
- :mod:`~search.space.study_section`: the ``study`` section -> :class:`StudySpec`
  (:mod:`~search.space.study`: objectives, constraints, resources, metric names);
- :mod:`~search.space.sampler_registry`: :data:`SAMPLERS` and :func:`build_sampler`;
- :mod:`~search.space.checks`: names against the registries, combinations that cannot work;
- :mod:`~search.space.space_file`: :func:`load_space` and :class:`Space`.

Section shapes are pydantic models (:mod:`~search.space.validation` turns their errors into the
messages above).
"""

from __future__ import annotations

from search.space.distributions import (
    contains,
    describe_distribution,
    distribution_from_short,
    distribution_to_short,
)
from search.space.errors import SpaceError
from search.space.sampler_registry import SAMPLERS, build_sampler, sampler_options
from search.space.space_file import Space, load_space
from search.space.study import (
    DEFAULT_OBJECTIVES,
    DIRECTION_ALIASES,
    INFEASIBLE,
    METRIC_NAMES,
    Constraint,
    Direction,
    Objective,
    Resources,
    StudySpec,
    direction_sign,
    known_metrics,
)

__all__ = [
    "DEFAULT_OBJECTIVES",
    "DIRECTION_ALIASES",
    "INFEASIBLE",
    "METRIC_NAMES",
    "SAMPLERS",
    "Constraint",
    "Direction",
    "Objective",
    "Resources",
    "Space",
    "SpaceError",
    "StudySpec",
    "build_sampler",
    "contains",
    "describe_distribution",
    "direction_sign",
    "distribution_from_short",
    "distribution_to_short",
    "known_metrics",
    "load_space",
    "sampler_options",
]
