"""The two scores of every layer group, for any two trained models (see :mod:`pptp.localize`).

- :func:`privacy_risk`: A (trained on ``D1 ∪ D2``) against B (trained on ``D1``): the distance
  between A's output at g and the output at g of A with g's weights swapped for B's
  (:func:`swapped_group`), as the :func:`log_ratio` of its means on D2 against D1 and held-out;
- :func:`generalization`: A's test-accuracy drop when g alone is reset to its warm-up weights.

Both work on a copy or restore the model; inputs are ``(n, C, H, W)`` tensors on the models'
device, features are flattened per example in eval mode.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pptp.device import channels_last
from pptp.errors import ConfigError
from pptp.layers import LayerGroup, group_output_modules, layer_groups
from pptp.train import evaluate

_EPS = 1e-8  # keeps the log-ratio finite when both distances vanish (identical groups)


def check_groups(model: nn.Module) -> tuple[LayerGroup, ...]:
    """``model``'s layer groups; ConfigError for a model with fewer than two."""
    groups = layer_groups(model)
    if len(groups) < 2:
        raise ConfigError(
            f"{type(model).__name__} has a single layer group ({groups[0].name}); localisation "
            "compares groups, so it needs a model with at least two (see pptp/models.py)"
        )
    return groups


class _Captured(Exception):
    """Raised by a capture hook once it has the output it waits for: the rest of the forward
    pass is not needed."""


