"""Typed validation of space-file sections (pydantic), errors in the project's words.

The shape of each section (its keys, their types, bounds and defaults) is declared once, as a
pydantic model in strict mode (:class:`Section`); :func:`validate` runs it and turns pydantic's
first error into a :class:`~search.space.errors.SpaceError`: the file, the dotted key
(``study.constraints[0].max``), and a plain sentence. Unknown keys are errors (``extra="forbid"``),
as are non-finite numbers.

Strict mode, plus :data:`Int`, keeps the rules of :func:`pptp.config.coerce`, which the ``fixed``
section follows: an int is a float where a float is wanted, an integral float (``3.0``) is an int,
and nothing else converts (no ``"3"`` -> 3, no ``true`` -> 1). A number written as a string
(YAML 1.1 reads ``1e-4`` as one) gets coerce's hint to write ``1.0e-4``.

A field's ``description`` is what the message says it needs: ``name: str =
Field(description="a non-empty string (...)")`` gives ``study.name: needs a non-empty string
(...), got [a]``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from pptp.errors import VALUE_EXCERPT, excerpt
from search.space.errors import SpaceError, coerce_value, show, space_error


class Section(BaseModel):
    """Base of every section model: strict types, no unknown keys, no inf/NaN, immutable.

    ``model_config["title"]`` names the section in messages ("study", "a float distribution").
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_integral)]
"""An int field: ``3`` and ``3.0`` are 3; ``2.5``, ``"3"`` and ``true`` are errors."""

EmptyIfNone = BeforeValidator(lambda value: {} if value is None else value)
"""For mapping fields: YAML's empty value (``resources:``) means the defaults."""

NoneAsEmptyList = BeforeValidator(lambda value: [] if value is None else value)
"""For list fields: YAML's empty value means no items."""

M = TypeVar("M", bound=BaseModel)

_NUMBER_ERRORS = {
    "int_type": int,
    "int_parsing": int,
    "int_from_float": int,
    "float_type": float,
    "float_parsing": float,
}
_BOUND_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
                "less_than_equal": "<="}  # fmt: skip
_BOUND_KEYS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt",
               "less_than_equal": "le"}  # fmt: skip


def validate(model: type[M], data: Any, *, key: str, source: str) -> M:
    """``model.model_validate(data)``; the first problem is a SpaceError naming ``source`` and
    the dotted key below ``key`` (the section's own key, e.g. ``"study"``)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        raise _translate(first, model, key=key, source=source) from None


def dotted(key: str, loc: Sequence[int | str]) -> str:
    """``("constraints", 0, "max")`` under ``"study"`` -> ``"study.constraints[0].max"``."""
    out = key
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _translate(error: Any, model: type[BaseModel], *, key: str, source: str) -> SpaceError:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    kind: str = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if loc and loc[-1] == "[key]":  # a mapping key that is not a string
        return space_error(
            source, dotted(key, loc[:-2]), f"key {_quoted(value, repr)} is not a string"
        )
    where = dotted(key, loc)
    owner, field = _locate(model, loc)
    noun = owner.model_config.get("title") or "it"
    if kind == "extra_forbidden":
        return space_error(
            source, where, f"unknown key; {noun} has {', '.join(owner.model_fields)}"
        )
    described = (
        field.description if field is not None and loc and isinstance(loc[-1], str) else None
    )
    if kind == "missing":
        if described:
            return space_error(source, where, f"missing; give {described}")
        required = [k for k, f in owner.model_fields.items() if f.is_required()]
        return space_error(source, where, f"missing; {noun} needs {', '.join(required)}")
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return space_error(source, where, str(ctx["error"]))
    if described:
        return space_error(source, where, f"needs {described}, got {_quoted(value)}")
    if kind in _NUMBER_ERRORS:
        expected = _NUMBER_ERRORS[kind]
        if isinstance(value, str) and _reads_as_number(value):
            expected = float  # coerce's YAML 1.1 hint: write 1.0e-4
        coerce_value(value, expected, key=where, source=source)  # raises with coerce's words
    if kind in _BOUND_WORDS:
        limit = ctx.get(_BOUND_KEYS[kind])
        return space_error(
            source, where, f"must be {_BOUND_WORDS[kind]} {show(limit)}, got {_quoted(value)}"
        )
    messages = {
        "bool_type": f"{_quoted(value, repr)} is not true or false",
        "string_type": f"{_quoted(value, repr)} is not a string",
        "finite_number": f"{_quoted(value, repr)} is not a finite number",
        "model_type": f"needs a mapping, got {_quoted(value)}",
        "dict_type": f"needs a mapping, got {_quoted(value)}",
        "list_type": f"needs a list, got {_quoted(value)}",
    }
    return space_error(source, where, messages.get(kind, str(error["msg"])))


def _quoted(value: Any, spell: Callable[[Any], str] = show) -> str:
    """``value`` spelled for a message, at most :data:`VALUE_EXCERPT` characters."""
    return excerpt(spell(value), VALUE_EXCERPT)


def _locate(
    model: type[BaseModel], loc: Sequence[int | str]
) -> tuple[type[BaseModel], FieldInfo | None]:
    """The innermost model along ``loc`` and the field ``loc`` ends in (None past the models)."""
    owner: type[BaseModel] = model
    current: type[BaseModel] | None = model
    field: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the items' model
        if current is None or part not in current.model_fields:
            return (current or owner), None
        owner, field = current, current.model_fields[part]
        current = _inner_model(field.annotation)
    return owner, field


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The Section model inside an annotation (``list[ConstraintSpec]``, ``X | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _reads_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
