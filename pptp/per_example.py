"""Per-example gradients of chosen parameters, taken from the ordinary backward pass.

The ``noise`` operator clips each example's gradient of the protected parameters to a norm and
sums the clipped gradients. It needs, per step, each example's gradient norm over the protected
parameters and the weighted sum ``sum_i w_i g_i``; both come from the backward pass the loop runs
anyway, not from a second pass over the model. For every module that owns a chosen parameter, a
forward hook keeps the module's input ``(n, ...)`` and puts a hook on its output tensor, which
receives ``dL/d output`` ``(n, ...)`` during ``loss.backward()``. Only those modules are hooked, so
the cost follows the chosen layers. Per module, one of these :class:`Contribution` forms:

- **convolutions and linear layers** (``groups == 1``) keep the factors of their per-example
  gradient ``g_i = B_i^T A_i``: ``A_i`` the (unfolded) input ``(q, p)``, ``B_i`` the output
  gradient ``(q, o)``, ``q`` the spatial positions (1 for a linear layer on vectors). Where ``q (p +
  o) <= o p`` the norm comes from ``||g_i||^2 = <A_i A_i^T, B_i B_i^T>`` without forming ``g_i``
  (the "ghost norm" of Li et al. 2022, "Large Language Models Can Be Strong Differentially Private
  Learners", used layer by layer as in Bu et al. 2022, "Scalable and Efficient Training of Large
  Convolutional Neural Networks with Differential Privacy"); elsewhere (large maps, few channels)
  ``g_i`` is formed, which is cheaper there. The weighted sum is then one matrix product
  ``sum_i w_i B_i^T A_i``, the cost of an ordinary weight gradient, which autograd therefore no
  longer computes for these layers (their parameters stop requiring a gradient while hooked;
  an input that requires none is given one, so the backward pass still reaches them);
- **GroupNorm**: the normalised input times the output gradient, summed over positions (what
  Opacus' sampler computes);
- **other layers with an Opacus grad sampler** (LayerNorm, grouped convolutions, ...):
  Opacus' per-layer function (``opacus.grad_sample``, behind ``GradSampleModule``) forms
  ``(n, *param.shape)`` per parameter;
- **modules without one** (say a block with its own ``layer_scale``): Opacus' ``torch.func``
  fallback on that module alone.

Opacus' conv sampler reads channels_last tensors wrongly (its ``unfold2d`` assumes NCHW strides;
opacus 1.6.0), so conv inputs and output gradients are made contiguous (NCHW) before Opacus' code
sees them; the factored path unfolds through the tensor's own strides. The loop itself keeps
channels_last.

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
    """A conv or linear layer's per-example gradients kept as factors, positions first:
    ``a: (n, q, p)`` inputs (unfolded), ``b: (n, q, o)`` output gradients; the weight's gradient
    is ``g_i = b[i].T @ a[i]`` ``(o, p)``, the bias's ``b[i].sum(0)``. The weight's norms come
    from the Gram matrices ``a a^T`` and ``b b^T`` (``(n, q, q)``) without forming ``g_i``."""

    weight: str | None
    bias: str | None
    shape: torch.Size
    a: torch.Tensor
    b: torch.Tensor
    #: a conv's patches ordered (k_h, k_w, c_in), as a channels_last input lies in memory
    hwc: bool = False

    def _as_weight(self, g: torch.Tensor) -> torch.Tensor:
        """``(..., o, p)`` to ``(..., *weight.shape)``."""
        lead = g.shape[:-2]
        if not self.hwc:
            return g.reshape(*lead, *self.shape)
        o, c, kh, kw = self.shape
        return g.reshape(*lead, o, kh, kw, c).movedim(-1, -3)

    def sq_norms(self) -> torch.Tensor:
        total = torch.zeros(self.b.shape[0], device=self.b.device)
        if self.weight is not None:  # ||b^T a||^2 = <a a^T, b b^T>
            aa = torch.bmm(self.a, self.a.transpose(1, 2))  # (n, q, q)
            bb = torch.bmm(self.b, self.b.transpose(1, 2))  # (n, q, q)
            total = total + (aa * bb).sum((1, 2))
        if self.bias is not None:
            total = total + self.b.sum(1).square().sum(1)
        return total

    def weighted_sum(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        wb = self.b * weights[:, None, None]  # (n, q, o)
        if self.weight is not None:  # one (o, n q) @ (n q, p) product
            o, p = self.b.shape[2], self.a.shape[2]
            g = wb.reshape(-1, o).T @ self.a.reshape(-1, p)
            out[self.weight] = self._as_weight(g)
        if self.bias is not None:
            out[self.bias] = wb.sum((0, 1))
        return out

    def per_example(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.weight is not None:
            out[self.weight] = self._as_weight(torch.bmm(self.b.transpose(1, 2), self.a))
        if self.bias is not None:
            out[self.bias] = self.b.sum(1)
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
        #: chosen parameters whose batch gradient autograd no longer computes (see below)
        self.taken: dict[str, nn.Parameter] = {}
        for mname, module in _owners(model, set(params), self._samplers):
            if _factorable(module):
                # the clipped sum comes from the factors, so autograd's own weight gradient of
                # this layer would be wasted: stop it (the backward still flows through the
                # layer's input, made to require a gradient where nothing before it does)
                for p in (getattr(module, "weight", None), getattr(module, "bias", None)):
                    if p is not None and id(p) in self._names and p.requires_grad:
                        self.taken[self._names[id(p)]] = p.requires_grad_(False)
                self._handles.append(module.register_forward_pre_hook(_input_requires_grad))
            elif type(module) not in self._samplers:
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
        if part is None:
            part = _group_norm(module, inputs[0], grad_output.detach(), self._names)
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
        for p in self.taken.values():
            p.requires_grad_(True)
        self.taken.clear()
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
    if not _factorable(module):
        return None
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    w = names.get(id(weight)) if weight is not None else None
    b = names.get(id(bias)) if bias is not None else None
    if w is None and b is None:
        return None
    n = x.shape[0]
    if type(module) is nn.Linear:
        a = x.reshape(n, -1, x.shape[-1])  # (n, q, p)
        g = grad_output.reshape(n, -1, grad_output.shape[-1])  # (n, q, o)
    else:
        assert isinstance(module, nn.Conv2d)
        hwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        a = _unfold(x, module, hwc=hwc)  # (n, q, p)
        g = grad_output.permute(0, 2, 3, 1).reshape(n, -1, grad_output.shape[1])  # (n, q, o)
    a, g = a.float(), g.float()
    q, p, o = a.shape[1], a.shape[2], g.shape[2]
    assert weight is not None
    factors = Factored(w, b, weight.shape, a, g, hwc=type(module) is nn.Conv2d and hwc)
    if q * (p + o) <= o * p:  # Gram matrices (n, q, q) cost less than forming (n, o, p)
        return factors
    return Formed(factors.per_example())


def _group_norm(
    module: nn.Module, x: torch.Tensor, grad_output: torch.Tensor, names: Mapping[int, str]
) -> Formed | None:
    """GroupNorm's per-example gradients (as Opacus' sampler computes them: the normalised input
    times the output gradient, summed over positions), without its einsums (None for others)."""
    if type(module) is not nn.GroupNorm or not module.affine:
        return None
    w, b = names.get(id(module.weight)), names.get(id(module.bias))
    dims = tuple(range(2, x.dim()))  # positions; none for (n, C) features

    def per_position_sum(t: torch.Tensor) -> torch.Tensor:
        return t.sum(dims) if dims else t

    grads: dict[str, torch.Tensor] = {}
    if w is not None:
        normalised = nn.functional.group_norm(x, module.num_groups, eps=module.eps)
        grads[w] = per_position_sum(normalised * grad_output).float()
    if b is not None:
        grads[b] = per_position_sum(grad_output).float()
    return Formed(grads) if grads else None


def _unfold(x: torch.Tensor, conv: nn.Conv2d, *, hwc: bool = False) -> torch.Tensor:
    """The conv's input patches, positions first: ``(n, H_out W_out, p)`` with ``p`` ordered
    like the weight, ``(c_in, k_h, k_w)``, or with ``hwc`` as ``(k_h, k_w, c_in)`` (the order a
    channels_last input lies in memory, so the one copy reads it in order). A strided view of
    the padded input read through its own strides, so any layout gives the right values; torch's
    im2col (``F.unfold``) was ~10x slower on the CPU, and Opacus' ``unfold2d`` assumes NCHW."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ph: tuple[int, int]
    pw: tuple[int, int]
    if isinstance(conv.padding, str):  # "valid" or "same" (stride 1)
        same = conv.padding == "same"
        ph = ((dh * (kh - 1)) // 2, dh * (kh - 1) - (dh * (kh - 1)) // 2) if same else (0, 0)
        pw = ((dw * (kw - 1)) // 2, dw * (kw - 1) - (dw * (kw - 1)) // 2) if same else (0, 0)
    else:
        ph, pw = (conv.padding[0], conv.padding[0]), (conv.padding[1], conv.padding[1])
    padded = nn.functional.pad(x, (*pw, *ph))
    h_out = (h + sum(ph) - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + sum(pw) - dw * (kw - 1) - 1) // sw + 1
    s_n, s_c, s_h, s_w = padded.stride()
    if hwc:
        size = (n, h_out, w_out, kh, kw, c)
        stride = (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c)
    else:
        size = (n, h_out, w_out, c, kh, kw)
        stride = (s_n, s_h * sh, s_w * sw, s_c, s_h * dh, s_w * dw)
    return padded.as_strided(size, stride).reshape(n, h_out * w_out, c * kh * kw)


def _factorable(module: nn.Module) -> bool:
    """Linear layers and ungrouped, zero-padded 2-d convolutions: gradients from factors."""
    if type(module) is nn.Linear:
        return True
    return type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"


def _input_requires_grad(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: in training, a first input that requires no gradient (data, or the
    output of frozen layers) is replaced by a copy that does, so that the backward pass reaches
    the layer's output and its factors."""
    if not module.training or not torch.is_grad_enabled() or not inputs:
        return None
    x = inputs[0]
    if not isinstance(x, torch.Tensor) or x.requires_grad or not x.is_floating_point():
        return None
    return (x.detach().requires_grad_(), *inputs[1:])


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
