"""PPTP protection operators: how the protected layer groups are held back (DESIGN.md §2.2).

The paper (Fang & Kim, arXiv 2602.02296) states the principle: protect the components that carry
membership-privacy risk, leave those that carry generalization free. It does not publish operators
we could copy, so every operator here is *this project's interpretation* of "protect".

Each operator takes one strength ``s`` in [0, 1] and acts only on the protected parameters (their
gradients, learning rate, values, or the outputs of their groups). Free parameters are updated by
the unchanged optimizer from the gradient of the training loss. ``s = 0`` builds no hooks at all, so
it is plain training bit for bit under the same seed; operators that draw random numbers use
``ctx.generator``, never the global RNG or the data-order generator.

=================  ==========================================================================
``noise``          per-example clipping + Gaussian noise on the protected gradients only
                   (DP-SGD restricted to groups); sigma = s * ``max_noise_multiplier``.
``damp``           after warm-up, the protected groups' learning rate is scaled by (1 - s);
                   s = 1 freezes them at their warm-up weights.
``anchor``         after warm-up, adds s * ``max_anchor`` * mean((theta - theta_warmup)^2) over
                   the protected parameters: an L2 pull toward the warm-up weights.
``rewind``         after training, resets the protected groups to their weights at epoch
                   warmup + round((1 - s) * (epochs - warmup)) and fine-tunes the free groups
                   for ``finetune_epochs`` with the protected ones frozen.
``feature_noise``  in training mode only, adds Gaussian noise of std s * ``max_feature_noise`` *
                   std(output) to each protected group's output (the noise reaches the free
                   layers downstream through the forward pass, as it must).
=================  ==========================================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from pptp.config import ProtectConfig
from pptp.errors import ConfigError
from pptp.hooks import TrainContext, TrainingHooks, snapshot
from pptp.layers import group_output_modules
from pptp.registry import Registry

logger = logging.getLogger(__name__)

OperatorFactory = Callable[[ProtectConfig], TrainingHooks]

#: operator name -> factory building the hooks for a :class:`ProtectConfig`
OPERATORS: Registry[OperatorFactory] = Registry("operator")


def build_operator(cfg: ProtectConfig) -> TrainingHooks:
    """The hooks for ``cfg.operator`` at ``cfg.strength``; plain hooks when the strength is 0."""
    factory = OPERATORS[cfg.operator]
    if not 0.0 <= cfg.strength <= 1.0 or math.isnan(cfg.strength):
        raise ConfigError(
            f"protect.strength = {cfg.strength} is outside [0, 1]; 0 is plain training, 1 the "
            "operator's full scale"
        )
    if cfg.strength == 0.0:
        return TrainingHooks()
    return factory(cfg)


@OPERATORS.register("none")
def _none(cfg: ProtectConfig) -> TrainingHooks:
    return TrainingHooks()


# --------------------------------------------------------------------------------------- noise
class NoiseOperator(TrainingHooks):
    """DP-SGD on the protected parameters only.

    Per-example gradients come from ``torch.func`` (``vmap(grad(functional_call))``) over the
    protected parameters alone: the free parameters enter as constants, so no per-example tensor
    is ever built for them. Opacus' hooks would compute per-example gradients for every trainable
    layer of the model and would need the free layers frozen to skip them, which would also stop
    their ordinary gradients; ``torch.func`` lets the free group keep its plain batched gradient.

    Per step, with B examples, clip norm C and sigma = s * max_noise_multiplier::

        g_i = grad of loss(x_i, y_i) w.r.t. protected params      (B per-example gradients)
        g   = (sum_i g_i * min(1, C / ||g_i||) + N(0, sigma^2 C^2 I)) / B

    ``||g_i||`` is the norm over all protected parameters together (flat clipping).
    BatchNorm mixes the examples of a batch, so per-example gradients are ill-defined with it:
    the operator refuses models with BatchNorm (use ``model.norm: group``).
    """

    def __init__(self, cfg: ProtectConfig) -> None:
        self.clip = cfg.clip_norm
        self.sigma = cfg.strength * cfg.max_noise_multiplier
        if self.clip <= 0:
            raise ConfigError(f"protect.clip_norm = {self.clip} must be > 0")

    def setup(self, ctx: TrainContext) -> None:
        bn = [
            n
            for n, m in ctx.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        if bn:
            raise ConfigError(
                f"operator 'noise' needs per-example gradients, which BatchNorm makes ill-defined "
                f"(found {bn[0]!r}); set model.norm: group (or none)"
            )

    def after_backward(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor) -> None:
        if not ctx.protected:
            return
        per_example = per_example_grads(ctx, x, y)
        names = list(ctx.protected)
        batch = x.shape[0]
        squares = torch.stack([per_example[n].flatten(1).pow(2).sum(1) for n in names])  # (P, B)
        norms = squares.sum(0).sqrt()  # (B,) norm over all protected parameters together
        factor = (self.clip / (norms + 1e-6)).clamp(max=1.0)  # (B,)
        for n in names:
            g = torch.einsum("b,b...->...", factor, per_example[n])
            if self.sigma > 0:
                g = g + torch.randn(
                    g.shape, generator=ctx.generator, device=g.device, dtype=g.dtype
                ) * (self.sigma * self.clip)
            ctx.protected[n].grad = (g / batch).to(ctx.protected[n].dtype)


def per_example_grads(
    ctx: TrainContext, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-example gradients of the loss w.r.t. the protected parameters.

    Returns ``name -> (B, *param.shape)``. The loss is the same cross-entropy the loop uses.
    """
    model = ctx.model
    protected = {n: p.detach() for n, p in ctx.protected.items()}
    constants = {n: p.detach() for n, p in ctx.free.items()}
    constants.update(dict(model.named_buffers()))
    smoothing = ctx.label_smoothing

    def loss_one(
        params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor
    ) -> torch.Tensor:
        out = functional_call(model, {**params, **constants}, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0), label_smoothing=smoothing)

    result: dict[str, torch.Tensor] = vmap(
        grad(loss_one), in_dims=(None, 0, 0), randomness="different"
    )(protected, x, y)
    return result


