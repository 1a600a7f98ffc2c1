"""Space files: one YAML file = one experiment (DESIGN.md §4, STYLE.md lesson 12).

A space file has three top-level keys::

    study:   name, objectives, sampler (+ options, seed), trial count, concurrency, resources,
             constraints, enqueued first trials
    fixed:   dotted TrialConfig keys -> values (nested mappings are flattened)
    params:  dotted TrialConfig keys -> distributions, in the short form
             {type: float|int|categorical, low, high, log, step, choices} or Optuna's own JSON form
             {name: FloatDistribution, attributes: {...}}

:func:`load_space` parses the file with a safe YAML loader, validates everything it can without
building a model or touching data (unknown keys, wrong types, empty ranges, unknown metric,
sampler, attack, operator, defense, model and dataset names), and returns a frozen :class:`Space`.
Every problem is a :class:`SpaceError` whose message starts with the file path and the key.
``spaces/README.md`` is the user's reference for the format.

The sampler registry :data:`SAMPLERS` maps a name to an Optuna sampler factory;
:func:`build_sampler` builds one with the study's seed and options.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import inspect
import json
import logging
import math
import operator
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from pptp.attacks import ATTACKS
from pptp.config import TrialConfig, coerce, config_keys
from pptp.data import DATASETS
from pptp.defenses import DEFENSES
from pptp.errors import ConfigError
from pptp.layers import DIRECTIONS
from pptp.models import MODELS, NORMS, TORCHVISION_PREFIX
from pptp.operators import OPERATORS
from pptp.registry import Registry

logger = logging.getLogger(__name__)


class SpaceError(ConfigError):
    """A space file is wrong. The message starts with the file path, then the key."""


def _error(source: str, key: str, message: str) -> SpaceError:
    return SpaceError(f"{source}: {key}: {message}")


def _coerce(value: Any, hint: Any, *, key: str, source: str) -> Any:
    """:func:`pptp.config.coerce`, raising :class:`SpaceError` ("<file>: <key> = ... is ...")."""
    try:
        return coerce(value, hint, key=key, source=source)
    except ConfigError as err:
        raise SpaceError(str(err)) from None


# ============================================================================================
# The study section


Direction = Literal["maximize", "minimize"]

DIRECTION_ALIASES: dict[str, Direction] = {
    "maximize": "maximize",
    "max": "maximize",
    "minimize": "minimize",
    "min": "minimize",
}
"""Accepted spellings of an objective's direction -> Optuna's direction."""

INFEASIBLE = 1.0e9
"""Constraint value of a missing or NaN metric: above any real violation (Optuna forbids NaN)."""


@dataclass(frozen=True)
class Objective:
    """One objective: a metric of :meth:`pptp.trial.TrialResult.metrics` and its direction."""

    metric: str
    direction: Direction

    @property
    def mode(self) -> str:
        """Ray Tune's spelling of the direction: ``"max"`` or ``"min"``."""
        return "max" if self.direction == "maximize" else "min"


@dataclass(frozen=True)
class Constraint:
    """A bound on a metric that the sampler must respect (Optuna's ``Trial.set_constraint``)."""

    metric: str
    min: float | None = None
    max: float | None = None

    @property
    def name(self) -> str:
        """A readable key for ``Trial.set_constraint``: ``"test_acc>=0.5"``, ``"epsilon<=8"``."""
        parts = []
        if self.min is not None:
            parts.append(f"{self.metric}>={self.min:g}")
        if self.max is not None:
            parts.append(f"{self.metric}<={self.max:g}")
        return ",".join(parts)

    def value(self, metrics: Mapping[str, float]) -> float:
        """Optuna's convention: <= 0 is feasible, the size of a positive value is the violation.

        ``min 0.9`` with ``test_acc = 0.95`` gives ``-0.05``; with both bounds it is the larger of
        ``min - v`` and ``v - max``. A missing or NaN metric gives :data:`INFEASIBLE`.
        """
        v = metrics.get(self.metric)
        if v is None or not math.isfinite(float(v)):
            return INFEASIBLE
        violations = []
        if self.min is not None:
            violations.append(self.min - float(v))
        if self.max is not None:
            violations.append(float(v) - self.max)
        return max(violations)


@dataclass(frozen=True)
class Resources:
    """What Ray reserves per trial; ``gpus`` may be fractional (4 trials share a GPU at 0.25)."""

    cpus: float = 1.0
    gpus: float = 0.0


DEFAULT_OBJECTIVES = (Objective("test_acc", "maximize"), Objective("attack_auc", "minimize"))


