"""A user's own model: ``model.name: package.module:factory`` or ``path/to/file.py:factory``.

The factory is called as ``factory(facts, **model.kwargs)`` with the data's
:class:`~pptp.datasets.DataFacts` (``num_classes``, ``channels``, ``image_size``, ``features``,
``table``) and must return an ``nn.Module`` mapping ``(N, channels, image_size, image_size)``
float32 inputs (a table: ``(N, features, 1, 1)``; start with ``nn.Flatten()``) to logits
``(N, num_classes)``.

Layer groups (``docs/design.md#layer-groups-and-selections``), in this order of precedence:

1. ``model.groups`` in the space: an ordered map from group name to parameter-name patterns,
   in the spirit of timm's group matchers. A pattern that is a plain dotted name (``conv1``,
   ``features.0``) covers that module and everything under it; any other pattern is a regular
   expression matched (``re.fullmatch``) against dotted parameter names (``blocks\\.[0-3]\\..*``);
2. a ``layer_groups`` attribute on the model (as pptp's own models declare);
3. groups derived from the model's containers, as for torchvision models
   (:func:`pptp.layers.derive_layer_groups`).

Checks, each one :class:`~pptp.errors.ConfigError` before any training: the factory can be
imported and is callable (:mod:`pptp.imports`), it returns an ``nn.Module``, there are at least two
groups and every parameter is in exactly one (the error lists what no pattern matched, or what
two matched), and one eval-mode forward of a zero input gives ``(1, num_classes)``
(:func:`pptp.models.dry_run`).
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from pptp.config import ModelConfig, Params
from pptp.datasets import DataFacts
from pptp.errors import ConfigError
from pptp.imports import resolve
from pptp.layers import check_groups, subtree_pattern

logger = logging.getLogger(__name__)

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
MIN_GROUPS = 2


def group_patterns(groups: Params) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``model.groups`` as ``layer_groups`` pairs: plain dotted names become subtree patterns,
    anything else is taken as a regular expression (checked here)."""
    out = []
    for name, patterns in groups.items():
        items = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        if not items:
            raise ConfigError(f"model.groups.{name} lists no pattern", key=f"model.groups.{name}")
        converted = []
        for pattern in items:
            if _PLAIN_NAME.fullmatch(pattern):
                converted.append(subtree_pattern(pattern))
                continue
            try:
                re.compile(pattern)
            except re.error as error:
                raise ConfigError(
                    f"model.groups.{name}: {pattern!r} is not a regular expression ({error})",
                    key=f"model.groups.{name}",
                ) from None
            converted.append(pattern)
        out.append((name, tuple(converted)))
    return tuple(out)


def create_own_model(cfg: ModelConfig, facts: DataFacts) -> nn.Module:
    """``factory(facts, **cfg.kwargs)``, with its layer groups set and checked (module
    docstring); the caller runs the dry forward."""
    if cfg.width is not None:
        raise ConfigError(
            f"model.width applies to pptp's own models, not {cfg.name}; pass the factory's "
            "arguments as model.kwargs",
            key="model.width",
        )
    factory = resolve(cfg.name, key="model.name")
    try:
        model = factory(facts, **dict(cfg.kwargs))
    except Exception as error:  # the user's code: whatever it raises is the user's to fix
        raise ConfigError(
            f"model.name = {cfg.name!r}: the factory failed with {facts} and model.kwargs "
            f"{dict(cfg.kwargs)} ({type(error).__name__}: {error})",
            key="model.name",
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.name = {cfg.name!r} returned a {type(model).__name__}, not a torch.nn.Module",
            key="model.name",
        )
    if cfg.groups is not None:
        setattr(model, "layer_groups", group_patterns(cfg.groups))  # noqa: B010
    try:
        groups = check_groups(model)
    except ConfigError as error:
        if cfg.groups is not None:
            raise ConfigError(f"model.groups: {error}", key="model.groups") from None
        raise ConfigError(
            f"model.name: {error}; or declare model.groups in the space (group name -> "
            "parameter-name patterns)",
            key="model.name",
        ) from None
    if len(groups) < MIN_GROUPS:
        raise ConfigError(
            f"model {cfg.name} has {len(groups)} layer group ({groups[0].name}); PPTP protects "
            f"some groups and leaves others free, so it needs at least {MIN_GROUPS}: declare "
            "model.groups in the space",
            key="model.groups",
        )
    return model


def dry_run(
    model: nn.Module, name: str, *, num_classes: int, in_channels: int, image_size: int
) -> None:
    """One eval-mode forward of a zero image: no BatchNorm statistics change, no RNG is used."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, image_size, image_size))
    except Exception as exc:  # a user's forward may raise anything
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model {name} cannot take {in_channels}x{image_size}x{image_size} inputs: {first}",
            key="model.name",
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model {name} gives {shape} for one {in_channels}x{image_size}x{image_size} input, "
            f"not logits (1, {num_classes})",
            key="model.name",
        )
