"""The seam between the one training loop and everything that changes how it trains.

Protection operators (:mod:`pptp.operators`) and baseline defenses (:mod:`pptp.defenses`) are both
:class:`TrainingHooks`. The loop in :mod:`pptp.train` calls the hooks at fixed points and never
asks which defense is running (STYLE.md lesson 5: no ``if defense:`` in the loop).

When each hook is called, for every optimisation step::

    logits = ctx.model(x)                  # forward hooks installed in setup() run here
    loss = base.loss(ctx, logits, y)       # the defense's loss (cross-entropy by default)
         + sum(h.penalty(ctx) for h)       # e.g. anchor's L2 pull
    loss.backward()
    h.after_backward(ctx, x, y)            # e.g. noise replaces the protected gradients
    ctx.optimizer.step()

and around them ``setup`` (once, before the first epoch), ``start_epoch``/``end_epoch`` (every
epoch; ``end_epoch`` may stop training) and ``finish`` (once, after the last epoch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pptp.config import TrainConfig


@dataclass
class TrainContext:
    """The mutable state the loop shares with its hooks.

    ``protected``/``free`` are the parameter partition (:func:`pptp.layers.partition`), as
    parameter objects in ``model.named_parameters()`` order. ``warmup`` holds detached copies of
    the protected parameters taken at the end of epoch ``cfg.warmup_epochs`` (at initialisation
    when that is 0); it is ``None`` before then.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    device: torch.device
    protected: dict[str, nn.Parameter]
    free: dict[str, nn.Parameter]
    protected_groups: tuple[str, ...]
    n_members: int
    steps_per_epoch: int
    generator: torch.Generator  # the operators' own randomness (never the data order's)
    label_smoothing: float = 0.0
    epoch: int = 0  # 1-based while training
    warmup: dict[str, torch.Tensor] | None = None
    val_acc: float | None = None  # set by the loop when a hook asked for validation
    run_epoch: Callable[[int], Any] | None = None  # lets finish() train more epochs (rewind)
    extra: dict[str, Any] = field(default_factory=dict)

    def after_warmup(self) -> bool:
        """Whether the warm-up phase is over (operators act only after it)."""
        return self.warmup is not None and self.epoch > self.cfg.warmup_epochs


class TrainingHooks:
    """Base class: every hook does nothing, so plain training is ``TrainingHooks()``."""

    #: whether the loop must compute validation accuracy every epoch (early stopping)
    needs_validation: bool = False

    def setup(self, ctx: TrainContext) -> None:
        """Called once before the first epoch (install forward hooks, wrap the optimizer)."""

    def param_group_overrides(self, *, protected: bool) -> dict[str, Any]:
        """Optimizer options for the protected or free parameter group, e.g. weight decay."""
        return {}

    def lr_scale(self, ctx: TrainContext, *, protected: bool) -> float:
        """Factor on the scheduled learning rate of a group, queried at every epoch start."""
        return 1.0

    def loss(self, ctx: TrainContext, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The training loss, or ``None`` to use the default (mean cross-entropy).

        ``logits: (batch, n_classes)``, ``y: (batch,)``; only one hook may define it.
        """
        return None

    def penalty(self, ctx: TrainContext) -> torch.Tensor | None:
        """An extra term added to the loss (or ``None``)."""
        return None

    def after_backward(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor) -> None:
        """Called after ``loss.backward()``, before ``optimizer.step()``; may rewrite ``.grad``."""

    def end_epoch(self, ctx: TrainContext) -> bool:
        """Called after each epoch's evaluation; return True to stop training."""
        return False

    def finish(self, ctx: TrainContext) -> None:
        """Called once after the last epoch (rewind, restore the best weights, remove hooks)."""

    def summary(self) -> dict[str, float]:
        """Numbers for the trial result, e.g. ``{"epsilon": 3.1}``."""
        return {}


def default_loss(ctx: TrainContext, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy with the context's label smoothing."""
    return nn.functional.cross_entropy(logits, y, label_smoothing=ctx.label_smoothing)


def snapshot(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Detached copies of parameters (``name -> tensor``)."""
    return {n: p.detach().clone() for n, p in params.items()}