@dataclass(frozen=True)
class StudySpec:
    """The ``study`` section, validated.

    ``enqueue`` holds the first trials to run, as ``{searched key: value}`` dicts (keys of an
    entry that were fixed are checked to equal the fixed value and dropped): pass them to
    Optuna's ``enqueue_trial`` or Ray's ``points_to_evaluate`` as they are.
    ``localization`` is reserved for a later feature: kept as given, only checked to be a mapping.
    """

    name: str
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES
    sampler: str = "nsga2"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    n_trials: int = 12
    max_concurrent: int = 2
    resources: Resources = field(default_factory=Resources)
    constraints: tuple[Constraint, ...] = ()
    enqueue: tuple[dict[str, Any], ...] = ()
    localization: dict[str, Any] | None = None

    @property
    def metrics(self) -> list[str]:
        """Objective metric names, in order (Ray's ``OptunaSearch(metric=...)``)."""
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[Direction]:
        """Optuna directions, in order (``optuna.create_study(directions=...)``)."""
        return [o.direction for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        """Ray modes ``"max"``/``"min"``, in order (Ray's ``OptunaSearch(mode=...)``)."""
        return [o.mode for o in self.objectives]


# ============================================================================================
# Metrics a study may optimise or constrain


METRIC_NAMES = (
    "test_acc",
    "train_acc",
    "generalization_gap",
    "attack_auc",
    "attack_tpr@0.1%fpr",
    "attack_tpr@1%fpr",
    "epsilon",
)
"""Metrics of every trial (``epsilon`` only with ``defense.name: dpsgd``)."""

PER_ATTACK_METRICS = ("auc", "tpr@0.1%fpr", "tpr@1%fpr", "balanced_acc")
"""Per-attack metrics, named ``<metric>/<attack>`` for each attack in ``attack.attacks``."""


def known_metrics(cfg: TrialConfig) -> set[str]:
    """Every metric name :meth:`pptp.trial.TrialResult.metrics` reports for ``cfg``'s attacks."""
    per_attack = {f"{m}/{a}" for m in PER_ATTACK_METRICS for a in cfg.attack.attacks}
    return set(METRIC_NAMES) | per_attack


# ============================================================================================
# Distributions: the short form and Optuna's JSON form

_SCALAR_TYPES = (type(None), bool, int, float, str)


def _number(value: Any, hint: type, *, key: str, source: str) -> Any:
    """A finite int or float bound; strings get pptp.config.coerce's YAML 1.1 hint."""
    if isinstance(value, str) and hint is int:
        value = _coerce(value, float, key=key, source=source)  # raises with the 1.0e-4 hint
    out = _coerce(value, hint, key=key, source=source)
    if not math.isfinite(out):
        raise _error(source, key, f"{value!r} is not a finite number")
    return out


def _flag(value: Any, *, key: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise _error(source, key, f"{value!r} is not true or false")
    return value


def _check_spec_keys(
    spec: Mapping[str, Any], allowed: Sequence[str], *, key: str, source: str, kind: str
) -> None:
    for k in spec:
        if k not in allowed:
            raise _error(
                source,
                f"{key}.{k}",
                f"unknown field of a {kind} distribution; known: {', '.join(allowed)}",
            )


def _required(spec: Mapping[str, Any], name: str, *, key: str, source: str) -> Any:
    if name not in spec:
        raise _error(source, key, f"missing '{name}'")
    return spec[name]


def _is_multiple(span: float, step: float) -> bool:
    ratio = span / step
    return abs(ratio - round(ratio)) < 1e-8 * max(1.0, abs(ratio))


def _float_from_short(spec: Mapping[str, Any], *, key: str, source: str) -> BaseDistribution:
    _check_spec_keys(
        spec, ("type", "low", "high", "log", "step"), key=key, source=source, kind="float"
    )
    low = _number(
        _required(spec, "low", key=key, source=source), float, key=f"{key}.low", source=source
    )
    high = _number(
        _required(spec, "high", key=key, source=source), float, key=f"{key}.high", source=source
    )
    log = _flag(spec.get("log", False), key=f"{key}.log", source=source)
    step = spec.get("step")
    if low >= high:
        raise _error(source, key, f"empty range: low {low:g} must be below high {high:g}")
    if log and low <= 0:
        raise _error(source, key, f"log: true needs low > 0, got {low:g}")
    if step is not None:
        step = _number(step, float, key=f"{key}.step", source=source)
        if log:
            raise _error(source, key, "log and step cannot be combined")
        if step <= 0:
            raise _error(source, f"{key}.step", f"must be > 0, got {step:g}")
        if not _is_multiple(high - low, step):
            raise _error(
                source, key, f"high - low = {high - low:g} is not a multiple of step {step:g}"
            )
    return FloatDistribution(low, high, log=log, step=step)


def _int_from_short(spec: Mapping[str, Any], *, key: str, source: str) -> BaseDistribution:
    _check_spec_keys(
        spec, ("type", "low", "high", "log", "step"), key=key, source=source, kind="int"
    )
    low = _number(
        _required(spec, "low", key=key, source=source), int, key=f"{key}.low", source=source
    )
    high = _number(
        _required(spec, "high", key=key, source=source), int, key=f"{key}.high", source=source
    )
    log = _flag(spec.get("log", False), key=f"{key}.log", source=source)
    step = _number(spec.get("step", 1), int, key=f"{key}.step", source=source)
    if low > high:
        raise _error(source, key, f"empty range: low {low} is above high {high}")
    if log and low < 1:
        raise _error(source, key, f"log: true needs low >= 1, got {low}")
    if step < 1:
        raise _error(source, f"{key}.step", f"must be >= 1, got {step}")
    if log and step != 1:
        raise _error(source, key, "log and step cannot be combined")
    if (high - low) % step:
        raise _error(source, key, f"high - low = {high - low} is not a multiple of step {step}")
    return IntDistribution(low, high, log=log, step=step)


def _categorical_from_short(spec: Mapping[str, Any], *, key: str, source: str) -> BaseDistribution:
    _check_spec_keys(spec, ("type", "choices"), key=key, source=source, kind="categorical")
    choices = _required(spec, "choices", key=key, source=source)
    if not isinstance(choices, list | tuple) or not choices:
        raise _error(source, f"{key}.choices", f"needs a non-empty list, got {choices!r}")
    for i, c in enumerate(choices):
        if not isinstance(c, _SCALAR_TYPES):
            raise _error(
                source, f"{key}.choices[{i}]", f"{c!r} is not a number, string, true/false or null"
            )
    seen: list[Any] = []
    for c in choices:
        if any(type(c) is type(s) and c == s for s in seen):
            raise _error(source, f"{key}.choices", f"{c!r} is listed twice")
        seen.append(c)
    return CategoricalDistribution(list(choices))


_SHORT_PARSERS: dict[str, Callable[..., BaseDistribution]] = {
    "float": _float_from_short,
    "int": _int_from_short,
    "categorical": _categorical_from_short,
}


def _from_optuna_json(spec: Mapping[str, Any], *, key: str, source: str) -> BaseDistribution:
    _check_spec_keys(spec, ("name", "attributes"), key=key, source=source, kind="Optuna")
    attributes = spec.get("attributes", {})
    if not isinstance(attributes, Mapping):
        raise _error(source, f"{key}.attributes", f"needs a mapping, got {attributes!r}")
    for bound in ("low", "high", "step", "q"):
        if isinstance(attributes.get(bound), str):
            _number(attributes[bound], float, key=f"{key}.attributes.{bound}", source=source)
    try:
        dist = optuna.distributions.json_to_distribution(json.dumps(dict(spec)))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise _error(source, key, f"not a valid Optuna distribution ({err})") from None
    # the same checks as the short form (Optuna accepts e.g. low == high)
    return distribution_from_short(key, distribution_to_short(dist), source=source)


def distribution_from_short(key: str, spec: Mapping[str, Any], *, source: str) -> BaseDistribution:
    """Parse one distribution; ``key`` names where it sits (``"params.train.lr"``) in errors.

    Short form: ``{type: float, low, high, log?, step?}``, ``{type: int, low, high, log?,
    step?}``, ``{type: categorical, choices: [...]}``. Optuna's JSON form ``{name:
    FloatDistribution, attributes: {...}}`` (``optuna.distributions.distribution_to_json``) is read
    with :func:`optuna.distributions.json_to_distribution`. Float ranges must be non-empty (low <
    high), int ranges may be one value; log needs a positive low; step must divide the range.
    """
    if not isinstance(spec, Mapping):
        raise _error(
            source,
            key,
            f"needs a distribution mapping like {{type: float, low: 0, high: 1}}, got {spec!r}",
        )
    if "type" not in spec and "name" in spec:
        return _from_optuna_json(spec, key=key, source=source)
    kind = spec.get("type")
    if kind is None:
        raise _error(
            source,
            key,
            "missing 'type' (float, int or categorical), or Optuna's form "
            "{name: FloatDistribution, attributes: {...}}",
        )
    if kind not in _SHORT_PARSERS:
        raise _error(
            source,
            f"{key}.type",
            f"unknown distribution type {kind!r}; known: {', '.join(_SHORT_PARSERS)}",
        )
    return _SHORT_PARSERS[kind](spec, key=key, source=source)


def _float_to_short(dist: FloatDistribution) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "float", "low": dist.low, "high": dist.high}
    if dist.log:
        out["log"] = True
    if dist.step is not None:
        out["step"] = dist.step
    return out


def _int_to_short(dist: IntDistribution) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "int", "low": dist.low, "high": dist.high}
    if dist.log:
        out["log"] = True
    if dist.step != 1:
        out["step"] = dist.step
    return out


