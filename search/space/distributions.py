"""Searched keys' distributions: the short form of a space file and its Optuna round trip.

Short form (``params.<key>`` in a space file)::

    {type: float, low: 0.0, high: 1.0, log: false, step: null}
    {type: int, low: 1, high: 4, log: false, step: 1}
    {type: categorical, choices: [noise, damp]}

Optuna's own JSON form, ``{name: FloatDistribution, attributes: {...}}``
(``optuna.distributions.distribution_to_json``), is read too, with the same checks.
:func:`distribution_from_short` parses either into an Optuna distribution,
:func:`distribution_to_short` writes the short form back (defaults left out), and the two are
inverse. Float ranges must be non-empty (low < high), int ranges may be one value; log needs a
positive low; step must divide the range and excludes log; choices are distinct scalars.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from search.space.errors import SpaceError, coerce_value, show, space_error
from search.space.validation import Int, Section, validate

SCALAR_TYPES = (type(None), bool, int, float, str)
"""What a categorical choice may be (Optuna's ``CategoricalChoiceType``)."""


def _scalar(value: Any) -> Any:
    if not isinstance(value, SCALAR_TYPES):
        raise ValueError(f"{value!r} is not a number, string, true/false or null")
    return value


def _is_multiple(span: float, step: float) -> bool:
    ratio = span / step
    return abs(ratio - round(ratio)) < 1e-8 * max(1.0, abs(ratio))


class FloatSpec(Section):
    """``{type: float, low, high, log?, step?}`` -> ``FloatDistribution``."""

    model_config = ConfigDict(title="a float distribution")

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _range(self) -> FloatSpec:
        if self.low >= self.high:
            raise ValueError(f"empty range: low {self.low:g} must be below high {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got {self.low:g}")
        if self.step is not None:
            if self.log:
                raise ValueError("log and step cannot be combined")
            if not _is_multiple(self.high - self.low, self.step):
                span = self.high - self.low
                raise ValueError(f"high - low = {span:g} is not a multiple of step {self.step:g}")
        return self

    def to_optuna(self) -> BaseDistribution:
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)


class IntSpec(Section):
    """``{type: int, low, high, log?, step?}`` -> ``IntDistribution`` (``3.0`` reads as 3)."""

    model_config = ConfigDict(title="an int distribution")

    type: Literal["int"]
    low: Int
    high: Int
    log: bool = False
    step: Int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntSpec:
        if self.low > self.high:
            raise ValueError(f"empty range: low {self.low} is above high {self.high}")
        if self.log and self.low < 1:
            raise ValueError(f"log: true needs low >= 1, got {self.low}")
        if self.log and self.step != 1:
            raise ValueError("log and step cannot be combined")
        if (self.high - self.low) % self.step:
            span = self.high - self.low
            raise ValueError(f"high - low = {span} is not a multiple of step {self.step}")
        return self

    def to_optuna(self) -> BaseDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)


class CategoricalSpec(Section):
    """``{type: categorical, choices: [...]}`` -> ``CategoricalDistribution``."""

    model_config = ConfigDict(title="a categorical distribution")

    type: Literal["categorical"]
    choices: list[Annotated[Any, AfterValidator(_scalar)]] = Field(
        min_length=1, description="a non-empty list of numbers, strings, true/false or null"
    )

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Any]) -> list[Any]:
        seen: list[Any] = []
        for c in choices:  # 1 and True are equal in Python, not in a space file
            if any(type(c) is type(s) and c == s for s in seen):
                raise ValueError(f"{c!r} is listed twice")
            seen.append(c)
        return choices

    def to_optuna(self) -> BaseDistribution:
        return CategoricalDistribution(list(self.choices))


SHORT_FORMS: dict[str, type[FloatSpec | IntSpec | CategoricalSpec]] = {
    "float": FloatSpec,
    "int": IntSpec,
    "categorical": CategoricalSpec,
}
"""``type`` -> the model of that short form."""


