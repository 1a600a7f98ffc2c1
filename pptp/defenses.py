"""Baseline defenses, run in the same training loop as PPTP so the Pareto front is fair.

Each is a :class:`~pptp.hooks.Mechanism` built from a :class:`~pptp.config.DefenseConfig`; they act
on the whole model. What each needs from the loop is declared on its class
(:class:`~pptp.hooks.Needs`); :func:`pptp.compose.check_pair` says which protection operators it
composes with, and why the others are refused.

===================  ======================================================================
``none``             undefended training
``weight_decay``     L2 weight decay ``defense.weight_decay`` instead of ``train.weight_decay``
``label_smoothing``  cross-entropy with label smoothing ``defense.label_smoothing``
``early_stopping``   stop when validation accuracy has not improved for ``defense.patience``
                     epochs; the training phase ends with the best epoch's weights (an
                     operator's fine-tune phase, e.g. rewind's, starts from them and is not
                     early-stopped)
``dpsgd``            full-model DP-SGD through Opacus (flat clipping ``max_grad_norm``, noise
                     multiplier ``noise_multiplier``); the PRV accountant's epsilon at
                     ``delta`` is reported. Batches are shuffled fixed-size batches, not Poisson
                     samples, so epsilon is the usual approximation that practice reports.
                     Every step runs through the private optimizer, an operator's fine-tune
                     steps included, and is counted by the accountant.
``relaxloss``        RelaxLoss (Chen et al., ICLR 2022, "RelaxLoss: Defending Membership
                     Inference Attacks without Losing Utility", Algorithm 1)
===================  ======================================================================

**One strength for every defense.** A baseline is only as fair as its tuning (Aerni et al. 2024:
at equal accuracy a tuned DP-SGD beats every heuristic defense), so each defense's own knob is
searchable in the same study through ``defense.strength`` in [0, 1], as ``protect.strength`` is
for operators; :func:`resolve_strength` maps it (this project's choice of ranges, 0 the weakest
setting and 1 a strong one; when ``defense.strength`` is null the knobs are used as given):

===================  ======================================================================
``weight_decay``     ``train.weight_decay * (STRONG_WEIGHT_DECAY / train.weight_decay) ** s``
                     (log scale, from the recipe's own decay at 0 to 5e-2 at 1)
``label_smoothing``  ``0.5 * s``
``early_stopping``   patience ``round(epochs - s * (epochs - 1))``: never stops early at 0, one
                     epoch of patience at 1 (the best epoch's weights are kept either way)
``dpsgd``            noise multiplier ``2.0 * s`` (``defense.max_grad_norm`` is its own key; at
                     0 only clipping acts and epsilon is infinite)
``relaxloss``        alpha ``2.0 * s`` (0: plain descent; ln 10 = 2.3 is the loss of a uniform
                     guess over 10 classes)
===================  ======================================================================
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from pptp.config import DefenseConfig, TrainConfig
from pptp.errors import ConfigError
from pptp.hooks import Mechanism, Needs, TrainContext
from pptp.registry import Registry

logger = logging.getLogger(__name__)


class Defense(Mechanism):
    """A baseline defense, built from a :class:`DefenseConfig`."""

    def __init__(self, cfg: DefenseConfig) -> None:
        self.cfg = cfg


#: defense name -> its class (``needs`` on the class, built with a :class:`DefenseConfig`)
DEFENSES: Registry[type[Defense]] = Registry("defense")


def build_defense(cfg: DefenseConfig) -> Defense:
    """The defense ``cfg.name`` (pass a config through :func:`resolve_strength` first)."""
    return DEFENSES[cfg.name](cfg)


STRONG_WEIGHT_DECAY = 5.0e-2
MAX_LABEL_SMOOTHING = 0.5
MAX_NOISE_MULTIPLIER = 2.0
MAX_RELAXLOSS_ALPHA = 2.0


def _weight_decay(s: float, train: TrainConfig) -> dict[str, Any]:
    start = max(train.weight_decay, 1.0e-5)  # a recipe without decay starts the scale at 1e-5
    return {
        "weight_decay": start * (STRONG_WEIGHT_DECAY / start) ** s if s > 0 else train.weight_decay
    }


#: defense name -> its knob(s) at strength s (module docstring); ``none`` has no knob
STRENGTH_KNOBS: dict[str, Callable[[float, TrainConfig], dict[str, Any]]] = {
    "none": lambda s, train: {},
    "weight_decay": _weight_decay,
    "label_smoothing": lambda s, train: {"label_smoothing": MAX_LABEL_SMOOTHING * s},
    "early_stopping": lambda s, train: {
        "patience": max(1, round(train.epochs - s * (train.epochs - 1)))
    },
    "dpsgd": lambda s, train: {"noise_multiplier": MAX_NOISE_MULTIPLIER * s},
    "relaxloss": lambda s, train: {"relaxloss_alpha": MAX_RELAXLOSS_ALPHA * s},
}


def resolve_strength(cfg: DefenseConfig, train: TrainConfig) -> DefenseConfig:
    """``cfg`` with ``defense.strength`` turned into the defense's own knob (module docstring);
    unchanged when the strength is null. Every registered defense must have a knob here."""
    if cfg.strength is None:
        return cfg
    if not 0.0 <= cfg.strength <= 1.0:
        raise ConfigError(
            f"defense.strength = {cfg.strength} is outside [0, 1]; 0 is the defense's weakest "
            "setting, 1 a strong one (null: use the defense's own keys)"
        )
    if cfg.name not in STRENGTH_KNOBS:
        raise ConfigError(f"defense {cfg.name!r} has no strength knob; set its own keys")
    return dataclasses.replace(cfg, **STRENGTH_KNOBS[cfg.name](cfg.strength, train))


@DEFENSES.register("none")
class NoDefense(Defense):
    """Undefended training."""


@DEFENSES.register("weight_decay")
class WeightDecay(Defense):
    """``defense.weight_decay`` as the optimizer's weight decay, in every group and phase."""

    needs = Needs(optimizer=True)

    def __init__(self, cfg: DefenseConfig) -> None:
        super().__init__(cfg)
        if cfg.weight_decay < 0:
            raise ConfigError(f"defense.weight_decay = {cfg.weight_decay} must be >= 0")
        self.value = cfg.weight_decay

    def optimizer_options(self, *, protected: bool) -> dict[str, Any]:
        return {"weight_decay": self.value}