def _categorical_to_short(dist: CategoricalDistribution) -> dict[str, Any]:
    return {"type": "categorical", "choices": list(dist.choices)}


_SHORT_WRITERS: dict[type, Callable[[Any], dict[str, Any]]] = {
    FloatDistribution: _float_to_short,
    IntDistribution: _int_to_short,
    CategoricalDistribution: _categorical_to_short,
}


def distribution_to_short(dist: BaseDistribution) -> dict[str, Any]:
    """The inverse of :func:`distribution_from_short`: the short form, defaults left out.

    Optuna's deprecated classes (``LogUniformDistribution``, ...) subclass the current ones and
    are written as those.
    """
    for cls in type(dist).__mro__:
        if cls in _SHORT_WRITERS:
            return _SHORT_WRITERS[cls](dist)
    raise TypeError(f"no short form for {type(dist).__name__}")


def _describe_distribution(dist: BaseDistribution) -> str:
    short = distribution_to_short(dist)
    if short["type"] == "categorical":
        return "categorical {" + ", ".join(_show(c) for c in short["choices"]) + "}"
    text = f"{short['type']} [{_show(short['low'])}, {_show(short['high'])}]"
    if short.get("log"):
        text += " log"
    if "step" in short:
        text += f" step {_show(short['step'])}"
    return text


