"""Baseline defenses, run in the same training loop as PPTP so the Pareto front is fair.

Each is a :class:`~pptp.hooks.TrainingHooks` built from a :class:`~pptp.config.DefenseConfig`;
they act on the whole model. They compose with a protection operator (e.g. weight decay plus
``damp``), except that only one of them may define the loss.

===================  ======================================================================
``none``             undefended training
``weight_decay``     L2 weight decay ``defense.weight_decay`` instead of ``train.weight_decay``
``label_smoothing``  cross-entropy with label smoothing ``defense.label_smoothing``
``early_stopping``   stop when validation accuracy has not improved for ``defense.patience``
                     epochs; keep the best epoch's weights
``dpsgd``            full-model DP-SGD through Opacus (flat clipping ``max_grad_norm``, noise
                     multiplier ``noise_multiplier``); the PRV accountant's epsilon at
                     ``delta`` is reported. Batches are shuffled fixed-size batches, not Poisson
                     samples, so epsilon is the usual approximation that practice reports.
``relaxloss``        RelaxLoss (Chen et al., ICLR 2022, "RelaxLoss: Defending Membership
                     Inference Attacks without Losing Utility", Algorithm 1)
===================  ======================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pptp.config import DefenseConfig
from pptp.errors import ConfigError
from pptp.hooks import TrainContext, TrainingHooks
from pptp.registry import Registry

logger = logging.getLogger(__name__)

DefenseFactory = Callable[[DefenseConfig], TrainingHooks]

#: defense name -> factory building its hooks
DEFENSES: Registry[DefenseFactory] = Registry("defense")


def build_defense(cfg: DefenseConfig) -> TrainingHooks:
    """The hooks for ``cfg.name``."""
    return DEFENSES[cfg.name](cfg)


@DEFENSES.register("none")
def _none(cfg: DefenseConfig) -> TrainingHooks:
    return TrainingHooks()


class WeightDecay(TrainingHooks):
    def __init__(self, cfg: DefenseConfig) -> None:
        if cfg.weight_decay < 0:
            raise ConfigError(f"defense.weight_decay = {cfg.weight_decay} must be >= 0")
        self.value = cfg.weight_decay

    def param_group_overrides(self, *, protected: bool) -> dict[str, Any]:
        return {"weight_decay": self.value}


DEFENSES.register("weight_decay")(WeightDecay)


class LabelSmoothing(TrainingHooks):
    def __init__(self, cfg: DefenseConfig) -> None:
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ConfigError(f"defense.label_smoothing = {cfg.label_smoothing} must be in [0, 1)")
        self.value = cfg.label_smoothing

    def setup(self, ctx: TrainContext) -> None:
        ctx.label_smoothing = self.value


DEFENSES.register("label_smoothing")(LabelSmoothing)


class EarlyStopping(TrainingHooks):
    """Patience on validation accuracy (the pool's held-out ``val`` split, never the test set)."""

    needs_validation = True

    def __init__(self, cfg: DefenseConfig) -> None:
        if cfg.patience < 1:
            raise ConfigError(f"defense.patience = {cfg.patience} must be >= 1")
        self.patience = cfg.patience
        self.best = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def end_epoch(self, ctx: TrainContext) -> bool:
        if ctx.val_acc is None:
            raise ConfigError(
                "defense 'early_stopping' needs a validation set: set data.val_size > 0"
            )
        if ctx.val_acc > self.best:
            self.best, self.best_epoch = ctx.val_acc, ctx.epoch
            self.best_state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
            return False
        stop = ctx.epoch - self.best_epoch >= self.patience
        if stop:
            logger.info(
                "early stopping at epoch %d (best val acc %.4f at epoch %d)",
                ctx.epoch,
                self.best,
                self.best_epoch,
            )
        return stop

    def finish(self, ctx: TrainContext) -> None:
        if self.best_state is not None:
            ctx.model.load_state_dict(self.best_state)

    def summary(self) -> dict[str, float]:
        return {"best_epoch": float(self.best_epoch)}


DEFENSES.register("early_stopping")(EarlyStopping)


class DPSGD(TrainingHooks):
    """Opacus DP-SGD on the whole model; the model must be free of BatchNorm (model.norm: group)."""

    def __init__(self, cfg: DefenseConfig) -> None:
        if cfg.noise_multiplier < 0 or cfg.max_grad_norm <= 0 or not 0 < cfg.delta < 1:
            raise ConfigError(
                "defense.noise_multiplier must be >= 0, defense.max_grad_norm > 0 and "
                f"defense.delta in (0, 1); got {cfg.noise_multiplier}, {cfg.max_grad_norm}, "
                f"{cfg.delta}"
            )
        self.cfg = cfg
        self.engine: Any = None
        self.hooks: Any = None

    def setup(self, ctx: TrainContext) -> None:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(ctx.model, strict=False)
        if errors:
            raise ConfigError(
                f"defense 'dpsgd': Opacus cannot train this model ({errors[0]}); set "
                "model.norm: group"
            )
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.arange(ctx.n_members)),
            batch_size=ctx.cfg.batch_size,
        )
        self.engine = PrivacyEngine(accountant="prv")
        self.hooks, ctx.optimizer, _ = self.engine.make_private(
            module=ctx.model,
            optimizer=ctx.optimizer,
            data_loader=loader,
            noise_multiplier=self.cfg.noise_multiplier,
            max_grad_norm=self.cfg.max_grad_norm,
            poisson_sampling=False,
            wrap_model=False,
            noise_generator=ctx.generator,
        )

    def finish(self, ctx: TrainContext) -> None:
        if self.hooks is not None:
            self.hooks.remove_hooks()
        for p in ctx.model.parameters():  # Opacus leaves per-sample gradients behind
            for attr in ("grad_sample", "_forward_counter"):
                if hasattr(p, attr):
                    delattr(p, attr)

    def summary(self) -> dict[str, float]:
        if self.engine is None:
            return {}
        return {"epsilon": float(self.engine.get_epsilon(self.cfg.delta))}