@DEFENSES.register("label_smoothing")
class LabelSmoothing(Defense):
    """Mean cross-entropy with label smoothing ``defense.label_smoothing`` (a per-example loss)."""

    needs = Needs(loss=True)

    def __init__(self, cfg: DefenseConfig) -> None:
        super().__init__(cfg)
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ConfigError(f"defense.label_smoothing = {cfg.label_smoothing} must be in [0, 1)")
        self.value = cfg.label_smoothing

    def loss(self, ctx: TrainContext, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, y, label_smoothing=self.value)


@DEFENSES.register("early_stopping")
class EarlyStopping(Defense):
    """Patience on validation accuracy (the pool's held-out ``val`` split, never the test set).

    The training phase stops when validation accuracy has not improved for ``patience`` epochs
    and ends with the best epoch's weights (model state: parameters and buffers).
    """

    needs = Needs(validation=True, restores_weights=True)

    def __init__(self, cfg: DefenseConfig) -> None:
        super().__init__(cfg)
        if cfg.patience < 1:
            raise ConfigError(f"defense.patience = {cfg.patience} must be >= 1")
        self.patience = cfg.patience
        self.best = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def should_stop(self, ctx: TrainContext) -> bool:
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

    def end_training(self, ctx: TrainContext) -> Mapping[str, torch.Tensor] | None:
        return self.best_state

    def summary(self) -> dict[str, float]:
        return {"best_epoch": float(self.best_epoch)}