def _show(value: Any) -> str:
    """A value as a space file would spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


# ============================================================================================
# Samplers

SAMPLERS: Registry[Callable[..., optuna.samplers.BaseSampler]] = Registry("sampler")
"""Sampler name -> factory called as ``factory(seed=..., **sampler_options)``.

``tpe`` is multivariate TPE (Falkner et al. 2018, BOHB): Optuna's default for several objectives
is the independent TPE, but the operator, strength and split interact, so the joint model is the
better default (``sampler_options: {multivariate: false}`` restores Optuna's). ``gp`` handles
several objectives (log EHVI) and constraints (tests/test_space.py runs it on Optuna 5).
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


def _check_sampler_options(study: StudySpec, *, source: str) -> dict[str, Any]:
    known = sampler_options(study.sampler)
    checked = {}
    for arg, value in study.sampler_options.items():
        key = f"study.sampler_options.{arg}"
        if arg not in known:
            hint = " (set by study.seed)" if arg == "seed" else ""
            raise _error(
                source,
                key,
                f"unknown option for sampler {study.sampler!r}{hint}; known: "
                f"{', '.join(sorted(known))}",
            )
        checked[arg] = _coerce(value, known[arg], key=key, source=source)
    return checked


def build_sampler(study: StudySpec, *, source: str = "space") -> optuna.samplers.BaseSampler:
    """``SAMPLERS[study.sampler](seed=study.seed, **study.sampler_options)``.

    Unknown options (checked against the sampler's signature) and values the sampler refuses are
    :class:`SpaceError` naming ``source`` and the key.
    """
    try:
        factory = SAMPLERS[study.sampler]
    except ConfigError as err:
        raise _error(source, "study.sampler", str(err)) from None
    options = _check_sampler_options(study, source=source)
    try:
        return factory(seed=study.seed, **options)
    except (TypeError, ValueError) as err:
        raise _error(
            source, "study.sampler_options", f"sampler {study.sampler!r} refused {options}: {err}"
        ) from None


# ============================================================================================
# The space


@dataclass(frozen=True)
class Space:
    """A validated space file.

    ``fixed`` holds the keys the file fixed (flat, dotted, coerced to TrialConfig types);
    ``params`` the searched keys and their Optuna distributions, in file order.
    """

    path: Path
    sha256: str
    study: StudySpec
    fixed: dict[str, Any]
    params: dict[str, BaseDistribution]

    def base_config(self) -> TrialConfig:
        """The fixed values; searched keys stay at their TrialConfig defaults."""
        return TrialConfig.from_flat(self.fixed, source=f"{self.path}: fixed")

    def trial_config(self, sampled: Mapping[str, Any]) -> TrialConfig:
        """The config of one trial: fixed values plus ``sampled`` (keys must be searched)."""
        for key in sampled:
            if key not in self.params:
                raise _error(
                    str(self.path),
                    key,
                    f"is not a searched key; searched: {', '.join(self.params) or '(none)'}",
                )
        return TrialConfig.from_flat({**self.fixed, **sampled}, source=f"{self.path}: trial")

    def resolved(self) -> dict[str, Any]:
        """The fully resolved space as plain data (YAML/JSON-safe) in the space-file format.

        ``fixed`` lists every TrialConfig key that is not searched, defaults filled in, so the
        dict alone reproduces the study (dumped to YAML it loads back as an equal space).
        """
        searched = set(self.params)
        fixed = {k: v for k, v in self.base_config().to_flat().items() if k not in searched}
        return {
            "study": _study_to_data(self.study),
            "fixed": fixed,
            "params": {k: distribution_to_short(d) for k, d in self.params.items()},
        }

    def describe(self) -> str:
        """The block printed at the start: settings, searched keys, fixed keys off defaults."""
        s = self.study
        objectives = ", ".join(f"{o.metric} {o.direction}" for o in s.objectives)
        options = ", ".join(f"{k}={_show(v)}" for k, v in s.sampler_options.items())
        lines = [
            f"space       {self.path} (sha256 {self.sha256[:12]})",
            f"study       {s.name}: {s.n_trials} trials, {s.max_concurrent} at a time, "
            f"{s.resources.cpus:g} CPU + {s.resources.gpus:g} GPU each",
            f"objectives  {objectives}",
            f"sampler     {s.sampler}" + (f" ({options})" if options else "") + f", seed {s.seed}",
        ]
        if s.constraints:
            lines.append("constraints " + ", ".join(c.name for c in s.constraints))
        if s.enqueue:
            lines.append(f"enqueued    {len(s.enqueue)} first trials")
        width = max([len(k) for k in self.params] + [len(k) for k in self.fixed] + [8])
        lines.append(f"searched ({len(self.params)}):")
        lines += [f"  {k:<{width}}  {_describe_distribution(d)}" for k, d in self.params.items()]
        defaults = TrialConfig().to_flat()
        changed = {
            k: v
            for k, v in self.base_config().to_flat().items()
            if k not in self.params and v != defaults[k]
        }
        lines.append(f"fixed, differing from defaults ({len(changed)}):")
        lines += [f"  {k:<{width}}  {_show(v)}" for k, v in changed.items()]
        return "\n".join(lines)


def _study_to_data(s: StudySpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": s.name,
        "objectives": {o.metric: o.direction for o in s.objectives},
        "sampler": s.sampler,
        "sampler_options": dict(s.sampler_options),
        "seed": s.seed,
        "n_trials": s.n_trials,
        "max_concurrent": s.max_concurrent,
        "resources": dataclasses.asdict(s.resources),
        "constraints": [
            {k: v for k, v in dataclasses.asdict(c).items() if v is not None} for c in s.constraints
        ],
        "enqueue": [dict(e) for e in s.enqueue],
    }
    if s.localization is not None:
        out["localization"] = s.localization
    return out


# ============================================================================================
# Loading


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (safe_load keeps the last, silently)."""


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _read(path: Path, source: str) -> tuple[bytes, Any]:
    if not path.is_file():
        raise SpaceError(f"{source}: not a file (give the path of a space YAML file)")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpaceError(f"{source}: cannot read the file ({err})") from None
    try:
        return data, yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpaceError(f"{source}: {where}invalid YAML: {problem}") from None


_TOP_LEVEL = ("study", "fixed", "params")
_STUDY_KEYS = tuple(f.name for f in dataclasses.fields(StudySpec))


def _mapping(value: Any, *, key: str, source: str, empty_ok: bool = True) -> Mapping[str, Any]:
    if value is None and empty_ok:
        return {}
    if not isinstance(value, Mapping):
        raise _error(source, key, f"needs a mapping, got {value!r}")
    for k in value:
        if not isinstance(k, str):
            raise _error(source, f"{key}.{k}", "keys must be strings")
    return value


def _flatten(value: Mapping[str, Any], *, prefix: str = "") -> list[tuple[str, Any]]:
    """``{train: {lr: 0.1}, "train.epochs": 3}`` -> ``[("train.lr", 0.1), ("train.epochs", 3)]``."""
    out: list[tuple[str, Any]] = []
    for k, v in value.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flatten(v, prefix=f"{name}.")
        else:
            out.append((name, v))
    return out


def _flat_dict(value: Mapping[str, Any], *, key: str, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in _flatten(value):
        if k in out:
            raise _error(source, f"{key}.{k}", "given twice (once nested, once dotted)")
        out[k] = v
    return out


def _unknown_key(key: str, *, where: str, source: str) -> SpaceError:
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
    return _error(source, f"{where}.{key}", f"unknown key; {hint}{known}")


def _parse_fixed(raw: Any, *, source: str) -> dict[str, Any]:
    flat = _flat_dict(_mapping(raw, key="fixed", source=source), key="fixed", source=source)
    hints = config_keys()
    fixed = {}
    for k, v in flat.items():
        if k not in hints:
            raise _unknown_key(k, where="fixed", source=source)
        fixed[k] = _coerce(v, hints[k], key=f"fixed.{k}", source=source)
    return fixed


# Keys a study may not search: the attacks define the metrics the objectives name.
_UNSEARCHABLE = {"attack.attacks": "the attacks define the objective metrics; fix them"}


def _scalar_types(hint: Any) -> set[Any]:
    """The types a key accepts, unions unpacked: ``int | None`` -> ``{int, NoneType}``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(_scalar_types(a) for a in typing.get_args(hint)))
    return {typing.get_origin(hint) or hint}