OPERATORS.register("noise")(NoiseOperator)


# ---------------------------------------------------------------------------------------- damp
class DampOperator(TrainingHooks):
    """Scale the protected groups' learning rate by (1 - s) once warm-up is over."""

    def __init__(self, cfg: ProtectConfig) -> None:
        self.scale = 1.0 - cfg.strength

    def lr_scale(self, ctx: TrainContext, *, protected: bool) -> float:
        return self.scale if protected and ctx.epoch > ctx.cfg.warmup_epochs else 1.0


OPERATORS.register("damp")(DampOperator)


# -------------------------------------------------------------------------------------- anchor
class AnchorOperator(TrainingHooks):
    """L2 pull of the protected parameters toward their warm-up values.

    penalty = s * max_anchor * sum_p ||theta_p - theta_p^warmup||^2 / n_protected_values, so the
    coefficient means the same for a narrow and a wide model.
    """

    def __init__(self, cfg: ProtectConfig) -> None:
        self.coef = cfg.strength * cfg.max_anchor

    def penalty(self, ctx: TrainContext) -> torch.Tensor | None:
        if not ctx.after_warmup() or not ctx.protected or ctx.warmup is None:
            return None
        warmup = ctx.warmup
        total = torch.stack([(p - warmup[n]).pow(2).sum() for n, p in ctx.protected.items()])
        count = sum(p.numel() for p in ctx.protected.values())
        return total.sum() * (self.coef / count)


OPERATORS.register("anchor")(AnchorOperator)


# -------------------------------------------------------------------------------------- rewind
class RewindOperator(TrainingHooks):
    """After training, reset the protected groups to an earlier epoch's weights and fine-tune.

    The rewind target is epoch ``warmup + round((1 - s) * (epochs - warmup))``: s = 1 goes back to
    the warm-up weights, small s only a little way. The free groups are then fine-tuned for
    ``finetune_epochs`` epochs with the protected ones frozen, at a constant learning rate of a
    tenth of ``train.lr`` (the cosine schedule has reached ~0 by then) with fresh momentum.
    """

    def __init__(self, cfg: ProtectConfig) -> None:
        self.strength = cfg.strength
        self.finetune_epochs = cfg.finetune_epochs
        self.target_epoch = -1
        self.saved: dict[str, torch.Tensor] | None = None

    def setup(self, ctx: TrainContext) -> None:
        warm, total = ctx.cfg.warmup_epochs, ctx.cfg.epochs
        self.target_epoch = warm + round((1.0 - self.strength) * max(0, total - warm))
        if self.target_epoch <= warm:
            self.target_epoch = warm  # the warm-up snapshot itself

    def end_epoch(self, ctx: TrainContext) -> bool:
        if ctx.epoch == self.target_epoch:
            self.saved = snapshot(ctx.protected)
        return False

    def finish(self, ctx: TrainContext) -> None:
        source = self.saved if self.saved is not None else ctx.warmup
        if source is None or not ctx.protected:
            return
        with torch.no_grad():
            for n, p in ctx.protected.items():
                p.copy_(source[n])
        logger.info(
            "rewind: protected groups %s reset to epoch %d; fine-tuning the rest for %d epochs",
            ",".join(ctx.protected_groups),
            self.target_epoch,
            self.finetune_epochs,
        )
        if self.finetune_epochs <= 0 or ctx.run_epoch is None or not ctx.free:
            return
        for p in ctx.protected.values():
            p.requires_grad_(False)
        ctx.optimizer = torch.optim.SGD(
            list(ctx.free.values()),
            lr=ctx.cfg.lr * 0.1,
            momentum=ctx.cfg.momentum,
            weight_decay=ctx.cfg.weight_decay,
        )
        last = ctx.epoch
        try:
            for i in range(self.finetune_epochs):
                ctx.run_epoch(last + 1 + i)
        finally:
            for p in ctx.protected.values():
                p.requires_grad_(True)


OPERATORS.register("rewind")(RewindOperator)


# ------------------------------------------------------------------------------- feature_noise
class FeatureNoiseOperator(TrainingHooks):
    """Gaussian noise on each protected group's output, in training mode only.

    The noise std is ``s * max_feature_noise * std(output)`` (the batch's own std, detached), so
    strength means the same at every depth. Forward hooks sit on
    :func:`pptp.layers.group_output_modules`; evaluation and attacks see the clean model.
    """

    def __init__(self, cfg: ProtectConfig) -> None:
        self.scale = cfg.strength * cfg.max_feature_noise
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def setup(self, ctx: TrainContext) -> None:
        outputs = group_output_modules(ctx.model)
        gen = ctx.generator

        def add_noise(module: nn.Module, inputs: object, out: torch.Tensor) -> torch.Tensor | None:
            if not module.training or not isinstance(out, torch.Tensor):
                return None
            std = out.detach().float().std() * self.scale
            noise = torch.randn(out.shape, generator=gen, device=out.device, dtype=torch.float32)
            return out + (noise * std).to(out.dtype)

        for g in ctx.protected_groups:
            self.handles.append(outputs[g].register_forward_hook(add_noise))

    def finish(self, ctx: TrainContext) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


OPERATORS.register("feature_noise")(FeatureNoiseOperator)
