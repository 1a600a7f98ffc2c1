"""Exceptions with a message that says what to do.

:class:`ConfigError` is bad input: entry points turn it into one line and exit status 2.
:class:`ModelAtChance` fails a trial (the search records its message as the reason).
"""

from __future__ import annotations

#: the longest excerpt of a value an error message quotes
VALUE_EXCERPT = 160


def excerpt(text: str, limit: int = VALUE_EXCERPT) -> str:
    """``text`` when at most ``limit`` characters, else its start and end around
    ``… (N characters cut) …`` (a value read from a file may be megabytes long)."""
    if len(text) <= limit:
        return text
    tail = limit // 5
    head = limit - tail
    return f"{text[:head]} … ({len(text) - limit} characters cut) … {text[-tail:]}"


def quoted(value: object) -> str:
    """``repr(value)``, at most :data:`VALUE_EXCERPT` characters: how a message quotes a value."""
    return excerpt(repr(value))


class ConfigError(ValueError):
    """A name, value or file the user gave is wrong; the message says what to do.

    ``key``: the config key at fault (``attack.n_references``), when one is, so that a caller
    that knows where the value came from (a space file) can name it there.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class DataUnavailableError(ConfigError):
    """A dataset is not on disk (or is corrupt) and cannot or may not be downloaded."""


class ModelAtChance(RuntimeError):
    """A trained model's held-out accuracy is not clearly above chance (see :mod:`pptp.chance`).

    Its attack numbers would look private (AUC near 0.5) only because it learned nothing; the
    trial fails with this reason instead of reporting them.
    """


def check_size(name: str, value: int | None, *, minimum: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is None or an integer >= ``minimum`` (a bool is
    not a size)."""
    if value is not None and (isinstance(value, bool) or value < minimum):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
