"""Exceptions for bad input. Entry points turn these into one line and exit status 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A name, value or file the user gave is wrong; the message says what to do."""


class DataUnavailableError(ConfigError):
    """A dataset is not on disk (or is corrupt) and cannot or may not be downloaded."""
