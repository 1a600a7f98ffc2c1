"""PPTP protection operators: how the protected layer groups are held back
(docs/design.md#protection-operators).

The paper (Fang & Kim, arXiv 2602.02296) states the principle: protect the components that carry
membership-privacy risk, leave those that carry generalization free. It does not publish operators
we could copy, so every operator here is *this project's interpretation* of "protect".

Each operator takes one strength ``s`` in [0, 1] and acts only on the protected parameters (their
gradients, learning rate, values, or the outputs of their groups). ``s = 0`` is plain training bit
for bit under the same seed, through each operator's own code (every operator is built at every
strength; its arithmetic makes 0 the identity). Operators that draw random numbers use
``ctx.generator``, never the global RNG or the data-order generator. What each one needs from the
loop is declared on its class (:class:`~pptp.hooks.Needs`), so :mod:`pptp.compose` can check it
against a defense before anything trains.

=================  ==========================================================================
``noise``          per-example clipping + Gaussian noise on the protected gradients only
                   (DP-SGD restricted to groups); sigma = s * ``max_noise_multiplier``. Clipping
                   applies at every s > 0: the one operator with a jump at s = 0.
``damp``           after warm-up, the protected groups' learning rate is scaled by (1 - s);
                   s = 1 freezes them at their warm-up weights.
``anchor``         after warm-up, the gradient of s * ``max_anchor`` * mean((theta -
                   theta_warmup)^2) over the protected parameters is added at step time: an L2
                   pull toward the warm-up weights.
``rewind``         after training, the protected groups become (1 - s) * theta_end + s *
                   theta_warmup and are frozen while the free groups fine-tune for
                   ``finetune_epochs`` at a constant lr of s * 0.1 * ``train.lr``.
``feature_noise``  in training mode only, adds Gaussian noise of std s * ``max_feature_noise`` *
                   std(output) to each protected group's output (the noise reaches the free
                   layers downstream through the forward pass, as it must).
=================  ==========================================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import nn

from pptp import per_example
from pptp.config import ProtectConfig
from pptp.errors import ConfigError
from pptp.hooks import FineTune, Mechanism, Needs, TrainContext
from pptp.layers import group_output_modules
from pptp.registry import Registry

logger = logging.getLogger(__name__)


class Operator(Mechanism):
    """A protection operator, built from a :class:`ProtectConfig` at any strength in [0, 1]."""

    def __init__(self, cfg: ProtectConfig) -> None:
        self.strength = cfg.strength


#: operator name -> its class (``needs`` on the class, built with a :class:`ProtectConfig`)
OPERATORS: Registry[type[Operator]] = Registry("operator")


def build_operator(cfg: ProtectConfig) -> Operator:
    """The operator ``cfg.operator`` at ``cfg.strength`` (also at strength 0: its own code)."""
    factory = OPERATORS[cfg.operator]
    if not 0.0 <= cfg.strength <= 1.0 or math.isnan(cfg.strength):
        raise ConfigError(
            f"protect.strength = {cfg.strength} is outside [0, 1]; 0 is plain training, 1 the "
            "operator's full scale"
        )
    return factory(cfg)


@OPERATORS.register("none")
class NoOperator(Operator):
    """Plain training."""


# --------------------------------------------------------------------------------------- noise
@OPERATORS.register("noise")
class NoiseOperator(Operator):
    """DP-SGD on the protected parameters only.

    Per step, with B examples, clip norm C and sigma = s * max_noise_multiplier::

        g_i = grad of loss(x_i, y_i) w.r.t. the protected params       (B per-example gradients)
        g   = (sum_i g_i * min(1, C / ||g_i||) + N(0, sigma^2 C^2 I)) / B

    ``||g_i||`` is the norm over all protected parameters together (flat clipping); the loss is
    the loop's own (cross-entropy, or the defense's, e.g. label smoothing). The free parameters
    keep their ordinary batch gradient.

    The norms and the clipped sum come from the ordinary backward pass, for the protected layers
    only (:class:`pptp.per_example.PerExampleGrads`: factors of conv and linear gradients with
    ghost norms where cheaper, Opacus' per-layer grad samplers for the rest), so the operator
    costs what its protected layers cost. A batch whose per-example state would exceed
    :data:`pptp.per_example.MEMORY_BUDGET_BYTES` runs as several forward/backward chunks whose
    clipped sums and free gradients accumulate to the batch's.

    Strength: s = 0 is plain training (no clipping, no noise). At every s > 0 the per-example
    gradients are clipped to C and only sigma scales with s, so the axis jumps at 0: training at
    s = 1e-6 equals training with clipping alone, not plain training. Clipping is what bounds each
    example's influence, which is the point of DP-SGD; scaling C with s would not fade it in
    either (a large C clips nothing, a small one everything).

    BatchNorm mixes the examples of a batch, so per-example gradients are ill-defined with it:
    the loop refuses models with BatchNorm (use ``model.norm: group``).
    """

    needs = Needs(per_example_grads=True, writes_grads=True)

    def __init__(self, cfg: ProtectConfig) -> None:
        super().__init__(cfg)
        if cfg.clip_norm <= 0:
            raise ConfigError(f"protect.clip_norm = {cfg.clip_norm} must be > 0")
        self.clip = cfg.clip_norm
        self.sigma = cfg.strength * cfg.max_noise_multiplier
        self.grads: per_example.PerExampleGrads | None = None
        self.clipped_sum: dict[str, torch.Tensor] = {}

    def attach(self, ctx: TrainContext) -> None:
        if self.strength > 0 and ctx.protected:
            self.grads = per_example.PerExampleGrads(ctx.model, ctx.protected)

    def chunk_size(self, ctx: TrainContext, batch: int) -> int:
        if self.grads is None:
            return batch
        held = self.grads.bytes_per_example  # measured; before the first step an upper bound
        if held is None:
            held = 4 * sum(p.numel() for p in ctx.protected.values())
        return per_example.chunk_size(held, batch, budget=per_example.MEMORY_BUDGET_BYTES)

    def after_backward(self, ctx: TrainContext) -> None:
        if self.grads is None:
            return
        parts = self.grads.pop()  # per module; rows are grad(l_i) / B (the loss is a batch mean)
        if not parts:
            return
        batch = ctx.batch_size
        norms = torch.stack([p.sq_norms() for p in parts]).sum(0).sqrt() * batch  # (n,) ||g_i||
        weights = (self.clip / (norms + 1e-6)).clamp(max=1.0) * batch  # (n,) clip, undo 1/B
        for part in parts:  # sum_i g_i min(1, C / ||g_i||)
            for n, clipped in part.weighted_sum(weights).items():
                total = self.clipped_sum.get(n)
                self.clipped_sum[n] = clipped if total is None else total + clipped

    def before_step(self, ctx: TrainContext) -> None:
        if self.grads is None:
            return
        for n, p in ctx.protected.items():
            if not p.requires_grad and n not in self.grads.taken:
                continue  # frozen by someone else
            g = self.clipped_sum.pop(n, None)
            if g is None:  # unused in the forward pass: only noise
                g = torch.zeros_like(p, dtype=torch.float32)
            if self.sigma > 0:
                noise = torch.randn(g.shape, generator=ctx.generator, device=g.device)
                g = g + noise * (self.sigma * self.clip)
            p.grad = (g / ctx.batch_size).to(p.dtype)

    def detach(self, ctx: TrainContext) -> None:
        if self.grads is not None:
            self.grads.remove()
            self.grads = None


# ---------------------------------------------------------------------------------------- damp
@OPERATORS.register("damp")
class DampOperator(Operator):
    """Scale the protected groups' learning rate by (1 - s) once warm-up is over (s = 0: 1.0)."""

    needs = Needs(scales_lr=True)

    def lr_scale(self, ctx: TrainContext, *, protected: bool) -> float:
        return 1.0 - self.strength if protected and ctx.epoch > ctx.cfg.warmup_epochs else 1.0


# -------------------------------------------------------------------------------------- anchor
@OPERATORS.register("anchor")
class AnchorOperator(Operator):
    """L2 pull of the protected parameters toward their warm-up values, after warm-up.

    The pull is the gradient of ``s * max_anchor * sum_p ||theta_p - theta_p^warmup||^2 /
    n_protected_values`` (so the coefficient means the same for a narrow and a wide model),
    added to ``.grad`` at step time. It depends on no example, so under DP-SGD it is added after
    the privatisation (clipping it with the data gradient would lose it, and it costs no
    privacy). At s = 0 the term is exactly 0.
    """

    needs = Needs(grad_terms=True)

    def __init__(self, cfg: ProtectConfig) -> None:
        super().__init__(cfg)
        self.coef = cfg.strength * cfg.max_anchor

    def grad_terms(self, ctx: TrainContext) -> Mapping[str, torch.Tensor]:
        if not ctx.after_warmup() or not ctx.protected or ctx.warmup is None:
            return {}
        count = sum(p.numel() for p in ctx.protected.values())
        scale = 2.0 * self.coef / count
        warmup = ctx.warmup
        return {n: (p.detach() - warmup[n]) * scale for n, p in ctx.protected.items()}


# -------------------------------------------------------------------------------------- rewind
@OPERATORS.register("rewind")
class RewindOperator(Operator):
    """After the training phase, move the protected groups back toward their warm-up weights and
    fine-tune the free groups around them.

    The protected groups become ``(1 - s) * theta_end + s * theta_warmup``: ``theta_end`` the
    weights the training phase ended with (after a defense's restore, e.g. early stopping's best
    epoch), ``theta_warmup`` the end-of-warm-up snapshot. Then they are frozen while the free
    groups fine-tune for ``finetune_epochs`` epochs at a constant learning rate of
    ``s * 0.1 * train.lr`` (the cosine schedule has reached ~0 by then) with fresh momentum. At
    s = 0 nothing moves and there is no fine-tune phase; everything fades in with s.

    Reading "how far back" as a straight line in weight space is this project's interpretation:
    Goodfellow, Vinyals & Saxe (2015, "Qualitatively characterizing neural network optimization
    problems") found the loss to fall monotonically along the line between a run's early and
    late weights, so points on it are the same run's weights "further back" without storing
    every epoch.
    """

    needs = Needs(restores_weights=True, fine_tune=True)

    def __init__(self, cfg: ProtectConfig) -> None:
        super().__init__(cfg)
        if cfg.finetune_epochs < 0:
            raise ConfigError(f"protect.finetune_epochs = {cfg.finetune_epochs} must be >= 0")
        self.finetune_epochs = cfg.finetune_epochs

    def end_training(self, ctx: TrainContext) -> Mapping[str, torch.Tensor] | None:
        if ctx.warmup is None or not ctx.protected:
            return None
        s = self.strength
        # exact at both ends: 1 * a + 0 * b == a and 0 * a + 1 * b == b
        return {n: p.detach() * (1.0 - s) + ctx.warmup[n] * s for n, p in ctx.protected.items()}

    def fine_tune(self, ctx: TrainContext) -> FineTune | None:
        if self.strength == 0 or self.finetune_epochs == 0 or not ctx.protected or not ctx.free:
            return None
        logger.info(
            "rewind: protected groups %s moved %.2f of the way to their warm-up weights; "
            "fine-tuning the rest for %d epochs",
            ",".join(ctx.protected_groups),
            self.strength,
            self.finetune_epochs,
        )
        return FineTune(
            epochs=self.finetune_epochs,
            lr=self.strength * 0.1 * ctx.cfg.lr,
            frozen=tuple(ctx.protected),
        )


# ------------------------------------------------------------------------------- feature_noise
@OPERATORS.register("feature_noise")
class FeatureNoiseOperator(Operator):
    """Gaussian noise on each protected group's output, in training mode only.

    The noise std is ``s * max_feature_noise * std(output)`` (the batch's own std, detached), so
    strength means the same at every depth; at s = 0 the noise is exactly 0. Forward hooks sit on
    :func:`pptp.layers.group_output_modules`; evaluation and attacks see the clean model.
    """

    needs = Needs(forward_hooks=True)

    def __init__(self, cfg: ProtectConfig) -> None:
        super().__init__(cfg)
        self.scale = cfg.strength * cfg.max_feature_noise
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, ctx: TrainContext) -> None:
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

    def detach(self, ctx: TrainContext) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
