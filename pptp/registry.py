"""Name -> object registries filled by a decorator (``docs/style.md#registries-not-if-chains``).

Every pluggable piece of pptp (datasets, models, operators, defenses, attacks) lives in a
:class:`Registry`. Looking up an unknown name raises :class:`~pptp.errors.ConfigError` that lists
the known names, so a typo in a space file is one clear message, not a ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from pptp.errors import ConfigError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping from name to entry, filled with :meth:`register`.

    ``kind`` is the human word used in errors ("dataset", "model", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@DATASETS.register("digits")`` adds the decorated object under ``name``."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