@torch.no_grad()
def _output_at(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s output ``(n, features)`` when ``model`` runs on ``x``; stops the pass there."""
    store: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        tensor = out[0] if isinstance(out, tuple | list) else out
        store.append(tensor.detach().flatten(1).float())
        raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        model(channels_last(x))
    except _Captured:
        pass
    finally:
        handle.remove()
    if not store:
        raise ConfigError(
            f"{type(model).__name__}.forward never ran the group output module {module}; the "
            "layer groups do not match the forward pass"
        )
    return store[0]


def normalised_distance(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """``||fa - fb|| / (||fa|| + ||fb||)`` per row of ``(n, features)``: (n,) in [0, 1].

    0 where both rows are zero. Scale-free per example, so groups of any width compare, and
    unlike 1 - cosine it sees a change of norm (e.g. more confident logits).
    """
    norm = fa.norm(dim=1) + fb.norm(dim=1)
    return (fa - fb).norm(dim=1) / norm.clamp_min(torch.finfo(torch.float32).tiny)


@torch.no_grad()
def output_distances(
    model_a: nn.Module,
    model_b: nn.Module,
    group: str,
    x: torch.Tensor,
    *,
    batch_size: int = 512,
) -> np.ndarray:
    """``d (n,)``: :func:`normalised_distance` of the two models' outputs at ``group``.

    ``x: (n, C, H, W)`` on the models' device; both models in eval mode, features flattened.
    """
    out_a = group_output_modules(model_a)[group]
    out_b = group_output_modules(model_b)[group]
    parts = []
    with _eval_mode(model_a, model_b):
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            d = normalised_distance(
                _output_at(model_a, out_a, batch), _output_at(model_b, out_b, batch)
            )
            parts.append(d.cpu().numpy().astype(np.float64))
    return np.concatenate(parts) if parts else np.zeros(0)


@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


@contextmanager
def swapped_group(
    model: nn.Module, donor: Mapping[str, torch.Tensor], group: str
) -> Iterator[nn.Module]:
    """``model`` with ``group``'s parameters and buffers taken from the ``state_dict`` ``donor``
    (another model's, or an earlier one of the same model), restored on exit."""
    keys = group_state_keys(model)[group]
    missing = [k for k in keys if k not in donor]
    if missing:
        raise ConfigError(
            f"the donor state lacks {len(missing)} entries of group {group!r}, "
            f"e.g. {missing[0]}: it belongs to another architecture"
        )
    state = model.state_dict()  # shares storage with the model: copy_ writes into it
    saved = {k: state[k].clone() for k in keys}
    with torch.no_grad():
        for k in keys:
            state[k].copy_(donor[k])
    try:
        yield model
    finally:
        with torch.no_grad():
            for k in keys:
                state[k].copy_(saved[k])


@dataclass(frozen=True)
class PrivacyRisk:
    """One seed's privacy scores per group, in model order (see the module docstring).

    ``distance_*``: mean swapped-group distances on D1, D2 and held-out (the risk's inputs).
    """

    groups: tuple[str, ...]
    risk: tuple[float, ...]
    risk_at_output: tuple[float, ...]
    distance_d1: tuple[float, ...]
    distance_d2: tuple[float, ...]
    distance_held_out: tuple[float, ...]


def log_ratio(d1: float, d2: float, held_out: float) -> float:
    """``log((d2 + eps) / ((d1 + held_out) / 2 + eps))``: 0 when D2 looks like the others."""
    return math.log((d2 + _EPS) / (0.5 * (d1 + held_out) + _EPS))


def privacy_risk(
    model_a: nn.Module,
    model_b: nn.Module,
    x_d1: torch.Tensor,
    x_d2: torch.Tensor,
    x_held_out: torch.Tensor,
    *,
    batch_size: int = 512,
) -> PrivacyRisk:
    """Score every group of A (trained on ``D1 ∪ D2``) against B (trained on ``D1`` only).

    ``x_d1``, ``x_d2``, ``x_held_out``: inputs ``(n, C, H, W)`` of the three sets, on the models'
    device, each non-empty. Per group g: the distance between A's output at g and the output at g
    of A with g's weights swapped for B's (:func:`swapped_group`), and :func:`log_ratio` of its
    means: the risk. ``risk_at_output`` is the same ratio for A against B as they are.
    """
    groups = [g.name for g in check_groups(model_a)]
    other = [g.name for g in layer_groups(model_b)]
    if groups != other:
        raise ConfigError(f"models A and B have different layer groups: {groups} vs {other}")
    sets = {"d1": x_d1, "d2": x_d2, "h": x_held_out}
    for name, x in sets.items():
        if len(x) == 0:
            raise ConfigError(f"the {name} set is empty; localisation needs examples in each set")
    hybrid, donor = copy.deepcopy(model_a), model_b.state_dict()
    swapped: dict[str, dict[str, float]] = {k: {} for k in sets}
    plain: dict[str, dict[str, float]] = {k: {} for k in sets}
    for g in groups:
        for key, x in sets.items():
            plain[key][g] = float(
                output_distances(model_a, model_b, g, x, batch_size=batch_size).mean()
            )
        with swapped_group(hybrid, donor, g):
            for key, x in sets.items():
                swapped[key][g] = float(
                    output_distances(model_a, hybrid, g, x, batch_size=batch_size).mean()
                )
    return PrivacyRisk(
        groups=tuple(groups),
        risk=tuple(log_ratio(swapped["d1"][g], swapped["d2"][g], swapped["h"][g]) for g in groups),
        risk_at_output=tuple(
            log_ratio(plain["d1"][g], plain["d2"][g], plain["h"][g]) for g in groups
        ),
        distance_d1=tuple(swapped["d1"][g] for g in groups),
        distance_d2=tuple(swapped["d2"][g] for g in groups),
        distance_held_out=tuple(swapped["h"][g] for g in groups),
    )


# --------------------------------------------------------------------------------------------
# Generalization: reset one group to its early weights


def group_state_keys(model: nn.Module) -> dict[str, list[str]]:
    """``{group: [state_dict keys]}``: parameters and buffers (BatchNorm statistics) per group."""
    groups = layer_groups(model)
    out: dict[str, list[str]] = {g.name: [] for g in groups}
    for key in model.state_dict():
        for g in groups:
            if g.matches(key):
                out[g.name].append(key)
                break
    return out


@torch.no_grad()
def generalization(
    model: nn.Module,
    early_state: Mapping[str, torch.Tensor],
    x_test: torch.Tensor,
    y_test: torch.Tensor,
) -> dict[str, float]:
    """``{group: acc(model) - acc(model with the group reset to early_state)}`` on the test set.

    ``early_state``: a ``state_dict`` of the same model earlier in training (the end of warm-up).
    Only the group's entries are reset, one group at a time; the model is restored after each.
    """
    groups = [g.name for g in check_groups(model)]
    base = evaluate(model, x_test, y_test)
    out: dict[str, float] = {}
    for group in groups:
        with swapped_group(model, early_state, group):
            out[group] = base - evaluate(model, x_test, y_test)
    return out