class _OptunaForm(Section):
    """Optuna's JSON form: ``{name: <Distribution class>, attributes: {...}}``."""

    model_config = ConfigDict(title="Optuna's distribution form")

    name: str
    attributes: dict[str, Any] = Field(default_factory=dict, description="a mapping")


def distribution_from_short(key: str, spec: Mapping[str, Any], *, source: str) -> BaseDistribution:
    """Parse one distribution; ``key`` names where it sits (``"params.train.lr"``) in errors.

    The short form or Optuna's JSON form (module docstring); every problem is a
    :class:`~search.space.errors.SpaceError` naming ``source`` and the dotted key.
    """
    if not isinstance(spec, Mapping):
        raise space_error(
            source,
            key,
            f"needs a distribution mapping like {{type: float, low: 0, high: 1}}, got {spec!r}",
        )
    if "type" not in spec and "name" in spec:
        return _from_optuna_json(spec, key=key, source=source)
    kind = spec.get("type")
    if kind is None:
        raise space_error(
            source,
            key,
            "missing 'type' (float, int or categorical), or Optuna's form "
            "{name: FloatDistribution, attributes: {...}}",
        )
    if kind not in SHORT_FORMS:
        raise space_error(
            source,
            f"{key}.type",
            f"unknown distribution type {kind!r}; known: {', '.join(SHORT_FORMS)}",
        )
    return validate(SHORT_FORMS[kind], spec, key=key, source=source).to_optuna()


def _from_optuna_json(spec: Mapping[str, Any], *, key: str, source: str) -> BaseDistribution:
    form = validate(_OptunaForm, spec, key=key, source=source)
    for bound in ("low", "high", "step", "q"):  # a string bound: the YAML 1.1 hint
        if isinstance(form.attributes.get(bound), str):
            coerce_value(form.attributes[bound], float, key=f"{key}.attributes.{bound}",
                         source=source)  # fmt: skip
    try:
        dist = optuna.distributions.json_to_distribution(json.dumps(dict(spec)))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise space_error(source, key, f"not a valid Optuna distribution ({err})") from None
    # the same checks as the short form (Optuna accepts e.g. low == high)
    return distribution_from_short(key, distribution_to_short(dist), source=source)


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


def describe_distribution(dist: BaseDistribution) -> str:
    """``float [0.001, 0.1] log``, ``int [10, 30] step 5``, ``categorical {noise, damp}``."""
    short = distribution_to_short(dist)
    if short["type"] == "categorical":
        return "categorical {" + ", ".join(show(c) for c in short["choices"]) + "}"
    text = f"{short['type']} [{show(short['low'])}, {show(short['high'])}]"
    if short.get("log"):
        text += " log"
    if "step" in short:
        text += f" step {show(short['step'])}"
    return text


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether a sampler could return ``value`` from ``dist`` (public attributes only).

    Categorical: one of the choices (Optuna's ``to_internal_repr`` finds it). Float: inside
    [low, high] and, with a step, on the grid (``low + k * step``, to 1e-8 steps). Int: an int
    (not a bool) inside [low, high] on the step grid. Anything of the wrong type is outside.
    """
    if isinstance(dist, CategoricalDistribution):
        try:
            dist.to_internal_repr(value)
        except ValueError:
            return False
        return True
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return False
    if isinstance(dist, IntDistribution):
        if not float(value).is_integer():
            return False
        return dist.low <= value <= dist.high and (int(value) - dist.low) % dist.step == 0
    if isinstance(dist, FloatDistribution):
        if not dist.low <= value <= dist.high:
            return False
        if dist.step is None:
            return True
        k = (value - dist.low) / dist.step
        return abs(k - round(k)) < 1.0e-8
    raise TypeError(f"no membership test for {type(dist).__name__}")


__all__ = [
    "SCALAR_TYPES",
    "SHORT_FORMS",
    "CategoricalSpec",
    "FloatSpec",
    "IntSpec",
    "SpaceError",
    "contains",
    "describe_distribution",
    "distribution_from_short",
    "distribution_to_short",
]