@DEFENSES.register("dpsgd")
class DPSGD(Defense):
    """Opacus DP-SGD on the whole model; the model must be free of BatchNorm (model.norm: group).

    The loop's one SGD is wrapped in Opacus' ``DPOptimizer`` (``PrivacyEngine.make_private``),
    which at every ``step()`` rebuilds each ``.grad`` from clipped per-sample gradients plus
    noise, then lets the accountant count the step. When a phase freezes parameters (rewind's
    fine-tuning), Opacus' per-sample hooks are re-attached to the trainable modules only, so the
    same private optimizer clips and noises the free parameters and counts every step.

    The model trains in NCHW layout (``Needs.nchw``): Opacus' conv grad sampler reads
    channels_last activations wrongly (its ``unfold2d`` assumes NCHW strides, opacus 1.6.0), which
    made every conv after the first train on noise alone while the loop used channels_last.
    """

    needs = Needs(per_example_grads=True, rebuilds_grads=True, nchw=True)

    def __init__(self, cfg: DefenseConfig) -> None:
        super().__init__(cfg)
        if cfg.noise_multiplier < 0 or cfg.max_grad_norm <= 0 or not 0 < cfg.delta < 1:
            raise ConfigError(
                "defense.noise_multiplier must be >= 0, defense.max_grad_norm > 0 and "
                f"defense.delta in (0, 1); got {cfg.noise_multiplier}, {cfg.max_grad_norm}, "
                f"{cfg.delta}"
            )
        self.engine: Any = None
        self.hooks: Any = None

    def attach(self, ctx: TrainContext) -> None:
        from opacus.validators import ModuleValidator  # 1 s import, only needed here

        errors = ModuleValidator.validate(ctx.model, strict=False)
        if errors:
            raise ConfigError(
                f"defense 'dpsgd': Opacus cannot train this model ({errors[0]}); set "
                "model.norm: group"
            )

    def wrap_optimizer(
        self, ctx: TrainContext, optimizer: torch.optim.Optimizer
    ) -> torch.optim.Optimizer:
        from opacus import PrivacyEngine

        loader = torch.utils.data.DataLoader(  # only tells Opacus the batch size and steps
            torch.utils.data.TensorDataset(torch.arange(ctx.n_members)),
            batch_size=ctx.cfg.batch_size,
        )
        self.engine = PrivacyEngine(accountant="prv")
        self.hooks, private, _ = self.engine.make_private(
            module=ctx.model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=self.cfg.noise_multiplier,
            max_grad_norm=self.cfg.max_grad_norm,
            poisson_sampling=False,
            wrap_model=False,
            noise_generator=ctx.defense_generator,
        )
        return private  # type: ignore[no-any-return]

    def start_phase(self, ctx: TrainContext) -> None:
        if ctx.phase == "train" or self.hooks is None:
            return
        from opacus.grad_sample import GradSampleHooks

        # hooks on frozen modules would wait for activations they never capture; re-attach to
        # the modules that still train (Opacus skips modules without trainable parameters)
        self.hooks.remove_hooks()
        self.hooks = GradSampleHooks(ctx.model, batch_first=True, loss_reduction="mean")

    def steps(self) -> int:
        """Optimisation steps the accountant has counted."""
        if self.engine is None:
            return 0
        return sum(int(n) for _, _, n in self.engine.accountant.history)

    def detach(self, ctx: TrainContext) -> None:
        if self.hooks is not None:
            self.hooks.remove_hooks()
        for p in ctx.model.parameters():  # Opacus leaves per-sample gradients behind
            for attr in ("grad_sample", "_forward_counter", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)

    def summary(self) -> dict[str, float]:
        if self.engine is None:
            return {}
        # without noise there is no privacy guarantee (the PRV accountant overflows on it)
        epsilon = (
            float(self.engine.get_epsilon(self.cfg.delta))
            if self.cfg.noise_multiplier > 0
            else math.inf
        )
        return {"epsilon": epsilon, "dp_steps": float(self.steps())}


@DEFENSES.register("relaxloss")
class RelaxLoss(Defense):
    """RelaxLoss (Chen et al., ICLR 2022), Algorithm 1, with target loss level alpha.

    Even epochs: minimise |CE - alpha| (gradient ascent once the loss is below alpha).
    Odd epochs: plain descent while CE > alpha; below it, "posterior flattening": soft targets that
    keep the true class's (clamped) confidence and spread the rest evenly, applied to the
    misclassified examples, minus the plain CE of every example. The objective is batch-level
    (|mean CE - alpha| and the branch on the batch's mean), not a mean of per-example losses.
    """

    needs = Needs(loss=True, batch_level_loss=True)

    def __init__(self, cfg: DefenseConfig) -> None:
        super().__init__(cfg)
        if cfg.relaxloss_alpha < 0:
            raise ConfigError(f"defense.relaxloss_alpha = {cfg.relaxloss_alpha} must be >= 0")
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