def _choice_value(value: Any, hint: Any, *, key: str, source: str) -> Any:
    """A categorical choice coerced to the key's type; a list-typed key keeps the scalar."""
    out = _coerce(value, hint, key=key, source=source)
    return out if isinstance(out, _SCALAR_TYPES) else value


def _fit_to_key(key: str, dist: BaseDistribution, hint: Any, *, source: str) -> BaseDistribution:
    """Check that every value of ``dist`` is a valid ``key`` value; coerce categorical choices."""
    where = f"params.{key}"
    accepts = _scalar_types(hint)
    if isinstance(dist, FloatDistribution) and float not in accepts:
        raise _error(
            source,
            where,
            f"a float distribution cannot feed {key}, which takes "
            f"{_type_names(accepts)}; use type: int or categorical",
        )
    if isinstance(dist, IntDistribution) and not accepts & {int, float}:
        raise _error(
            source,
            where,
            f"an int distribution cannot feed {key}, which takes "
            f"{_type_names(accepts)}; use type: categorical",
        )
    if isinstance(dist, CategoricalDistribution):
        choices = [
            _choice_value(c, hint, key=f"{where}.choices[{i}]", source=source)
            for i, c in enumerate(dist.choices)
        ]
        return CategoricalDistribution(choices)
    return dist


