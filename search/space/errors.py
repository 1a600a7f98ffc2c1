"""The one error a space file raises, and the one shape of its message: ``<file>: <key>: <what>``.

``<key>`` is dotted from the top of the file (``study.resources.cpus``, ``params.train.lr.low``,
``study.constraints[0].max``), so the user can find the line without a traceback.
"""

from __future__ import annotations

from typing import Any

from pptp.config import coerce
from pptp.errors import ConfigError


class SpaceError(ConfigError):
    """A space file is wrong. The message starts with the file path, then the key."""


def space_error(source: str, key: str, message: str) -> SpaceError:
    """``SpaceError("<source>: <key>: <message>")``."""
    return SpaceError(f"{source}: {key}: {message}")


def coerce_value(value: Any, hint: Any, *, key: str, source: str) -> Any:
    """:func:`pptp.config.coerce` raising :class:`SpaceError` (``<file>: <key> = ... is ...``).

    The same rules and words as a trial config: ints become floats where a float is wanted,
    integral floats become ints, lists become tuples, and a string where a number is wanted says
    that YAML 1.1 reads ``1e-4`` as a string.
    """
    try:
        return coerce(value, hint, key=key, source=source)
    except ConfigError as err:
        raise SpaceError(str(err)) from None


def show(value: Any) -> str:
    """``value`` as a space file would spell it: ``null``, ``true``, ``0.001``, ``[a, b]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)
