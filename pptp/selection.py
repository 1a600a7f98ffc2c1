"""Selections and the protected / free partition of a model's parameters
(docs/design.md#layer-groups-and-selections).

A **selection** says which layer groups (:mod:`pptp.layers`) PPTP protects: an ordinal ``split``
with a ``direction`` (prefix k = the first k groups, suffix k = the last k), an explicit set of
``groups`` (a mask), or name ``patterns``. :func:`partition` turns a selection into protected and
free parameter names; the training loop gives each side its own optimizer parameter group
(``docs/style.md#mechanisms-through-optimizer-parameter-groups``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pptp.config import ProtectConfig
from pptp.errors import ConfigError
from pptp.layers import group_parameters, shorten_names

logger = logging.getLogger(__name__)

DIRECTIONS = ("prefix", "suffix")
"""Values of :attr:`Selection.direction`: protect the first k groups, or the last k."""


@dataclass(frozen=True)
class Selection:
    """Which layer groups to protect: exactly one of three modes.

    - ``split`` (int) with ``direction`` ``"prefix"`` or ``"suffix"``: the first / last
      ``split`` groups. Ordinal, so a sampler can exploit order. ``split=0`` protects nothing
      (plain training); ``split=n_groups`` protects everything.
    - ``groups``: an explicit mask, the names of the protected groups.
    - ``patterns``: regexes fullmatched against module names *and* parameter names; a parameter
      is protected when its own name, its module's name or any ancestor module's name matches.
      This may protect part of a group.

    Mode and direction are checked here; names and bounds need the model and are checked by
    :func:`resolve` / :func:`partition`.
    """

    split: int | None = None
    direction: str | None = None
    groups: tuple[str, ...] | None = None
    patterns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # a lone string is one name, a list becomes a tuple (frozen: hashable, comparable)
        for key in ("groups", "patterns"):
            object.__setattr__(self, key, _as_names(key, getattr(self, key)))
        given = [m for m in ("split", "groups", "patterns") if getattr(self, m) is not None]
        if len(given) != 1:
            raise ConfigError(
                "a selection needs exactly one of split (with direction), groups or patterns; "
                f"got {', '.join(given) if given else 'none'}"
            )
        if self.split is not None:
            if isinstance(self.split, bool) or not isinstance(self.split, int):
                raise ConfigError(f"split must be an integer, got {self.split!r}")
            if self.direction not in DIRECTIONS:
                raise ConfigError(
                    f"unknown selection direction {self.direction!r}; "
                    f"use one of {', '.join(DIRECTIONS)}"
                )
        elif self.direction is not None:
            raise ConfigError(
                f"direction {self.direction!r} only applies to split selections, not {given[0]}"
            )
        if self.patterns is not None:
            for pattern in self.patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(
                        f"selection pattern {pattern!r} is not a regex: {exc}"
                    ) from None

    @property
    def mode(self) -> str:
        """``"split"``, ``"groups"`` or ``"patterns"``."""
        if self.split is not None:
            return "split"
        return "groups" if self.groups is not None else "patterns"

    @classmethod
    def prefix(cls, k: int) -> Selection:
        """Protect the first ``k`` groups."""
        return cls(split=k, direction="prefix")

    @classmethod
    def suffix(cls, k: int) -> Selection:
        """Protect the last ``k`` groups."""
        return cls(split=k, direction="suffix")

    @classmethod
    def mask(cls, *groups: str) -> Selection:
        """Protect the named groups."""
        return cls(groups=tuple(groups))

    @classmethod
    def matching(cls, *patterns: str) -> Selection:
        """Protect parameters whose name, module or ancestor module fullmatches a pattern."""
        return cls(patterns=tuple(patterns))

    @classmethod
    def from_config(
        cls,
        *,
        split: int | None = None,
        direction: str | None = None,
        groups: str | Iterable[str] | None = None,
        patterns: str | Iterable[str] | None = None,
    ) -> Selection:
        """Build from flat values as a YAML file or a sampled config gives them.

        ``groups`` and ``patterns`` may be a list or a single string; ``None`` means "not
        given". A split of a float type with an integral value (``2.0``) is accepted.
        ``direction`` is read only together with ``split``: a config may carry a default
        direction (``"prefix"``) while it selects by groups or patterns.
        """
        if isinstance(split, float) and split.is_integer():
            split = int(split)
        return cls(
            split=split,
            direction=direction if split is not None else None,
            groups=groups,  # type: ignore[arg-type]  # normalised in __post_init__
            patterns=patterns,  # type: ignore[arg-type]
        )

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> Selection:
        """:meth:`from_config` from a dict; unknown keys raise :class:`ConfigError`."""
        known = {"split", "direction", "groups", "patterns"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(
                f"unknown selection key(s) {unknown}; known: {', '.join(sorted(known))}"
            )
        return cls.from_config(**config)

    def to_config(self) -> dict[str, Any]:
        """The flat form (only the given fields), inverse of :meth:`from_mapping`."""
        out: dict[str, Any] = {}
        if self.split is not None:
            out.update(split=self.split, direction=self.direction)
        if self.groups is not None:
            out["groups"] = list(self.groups)
        if self.patterns is not None:
            out["patterns"] = list(self.patterns)
        return out


def _as_names(key: str, value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ConfigError(f"selection {key} must be strings, got {bad!r}")
    return names


@dataclass(frozen=True)
class Partition:
    """The protected / free split of a model's parameters.

    ``protected`` and ``free`` are parameter names in ``model.named_parameters()`` order; they
    are disjoint and together cover every parameter. ``protected_groups`` are the groups with at
    least one protected parameter, in group order; ``mask[group]`` is True for those (fully or
    partly protected) and False for the rest, in group order.
    """

    protected: tuple[str, ...]
    free: tuple[str, ...]
    protected_groups: tuple[str, ...]
    mask: dict[str, bool] = field(hash=False)


def resolve(selection: Selection, model: nn.Module) -> tuple[str, ...]:
    """Names of the protected groups, in group order (for patterns: groups touched at all)."""
    return partition(model, selection).protected_groups


def partition(model: nn.Module, selection: Selection) -> Partition:
    """Split the model's parameters into protected and free according to ``selection``.

    Raises :class:`ConfigError` for a split outside ``[0, n_groups]``, an unknown group name, or
    a pattern that matches no module or parameter.
    """
    by_group = group_parameters(model)  # group order
    if selection.patterns is not None:
        protected_names = set(_pattern_protected(model, selection.patterns))
    else:
        chosen = set(_selected_groups(selection, list(by_group)))
        protected_names = {p for g in chosen for p, _ in by_group[g]}
    protected = tuple(n for n, _ in model.named_parameters() if n in protected_names)
    free = tuple(n for n, _ in model.named_parameters() if n not in protected_names)
    mask = {g: any(p in protected_names for p, _ in ps) for g, ps in by_group.items()}
    protected_groups = tuple(g for g, on in mask.items() if on)
    logger.debug(
        "selection %s protects %d of %d parameter tensors in groups %s",
        selection.to_config(),
        len(protected),
        len(protected) + len(free),
        protected_groups,
    )
    return Partition(protected, free, protected_groups, mask)


def _selected_groups(selection: Selection, names: Sequence[str]) -> tuple[str, ...]:
    n = len(names)
    if selection.split is not None:
        k = selection.split
        if not 0 <= k <= n:
            raise ConfigError(
                f"split {k} is outside [0, {n}] for a model with {n} layer groups "
                f"({', '.join(names)})"
            )
        return tuple(names[:k]) if selection.direction == "prefix" else tuple(names[n - k :])
    assert selection.groups is not None
    unknown = [g for g in selection.groups if g not in names]
    if unknown:
        raise ConfigError(
            f"unknown layer group(s) {unknown}; this model's groups: {', '.join(names)}"
        )
    return tuple(g for g in names if g in selection.groups)


def _pattern_protected(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Parameter names whose own name, module name or an ancestor module name matches."""
    # shallow names first, so an error shows the model's top-level layout
    module_names = sorted((m for m, _ in model.named_modules() if m), key=lambda m: m.count("."))
    param_names = [p for p, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(re.fullmatch(pattern, n) for n in (*module_names, *param_names)):
            raise ConfigError(
                f"selection pattern {pattern!r} matches no module or parameter name "
                f"(patterns are re.fullmatch-ed); module names include: "
                f"{shorten_names(module_names)}"
            )
    protected = []
    for pname in param_names:
        parts = pname.split(".")
        candidates = [pname, *(".".join(parts[:i]) for i in range(1, len(parts)))]
        if any(re.fullmatch(p, c) for p in patterns for c in candidates):
            protected.append(pname)
    return protected


def selection_of(cfg: ProtectConfig) -> Selection | None:
    """The layer selection a protect config names, or None when it names none."""
    if cfg.split is None and cfg.groups is None and cfg.patterns is None:
        return None
    return Selection.from_config(
        split=cfg.split, direction=cfg.direction, groups=cfg.groups, patterns=cfg.patterns
    )
