"""Per-example gradients of chosen parameters, taken from the ordinary backward pass.

The ``noise`` operator clips each example's gradient of the protected parameters to a norm and
sums the clipped gradients. It needs, per step, each example's gradient norm over the protected
parameters and the weighted sum ``sum_i w_i g_i``; both come from the backward pass the loop runs
anyway, not from a second pass over the model. For every module that owns a chosen parameter, a
forward hook keeps the module's input ``(n, ...)`` and puts a hook on its output tensor, which
receives ``dL/d output`` ``(n, ...)`` during ``loss.backward()``. Only those modules are hooked, so
the cost follows the chosen layers. Per module, one of three :class:`Contribution` forms:

- **convolutions and linear layers** (``groups == 1``) keep the factors of their per-example
  gradient ``g_i = B_i A_i^T``: ``A_i`` the (unfolded) input ``(p, q)``, ``B_i`` the output
  gradient ``(o, q)``, ``q`` the spatial positions (1 for a linear layer on vectors). Where ``q (p +
  o) <= o p`` the norm comes from ``||g_i||^2 = <A_i^T A_i, B_i^T B_i>`` without forming ``g_i``
  (the "ghost norm" of Li et al. 2022, "Large Language Models Can Be Strong Differentially Private
  Learners", used layer by layer as in Bu et al. 2022, "Scalable and Efficient Training of Large
  Convolutional Neural Networks with Differential Privacy"); elsewhere (large maps, few channels)
  ``g_i`` is formed, which is cheaper there. The weighted sum is then one matrix product
  ``sum_i w_i B_i A_i^T``, the cost of an ordinary weight gradient;
- **other layers with an Opacus grad sampler** (GroupNorm, LayerNorm, grouped convolutions, ...):
  Opacus' per-layer function (``opacus.grad_sample``, behind ``GradSampleModule``) forms
  ``(n, *param.shape)`` per parameter;
- **modules without one** (say a block with its own ``layer_scale``): Opacus' ``torch.func``
  fallback on that module alone.

Opacus' conv sampler reads channels_last tensors wrongly (its ``unfold2d`` assumes NCHW strides;
opacus 1.6.0), so conv inputs and output gradients are made contiguous (NCHW) before Opacus' code
sees them. The loop itself keeps channels_last.

A hook on the output tensor (rather than a full backward hook on the module) sees the gradient of
the output as the module returned it, also when a later in-place op (``ReLU(inplace=True)``)
changes that tensor, and leaves the module's forward untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch
from torch import nn

from pptp.errors import ConfigError

#: memory for per-example gradient state per optimisation step: a batch that would hold more is
#: processed in chunks (:func:`chunk_size`). Before the first step the estimate is the chosen
#: parameters' size per example (fp32), an upper bound; after it, the state measured per example.
MEMORY_BUDGET_BYTES = 1024 * 2**20


def chunk_size(per_example_bytes: float, batch: int, *, budget: int) -> int:
    """Examples per chunk so that ``chunk * per_example_bytes`` stays within ``budget`` (>= 1)."""
    return max(1, min(batch, int(budget // max(per_example_bytes, 1.0))))


class Contribution(Protocol):
    """One module's share of the per-example gradients of a forward/backward pass over ``n``
    examples (rows: the gradient of the terms of the loss that example i contributes)."""

    def sq_norms(self) -> torch.Tensor:
        """``(n,)``: each example's squared gradient norm over this module's chosen parameters."""
        ...

    def weighted_sum(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """``name -> sum_i weights[i] * g_i`` (the parameter's shape) for ``weights: (n,)``."""
        ...

    def per_example(self) -> dict[str, torch.Tensor]:
        """``name -> (n, *param.shape)`` (formed on request: for tests and small layers)."""
        ...

    def nbytes(self) -> int:
        """Bytes this contribution holds."""
        ...


@dataclass
class Formed:
    """Per-example gradients formed in full: ``name -> (n, *param.shape)``."""

    grads: dict[str, torch.Tensor]

    def sq_norms(self) -> torch.Tensor:
        return sum(  # type: ignore[return-value]
            torch.linalg.vector_norm(g.flatten(1).float(), dim=1).square()
            for g in self.grads.values()
        )

    def weighted_sum(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            n: (weights @ g.flatten(1).float()).view(g.shape[1:]) for n, g in self.grads.items()
        }

    def per_example(self) -> dict[str, torch.Tensor]:
        return dict(self.grads)

    def nbytes(self) -> int:
        return sum(g.numel() * g.element_size() for g in self.grads.values())


@dataclass
class Factored:
    """A conv or linear layer's per-example gradients kept as factors: ``g_i = b[i] @ a[i].T``
    for the weight (``a: (n, p, q)`` inputs, ``b: (n, o, q)`` output gradients) and
    ``b[i].sum(-1)`` for the bias; the weight's norms come from the Gram matrices ``a^T a`` and
    ``b^T b`` (``(n, q, q)``) without forming ``g_i``."""

    weight: str | None
    bias: str | None
    shape: torch.Size
    a: torch.Tensor
    b: torch.Tensor

    def sq_norms(self) -> torch.Tensor:
        total = torch.zeros(self.b.shape[0], device=self.b.device)
        if self.weight is not None:  # ||B A^T||^2 = <A^T A, B^T B>
            aa = torch.bmm(self.a.transpose(1, 2), self.a)  # (n, q, q)
            bb = torch.bmm(self.b.transpose(1, 2), self.b)  # (n, q, q)
            total = total + (aa * bb).sum((1, 2))
        if self.bias is not None:
            total = total + self.b.sum(-1).square().sum(1)
        return total

    def weighted_sum(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        wb = self.b * weights[:, None, None]  # (n, o, q)
        if self.weight is not None:  # one (o, n q) @ (n q, p) product
            o, p = self.b.shape[1], self.a.shape[1]
            g = wb.permute(1, 0, 2).reshape(o, -1) @ self.a.permute(0, 2, 1).reshape(-1, p)
            out[self.weight] = g.view(self.shape)
        if self.bias is not None:
            out[self.bias] = wb.sum((0, 2))
        return out

    def per_example(self) -> dict[str, torch.Tensor]:
        n = self.b.shape[0]
        out: dict[str, torch.Tensor] = {}
        if self.weight is not None:
            out[self.weight] = torch.bmm(self.b, self.a.transpose(1, 2)).view(n, *self.shape)
        if self.bias is not None:
            out[self.bias] = self.b.sum(-1)
        return out

    def nbytes(self) -> int:
        return self.a.numel() * self.a.element_size() + self.b.numel() * self.b.element_size()


def refuse_batchnorm(model: nn.Module, who: str) -> None:
    """BatchNorm mixes the examples of a batch, so per-example gradients are ill-defined with it
    anywhere in the model (downstream BatchNorm makes the gradient of example i depend on the
    others): one clear error naming the first BatchNorm found."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"{who} needs per-example gradients, which BatchNorm makes ill-defined (found "
                f"{name!r}); set model.norm: group (or none)"
            )


class PerExampleGrads:
    """Hooks that collect per-example gradient information about ``params`` (``name ->
    parameter`` of ``model``) during every backward pass in training mode, until :meth:`remove`.

    After ``loss.backward()``, :meth:`pop` returns the :class:`Contribution` of every hooked
    module: rows are the gradients of the terms of ``loss`` that example i of the forward pass
    contributes (with the loop's loss ``sum_i l_i / B`` that is ``grad l_i / B``). A chosen
    parameter that the forward did not use has none. :attr:`bytes_per_example` is the largest
    state per example seen so far (``None`` before the first pop).
    """

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter]) -> None:
        from opacus.grad_sample import GradSampleModule  # 1 s import, only needed here
        from opacus.grad_sample.functorch import ft_compute_per_sample_gradient, prepare_layer

        self._samplers: dict[type, Any] = dict(GradSampleModule.GRAD_SAMPLERS)
        self._fallback = ft_compute_per_sample_gradient
        self._names = {id(p): n for n, p in params.items()}
        self._parts: list[Contribution] = []
        self._inputs: dict[nn.Module, list[list[torch.Tensor]]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._functional: list[nn.Module] = []  # modules that the torch.func fallback computes
        self.bytes_per_example: float | None = None
        for mname, module in _owners(model, set(params), self._samplers):
            if type(module) not in self._samplers:
                _check_fallback(mname, module)
                prepare_layer(module)  # before the hook: it copies the module, hooks included
                self._functional.append(module)
            self._handles.append(module.register_forward_hook(self._forward))

    def _forward(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        if not isinstance(output, torch.Tensor):
            raise ConfigError(
                f"per-example gradients need {type(module).__name__} to return one tensor, not "
                f"{type(output).__name__}; protect other groups"
            )
        if not output.requires_grad:
            return
        self._inputs.setdefault(module, []).append(
            [t.detach() for t in inputs if isinstance(t, torch.Tensor)]
        )
        output.register_hook(partial(self._backward, module))

    def _backward(self, module: nn.Module, grad_output: torch.Tensor) -> None:
        inputs = self._inputs[module].pop()  # calls of a shared module unwind last-first
        part = _factored(module, inputs[0], grad_output.detach(), self._names)
        if part is not None:
            self._parts.append(part)
            return
        sampler = self._samplers.get(type(module), self._fallback)
        if isinstance(module, nn.modules.conv._ConvNd):
            # Opacus' unfold2d (conv sampler) assumes NCHW strides: a channels_last input gives
            # wrong per-example gradients (zeros) in opacus 1.6.0, so hand it contiguous tensors
            inputs = [t.contiguous() for t in inputs]
            grad_output = grad_output.contiguous()
        grads = sampler(module, inputs, grad_output)
        chosen = {self._names[id(p)]: g for p, g in grads.items() if id(p) in self._names}
        if chosen:
            self._parts.append(Formed(chosen))

    def pop(self) -> list[Contribution]:
        """The contributions of the backward pass(es) since the previous pop."""
        parts, self._parts = self._parts, []
        self._inputs.clear()
        if parts:
            n = _rows(parts[0])
            held = sum(p.nbytes() for p in parts) / max(n, 1)
            self.bytes_per_example = max(self.bytes_per_example or 0.0, held)
        return parts

    def remove(self) -> None:
        """Remove every hook; the model is as it was before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._functional:  # Opacus caches the fallback's function on the module
            if hasattr(module, "ft_compute_sample_grad"):
                delattr(module, "ft_compute_sample_grad")
        self._functional.clear()
        self._parts.clear()
        self._inputs.clear()


def per_example(parts: list[Contribution]) -> dict[str, torch.Tensor]:
    """``name -> (n, *param.shape)`` from contributions (summed where a module ran twice)."""
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        for name, g in part.per_example().items():
            out[name] = out[name] + g if name in out else g
    return out


def _rows(part: Contribution) -> int:
    if isinstance(part, Factored):
        return int(part.b.shape[0])
    assert isinstance(part, Formed)
    return int(next(iter(part.grads.values())).shape[0])


def _factored(
    module: nn.Module, x: torch.Tensor, grad_output: torch.Tensor, names: Mapping[int, str]
) -> Contribution | None:
    """A conv or linear layer's contribution from its factors (None for other layers): kept as
    factors where their Gram matrices are the cheaper way to the norms, else formed at once."""
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    w = names.get(id(weight)) if weight is not None and weight.requires_grad else None
    b = names.get(id(bias)) if bias is not None and bias.requires_grad else None
    if w is None and b is None:
        return None
    n = x.shape[0]
    if type(module) is nn.Linear:
        a = x.reshape(n, -1, x.shape[-1]).transpose(1, 2)  # (n, p, q)
        g = grad_output.reshape(n, -1, grad_output.shape[-1]).transpose(1, 2)  # (n, o, q)
    elif type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros":
        from opacus.utils.tensor_utils import unfold2d

        # Opacus' strided view is ~10x faster than torch's im2col (F.unfold) on the CPU, and
        # correct for NCHW (contiguous) tensors only
        a = unfold2d(
            x.contiguous(),
            kernel_size=module.kernel_size,
            padding=module.padding,
            stride=module.stride,
            dilation=module.dilation,
        )  # (n, c_in k k, positions)
        g = grad_output.reshape(n, grad_output.shape[1], -1)  # (n, c_out, positions)
    else:
        return None
    a, g = a.float(), g.float()
    o, p, q = g.shape[1], a.shape[1], a.shape[2]
    assert weight is not None
    factors = Factored(w, b, weight.shape, a, g)
    if q * (p + o) <= o * p:  # Gram matrices (n, q, q) cost less than forming (n, o, p)
        return factors
    return Formed(factors.per_example())


def _owners(
    model: nn.Module, names: set[str], samplers: Mapping[type, Any]
) -> list[tuple[str, nn.Module]]:
    """The modules to hook: each owns a chosen parameter directly (``recurse=False``). A module
    without a grad sampler is computed whole by the ``torch.func`` fallback, so nothing inside it
    is hooked separately (Opacus' own rule)."""
    owners: list[tuple[str, nn.Module]] = []
    whole: list[str] = []
    for mname, module in model.named_modules():
        if any(mname.startswith(w + ".") or w == "" for w in whole):
            continue
        own = {f"{mname}.{p}" if mname else p for p, _ in module.named_parameters(recurse=False)}
        if not own & names:
            continue
        owners.append((mname, module))
        if type(module) not in samplers:
            whole.append(mname)
    return owners


def _check_fallback(mname: str, module: nn.Module) -> None:
    if any(True for _ in module.buffers()):
        raise ConfigError(
            f"per-example gradients of {mname or 'the model'!r} ({type(module).__name__}): Opacus "
            "has no grad sampler for it and its torch.func fallback cannot handle modules with "
            "buffers; protect other groups"
        )
