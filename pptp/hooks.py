"""The seam between the one training loop and everything that changes how it trains.

Protection operators (:mod:`pptp.operators`) and baseline defenses (:mod:`pptp.defenses`) are both
:class:`Mechanism` objects. The loop in :mod:`pptp.train` owns the optimizer and the phases; a
mechanism *declares* what it needs, and never calls back into the loop or replaces its optimizer:

- on its class, :class:`Needs`: what it does to training, read before anything is built, so that
  :func:`pptp.compose.check_pair` can refuse a pair that cannot compose (the space validator in
  ``search/`` calls it before a study starts; the loop calls it again);
- on its instance, values the loop asks for at fixed points: optimizer options, a learning-rate
  factor, the loss, a chunk size for per-example gradients, data-independent gradient terms,
  whether to stop, the weights to hold at the end of the training phase, a fine-tune phase.

When the loop asks, for every optimisation step (``B`` examples)::

    optimizer.zero_grad()
    for chunk in batch split into m.chunk_size(ctx, B):    # one chunk unless per-example
        logits = model(x_chunk)                            # gradients need bounded memory
        loss = m.loss(ctx, logits, y) or cross-entropy     # mean over the chunk
        (loss * len(chunk) / B).backward()                 # forward hooks (attach) run here
        m.after_backward(ctx)                              # e.g. noise clips per-example grads
    m.before_step(ctx)                                     # e.g. noise writes protected .grad
    optimizer.step()     # DP-SGD privatises every .grad here; then, as a step pre-hook of the
                         # base SGD, .grad += m.grad_terms(ctx) (e.g. anchor's pull)

and around the steps: ``attach`` (once, before the first epoch: install forward hooks; the
optimizer is then wrapped by ``wrap_optimizer``), ``lr_scale`` (every epoch of the training
phase), ``should_stop`` (after every training-phase epoch's evaluation), ``end_training`` (once,
defense first, then operator: the weights to load), ``fine_tune`` (the operator's fine-tune phase,
if any), ``start_phase`` (when a phase starts, after the loop froze what the phase freezes),
``detach`` (once, at the end, also on error) and ``summary`` (numbers for the result).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pptp.config import TrainConfig

#: names of the training phases, in the order they run (:attr:`TrainContext.phase`)
PHASES = ("train", "finetune")


@dataclass(frozen=True)
class Needs:
    """What a mechanism does to training: declared on its class, compared by :mod:`pptp.compose`.

    Every field is False by default (plain training needs nothing).
    """

    #: per-example gradients of the loop's loss from the ordinary backward (BatchNorm refused)
    per_example_grads: bool = False
    #: activations in NCHW (contiguous) layout, not channels_last: Opacus' conv per-sample
    #: gradients come out wrong (zeros) for channels_last tensors (``unfold2d``, opacus 1.6.0)
    nchw: bool = False
    #: replaces ``.grad`` of some parameters between the backward pass and the step
    writes_grads: bool = False
    #: rebuilds every ``.grad`` from its own per-sample gradients at step time (Opacus DP-SGD)
    rebuilds_grads: bool = False
    #: replaces the training loss
    loss: bool = False
    #: that loss is not a mean of per-example losses (so a per-example gradient of it is undefined)
    batch_level_loss: bool = False
    #: adds data-independent gradient terms at step time, after any privatisation
    grad_terms: bool = False
    #: scales the protected or free groups' learning rate
    scales_lr: bool = False
    #: sets optimizer options of the parameter groups (e.g. weight decay)
    optimizer: bool = False
    #: changes the forward pass in training (forward hooks)
    forward_hooks: bool = False
    #: validation accuracy every epoch
    validation: bool = False
    #: sets weights at the end of the training phase
    restores_weights: bool = False
    #: may add a fine-tune phase after the training phase
    fine_tune: bool = False


@dataclass(frozen=True)
class FineTune:
    """A fine-tune phase an operator declares: ``epochs`` epochs at a constant learning rate
    ``lr`` with fresh momentum, the parameters named in ``frozen`` held fixed (no gradient, no
    update, no weight decay). It runs through the loop's own optimizer, so a private optimizer
    (DP-SGD) clips, noises and counts every fine-tune step."""

    epochs: int
    lr: float
    frozen: tuple[str, ...]


@dataclass
class TrainContext:
    """The state the loop shares with the mechanisms (they read it; only the loop writes it).

    ``protected``/``free`` are the parameter partition (:func:`pptp.selection.partition`), as
    parameter objects in ``model.named_parameters()`` order. ``warmup`` holds detached copies of
    the protected parameters at the end of epoch ``cfg.warmup_epochs`` (at initialisation when
    that is 0; the weights training ended with when it stopped before the warm-up ended); it is
    ``None`` before then.
    """

    model: nn.Module
    cfg: TrainConfig
    device: torch.device
    protected: dict[str, nn.Parameter]
    free: dict[str, nn.Parameter]
    protected_groups: tuple[str, ...]
    n_members: int
    steps_per_epoch: int
    generator: torch.Generator  # the operator's randomness (never the data order's)
    defense_generator: torch.Generator  # the defense's (e.g. DP-SGD's noise), a stream of its own
    phase: str = "train"  # one of PHASES
    epoch: int = 0  # 1-based, counted across phases
    batch_size: int = 0  # examples in the current optimisation step (the last batch may be short)
    warmup: dict[str, torch.Tensor] | None = None
    val_acc: float | None = None  # set after each epoch when a mechanism needs validation

    def after_warmup(self) -> bool:
        """Whether the warm-up is over (operators act only after it)."""
        return self.warmup is not None and self.epoch > self.cfg.warmup_epochs


class Mechanism:
    """Base class of operators and defenses: every method is a no-op, so ``Mechanism()`` is plain
    training. Subclasses set :attr:`needs` and override what they change."""

    needs: ClassVar[Needs] = Needs()

    def attach(self, ctx: TrainContext) -> None:
        """Once, before the first epoch: install forward hooks."""

    def optimizer_options(self, *, protected: bool) -> dict[str, Any]:
        """Options of the protected or free optimizer parameter group, e.g. weight decay."""
        return {}

    def wrap_optimizer(
        self, ctx: TrainContext, optimizer: torch.optim.Optimizer
    ) -> torch.optim.Optimizer:
        """Once, after ``attach``: the optimizer the loop steps (DP-SGD wraps it in Opacus')."""
        return optimizer

    def start_phase(self, ctx: TrainContext) -> None:
        """When a phase starts (``ctx.phase``), after the loop froze what the phase freezes."""

    def lr_scale(self, ctx: TrainContext, *, protected: bool) -> float:
        """Factor on a group's scheduled learning rate, asked at every training-phase epoch."""
        return 1.0

    def loss(self, ctx: TrainContext, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The training loss of a chunk, or ``None`` for the default (mean cross-entropy).

        ``logits: (n, n_classes)``, ``y: (n,)``; a mean over the chunk's examples unless
        :attr:`Needs.batch_level_loss`. Only one of operator and defense may define it.
        """
        return None

    def chunk_size(self, ctx: TrainContext, batch: int) -> int:
        """Examples per forward/backward chunk of a ``batch``-example step (memory bounds)."""
        return batch

    def after_backward(self, ctx: TrainContext) -> None:
        """After each chunk's ``backward()``."""

    def before_step(self, ctx: TrainContext) -> None:
        """After the last chunk's backward, before ``optimizer.step()``; may rewrite ``.grad``."""

    def grad_terms(self, ctx: TrainContext) -> Mapping[str, torch.Tensor]:
        """Data-independent terms (``param name -> tensor``) added to ``.grad`` at step time,
        after any privatisation; a term on a parameter without a gradient is skipped."""
        return {}

    def should_stop(self, ctx: TrainContext) -> bool:
        """After each training-phase epoch's evaluation: end the training phase now?"""
        return False

    def end_training(self, ctx: TrainContext) -> Mapping[str, torch.Tensor] | None:
        """Once, at the end of the training phase: weights (``state_dict`` names) to load."""
        return None

    def fine_tune(self, ctx: TrainContext) -> FineTune | None:
        """After ``end_training``: a fine-tune phase to run, or ``None``."""
        return None

    def detach(self, ctx: TrainContext) -> None:
        """Once, after the last epoch (also when training fails): remove hooks."""

    def summary(self) -> dict[str, float]:
        """Numbers for the trial result, e.g. ``{"epsilon": 3.1}``."""
        return {}


def snapshot(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies of tensors (``name -> tensor``)."""
    return {n: p.detach().clone() for n, p in params.items()}
