"""The training loop's optimizer and learning-rate schedule (:mod:`pptp.train` uses them).

One SGD whose parameter groups are the protected and free parameters, each with what the
mechanisms ask for (:meth:`pptp.hooks.Mechanism.optimizer_options`); a step pre-hook that adds the
mechanisms' data-independent gradient terms (after DP-SGD's privatisation when there is one); the
schedules ``train.schedule`` names.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from pptp.config import TrainConfig
from pptp.hooks import Mechanism, TrainContext


def sgd(cfg: TrainConfig, ctx: TrainContext, mechanisms: tuple[Mechanism, ...]) -> torch.optim.SGD:
    """SGD whose parameter groups are the protected and free parameters (``"protected": bool``),
    each with the mechanisms' options (e.g. a defense's weight decay).

    One group per contiguous run of protected or free parameters in model order (two for a
    prefix or suffix split, one without protection): the groups list every parameter in model
    order, as plain training's single group does. Opacus draws DP-SGD's noise parameter by
    parameter in that order, so a partition alone never changes which noise a parameter gets.
    """
    groups: list[dict[str, object]] = []
    for protected, run in itertools.groupby(
        ctx.model.named_parameters(), key=lambda item: item[0] in ctx.protected
    ):
        group: dict[str, object] = {"params": [p for _, p in run], "protected": protected}
        for m in mechanisms:
            group.update(m.optimizer_options(protected=protected))
        groups.append(group)
    return torch.optim.SGD(
        groups,  # type: ignore[arg-type]
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def grad_terms_hook(ctx: TrainContext, mechanisms: tuple[Mechanism, ...]) -> Callable[..., None]:
    """A step pre-hook for the base SGD: adds the mechanisms' data-independent gradient terms.
    Opacus' DPOptimizer.step privatises ``.grad`` (pre_step) and then calls the base SGD's
    step, so the terms land after privatisation; without DP they land before the plain step."""

    params = {**ctx.free, **ctx.protected}

    def add_terms(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        for m in mechanisms:
            for name, term in m.grad_terms(ctx).items():
                grad = params[name].grad
                if grad is not None:
                    grad.add_(term.to(grad.dtype))

    return add_terms


#: ``train.schedule`` -> the learning-rate factor at progress t in [0, 1]
SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    "constant": lambda t: 1.0,
}


def scheduled_lr(cfg: TrainConfig, step: int, total: int) -> float:
    """``train.lr`` on ``train.schedule`` at ``step`` of ``total``."""
    return cfg.lr * SCHEDULES[cfg.schedule](step / max(total, 1))
