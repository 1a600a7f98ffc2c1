"""The one error a space file raises, and the one shape of its message: ``<file>: <key>: <what>``.

``<key>`` is dotted from the top of the file (``study.resources.cpus``, ``params.train.lr.low``,
``study.constraints[0].max``), so the user can find the line without a traceback. A value a
message quotes is cut to ``VALUE_EXCERPT`` characters (:func:`pptp.errors.excerpt`), and a whole
message to :data:`MAX_MESSAGE`, so a file cannot make the driver print megabytes of one line.
"""

from __future__ import annotations

from typing import Any

from pptp.config import coerce
from pptp.errors import ConfigError, excerpt

#: the longest message a space error prints (its start names the file and key; lists of the
#: known names a key accepts fit)
MAX_MESSAGE = 2000


class SpaceError(ConfigError):
    """A space file is wrong. The message starts with the file path, then the key; it is at
    most :data:`MAX_MESSAGE` characters (plus the note of what was cut)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(excerpt(message, MAX_MESSAGE), key=key)


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