def _type_names(accepts: set[Any]) -> str:
    names = {type(None): "null", tuple: "a list"}
    return " or ".join(sorted(names.get(t, getattr(t, "__name__", str(t))) for t in accepts))


def _parse_params(
    raw: Any, fixed: Mapping[str, Any], *, source: str
) -> dict[str, BaseDistribution]:
    hints = config_keys()
    params: dict[str, BaseDistribution] = {}
    for key, spec in _mapping(raw, key="params", source=source).items():
        if "." not in key:
            raise _error(
                source,
                f"params.{key}",
                "params keys are dotted, e.g. 'train.lr: "
                "{type: float, ...}' (nesting is for fixed only)",
            )
        if key not in hints:
            raise _unknown_key(key, where="params", source=source)
        if key in _UNSEARCHABLE:
            raise _error(source, f"params.{key}", f"cannot be searched: {_UNSEARCHABLE[key]}")
        if key in fixed:
            raise _error(
                source, f"params.{key}", "is also in fixed; a key is either fixed or searched"
            )
        dist = distribution_from_short(f"params.{key}", spec, source=source)
        params[key] = _fit_to_key(key, dist, hints[key], source=source)
    return params


def _positive_int(value: Any, *, key: str, source: str, minimum: int) -> int:
    out = _coerce(value, int, key=key, source=source)
    if out < minimum:
        raise _error(source, key, f"must be >= {minimum}, got {out}")
    return int(out)


def _parse_objectives(raw: Any, metrics: set[str], *, source: str) -> tuple[Objective, ...]:
    if raw is None:
        return DEFAULT_OBJECTIVES
    key = "study.objectives"
    if not isinstance(raw, Mapping) or not raw:
        raise _error(
            source,
            key,
            f"needs a mapping metric -> maximize|minimize, e.g. "
            f"{{test_acc: maximize, attack_auc: minimize}}; got {raw!r}",
        )
    out = []
    for metric, direction in raw.items():
        _check_metric(metric, metrics, key=f"{key}.{metric}", source=source)
        normal = DIRECTION_ALIASES.get(str(direction).lower()) if direction is not None else None
        if normal is None:
            raise _error(
                source,
                f"{key}.{metric}",
                f"direction {direction!r} is not maximize or minimize (max/min also work)",
            )
        out.append(Objective(metric, normal))
    return tuple(out)


def _check_metric(metric: Any, metrics: set[str], *, key: str, source: str) -> None:
    if metric not in metrics:
        raise _error(
            source,
            key,
            f"unknown metric {metric!r}; known (for the attacks in "
            f"attack.attacks): {', '.join(sorted(metrics))}",
        )