DEFENSES.register("dpsgd")(DPSGD)


class RelaxLoss(TrainingHooks):
    """RelaxLoss (Chen et al., ICLR 2022), Algorithm 1, with target loss level alpha.

    Even epochs: minimise |CE - alpha| (gradient ascent once the loss is below alpha).
    Odd epochs: plain descent while CE > alpha; below it, "posterior flattening": soft targets that
    keep the true class's (clamped) confidence and spread the rest evenly, applied to the
    misclassified examples, minus the plain CE of every example.
    """

    def __init__(self, cfg: DefenseConfig) -> None:
        if cfg.relaxloss_alpha <= 0:
            raise ConfigError(f"defense.relaxloss_alpha = {cfg.relaxloss_alpha} must be > 0")
        self.alpha = cfg.relaxloss_alpha

    def loss(self, ctx: TrainContext, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per_example = nn.functional.cross_entropy(logits, y, reduction="none")  # (B,)
        mean = per_example.mean()
        if ctx.epoch % 2 == 0:
            return (mean - self.alpha).abs()
        if mean > self.alpha:
            return mean
        n_classes = logits.shape[1]
        with torch.no_grad():
            probs = logits.softmax(1)
            p_true = probs.gather(1, y[:, None]).squeeze(1)  # (B,)
            onehot = nn.functional.one_hot(y, n_classes).to(logits.dtype)
            rest = ((1.0 - p_true) / (n_classes - 1))[:, None]
            soft = onehot * p_true[:, None] + (1 - onehot) * rest  # (B, C)
            wrong = (logits.argmax(1) != y).to(logits.dtype)
        soft_ce = -(soft * logits.log_softmax(1)).sum(1)
        return (wrong * soft_ce - per_example).mean()


DEFENSES.register("relaxloss")(RelaxLoss)