def _parse_constraints(raw: Any, metrics: set[str], *, source: str) -> tuple[Constraint, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _error(
            source,
            "study.constraints",
            f"needs a list like [{{metric: test_acc, min: 0.5}}], got {raw!r}",
        )
    out = []
    for i, item in enumerate(raw):
        key = f"study.constraints[{i}]"
        item = _mapping(item, key=key, source=source, empty_ok=False)
        for k in item:
            if k not in ("metric", "min", "max"):
                raise _error(source, f"{key}.{k}", "unknown field; known: metric, min, max")
        if "metric" not in item:
            raise _error(source, key, "missing 'metric'")
        _check_metric(item["metric"], metrics, key=f"{key}.metric", source=source)
        bounds = {
            b: _number(item[b], float, key=f"{key}.{b}", source=source)
            for b in ("min", "max")
            if item.get(b) is not None
        }
        if not bounds:
            raise _error(source, key, "needs min, max or both")
        if bounds.get("min", -math.inf) > bounds.get("max", math.inf):
            raise _error(source, key, f"min {bounds['min']:g} is above max {bounds['max']:g}")
        out.append(Constraint(item["metric"], **bounds))
    return tuple(out)


def _parse_resources(raw: Any, *, source: str) -> Resources:
    raw = _mapping(raw, key="study.resources", source=source)
    for k in raw:
        if k not in ("cpus", "gpus"):
            raise _error(source, f"study.resources.{k}", "unknown field; known: cpus, gpus")
    cpus = _number(raw.get("cpus", 1.0), float, key="study.resources.cpus", source=source)
    gpus = _number(raw.get("gpus", 0.0), float, key="study.resources.gpus", source=source)
    if cpus <= 0:
        raise _error(source, "study.resources.cpus", f"must be > 0, got {cpus:g}")
    if gpus < 0:
        raise _error(source, "study.resources.gpus", f"must be >= 0, got {gpus:g}")
    return Resources(cpus=cpus, gpus=gpus)


def _parse_enqueue(
    raw: Any, fixed: Mapping[str, Any], params: Mapping[str, BaseDistribution], *, source: str
) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _error(
            source, "study.enqueue", f"needs a list of {{key: value}} mappings, got {raw!r}"
        )
    hints = config_keys()
    out = []
    for i, item in enumerate(raw):
        where = f"study.enqueue[{i}]"
        entry = _flat_dict(
            _mapping(item, key=where, source=source, empty_ok=False), key=where, source=source
        )
        point = {}
        for k, v in entry.items():
            key = f"{where}.{k}"
            if k in params:
                point[k] = _enqueued_value(v, params[k], hints[k], key=key, source=source)
            elif k in fixed:
                if _coerce(v, hints[k], key=key, source=source) != fixed[k]:
                    raise _error(
                        source,
                        key,
                        f"{_show(v)} differs from the fixed value "
                        f"{_show(fixed[k])}; to vary {k}, search it",
                    )
            else:
                raise _error(
                    source,
                    key,
                    "is neither searched (params) nor fixed; searched: "
                    f"{', '.join(params) or '(none)'}",
                )
        out.append(point)
    return tuple(out)


def _enqueued_value(value: Any, dist: BaseDistribution, hint: Any, *, key: str, source: str) -> Any:
    if isinstance(dist, CategoricalDistribution):
        value = _choice_value(value, hint, key=key, source=source)
    elif isinstance(dist, IntDistribution):
        value = _number(value, int, key=key, source=source)
    else:
        value = _number(value, float, key=key, source=source)
    try:
        inside = dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        inside = False
    if not inside:
        raise _error(
            source,
            key,
            f"{_show(value)} is outside the searched distribution {_describe_distribution(dist)}",
        )
    return value


def _parse_study(
    raw: Any,
    fixed: Mapping[str, Any],
    params: Mapping[str, BaseDistribution],
    metrics: set[str],
    *,
    source: str,
) -> StudySpec:
    raw = _mapping(raw, key="study", source=source, empty_ok=False)
    for k in raw:
        if k not in _STUDY_KEYS:
            raise _error(source, f"study.{k}", f"unknown key; study has {', '.join(_STUDY_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _error(
            source,
            "study.name",
            f"needs a non-empty string (the MLflow experiment and Optuna study name), got {name!r}",
        )
    sampler = raw.get("sampler", "nsga2")
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise _error(
            source,
            "study.sampler",
            f"unknown sampler {sampler!r}; known: {', '.join(sorted(SAMPLERS))}",
        )
    localization = raw.get("localization")
    if localization is not None:
        localization = dict(_mapping(localization, key="study.localization", source=source))
    study = StudySpec(
        name=name,
        objectives=_parse_objectives(raw.get("objectives"), metrics, source=source),
        sampler=sampler,
        sampler_options=dict(
            _mapping(raw.get("sampler_options"), key="study.sampler_options", source=source)
        ),
        seed=_coerce(raw.get("seed", 0), int, key="study.seed", source=source),
        n_trials=_positive_int(
            raw.get("n_trials", 12), key="study.n_trials", source=source, minimum=1
        ),
        max_concurrent=_positive_int(
            raw.get("max_concurrent", 2), key="study.max_concurrent", source=source, minimum=1
        ),
        resources=_parse_resources(raw.get("resources"), source=source),
        constraints=_parse_constraints(raw.get("constraints"), metrics, source=source),
        enqueue=_parse_enqueue(raw.get("enqueue"), fixed, params, source=source),
        localization=localization,
    )
    # options coerced to the sampler's types; building the sampler once checks the values
    study = dataclasses.replace(study, sampler_options=_check_sampler_options(study, source=source))
    build_sampler(study, source=source)
    return study


# Static checks of names against the registries: key -> (predicate, what to list when wrong).
# Cheap lookups only; nothing is built or loaded.
def _model_exists(name: Any) -> bool:
    return name in MODELS or (isinstance(name, str) and name.startswith(TORCHVISION_PREFIX))


_NAME_CHECKS: dict[str, tuple[Callable[[Any], bool], Callable[[], str]]] = {
    "data.name": (lambda v: v in DATASETS, lambda: ", ".join(sorted(DATASETS))),
    "model.name": (
        _model_exists,
        lambda: ", ".join(sorted(MODELS)) + f", or {TORCHVISION_PREFIX}<name>",
    ),
    "model.norm": (lambda v: v in NORMS, lambda: ", ".join(sorted(NORMS))),
    "protect.operator": (lambda v: v in OPERATORS, lambda: ", ".join(sorted(OPERATORS))),
    "protect.direction": (lambda v: v in DIRECTIONS, lambda: ", ".join(DIRECTIONS)),
    "defense.name": (lambda v: v in DEFENSES, lambda: ", ".join(sorted(DEFENSES))),
}

# Values that need per-example gradients, which BatchNorm makes ill-defined (pptp.operators).
_PER_EXAMPLE = {"protect.operator": "noise", "defense.name": "dpsgd"}


def _possible_values(
    key: str, base: Mapping[str, Any], params: Mapping[str, BaseDistribution]
) -> list[tuple[str, Any]]:
    """``(where, value)`` for each value ``key`` can take in the study."""
    dist = params.get(key)
    if isinstance(dist, CategoricalDistribution):
        return [(f"params.{key}.choices[{i}]", c) for i, c in enumerate(dist.choices)]
    return [(f"fixed.{key}", base[key])]


def _check_names(base: TrialConfig, params: Mapping[str, BaseDistribution], *, source: str) -> None:
    flat = base.to_flat()
    for key, (exists, known) in _NAME_CHECKS.items():
        for where, value in _possible_values(key, flat, params):
            if not exists(value):
                raise _error(
                    source, where, f"unknown {key.replace('.', ' ')} {value!r}; known: {known()}"
                )
    attacks = base.attack.attacks
    if not attacks:
        raise _error(source, "fixed.attack.attacks", "is empty; name at least one attack")
    for a in attacks:
        if a not in ATTACKS:
            raise _error(
                source,
                "fixed.attack.attacks",
                f"unknown attack {a!r}; known: {', '.join(sorted(ATTACKS))}",
            )
        if ATTACKS[a].min_refs > base.attack.n_references:
            raise _error(
                source,
                "fixed.attack.n_references",
                f"attack {a!r} needs at least {ATTACKS[a].min_refs} reference models, "
                f"got {base.attack.n_references}",
            )
    if "batch" in {v for _, v in _possible_values("model.norm", flat, params)}:
        for key, value in _PER_EXAMPLE.items():
            for where, v in _possible_values(key, flat, params):
                if v == value:
                    raise _error(
                        source,
                        where,
                        f"{value} needs per-example gradients, which "
                        "BatchNorm (model.norm: batch, the default) makes "
                        "ill-defined; fix model.norm: group",
                    )


def _check_epsilon(
    study: StudySpec, base: TrialConfig, params: Mapping[str, BaseDistribution], *, source: str
) -> None:
    """``epsilon`` exists only for DP-SGD trials: an objective on it needs dpsgd fixed."""
    for i, o in enumerate(study.objectives):
        if o.metric == "epsilon" and ("defense.name" in params or base.defense.name != "dpsgd"):
            raise _error(
                source,
                f"study.objectives.{o.metric}",
                f"objective {i + 1} needs defense.name fixed to dpsgd (only DP-SGD "
                "trials report epsilon)",
            )


def load_space(path: str | Path) -> Space:
    """Read, validate and resolve a space file; every problem is a :class:`SpaceError`."""
    path = Path(path)
    source = str(path)
    data, doc = _read(path, source)
    if not isinstance(doc, Mapping):
        raise SpaceError(
            f"{source}: the top level must be a mapping with keys "
            f"{', '.join(_TOP_LEVEL)}; got {type(doc).__name__}"
        )
    for k in doc:
        if k not in _TOP_LEVEL:
            raise _error(source, str(k), f"unknown top-level key; known: {', '.join(_TOP_LEVEL)}")
    if "study" not in doc:
        raise _error(source, "study", "missing (it needs at least study.name)")
    fixed = _parse_fixed(doc.get("fixed"), source=source)
    try:
        base = TrialConfig.from_flat(fixed, source=f"{source}: fixed")
    except ConfigError as err:
        raise SpaceError(str(err)) from None
    params = _parse_params(doc.get("params"), fixed, source=source)
    study = _parse_study(doc["study"], fixed, params, known_metrics(base), source=source)
    _check_names(base, params, source=source)
    _check_epsilon(study, base, params, source=source)
    if study.sampler == "nsga2":
        population = study.sampler_options.get("population_size", 50)
        if population > study.n_trials:
            logger.warning(
                "%s: nsga2 population_size %d exceeds n_trials %d: every trial is drawn at random",
                source,
                population,
                study.n_trials,
            )
    space = Space(
        path=path, sha256=hashlib.sha256(data).hexdigest(), study=study, fixed=fixed, params=params
    )
    logger.info("loaded space %s (%d searched, %d fixed)", source, len(params), len(fixed))
    return space
