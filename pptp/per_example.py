"""Per-example gradients of chosen parameters, taken from the ordinary backward pass.

The ``noise`` operator clips each example's gradient of the protected parameters. The gradients
come from the backward pass the loop runs anyway, not from a second pass over the model: for every
module that owns a chosen parameter, a forward hook keeps the module's input ``(n, ...)`` and puts
a hook on its output tensor, which receives ``dL/d output`` ``(n, ...)`` during ``loss.backward()``;
Opacus' per-layer grad sampler for the module's type (``opacus.grad_sample``: the functions behind
``GradSampleModule``, e.g. an ``einsum`` of unfolded inputs and output gradients for a conv) turns
the pair into ``(n, *param.shape)`` per parameter. Modules without a registered sampler (say a
block with its own ``layer_scale``) go through Opacus' ``torch.func`` fallback on that module
alone. Only modules owning chosen parameters are hooked, so the cost follows the chosen layers.

Opacus' conv sampler reads channels_last tensors wrongly (its ``unfold2d`` assumes NCHW strides;
opacus 1.6.0), so inputs and output gradients are made contiguous before the sampler sees them;
the loop itself keeps channels_last.

A hook on the output tensor (rather than a full backward hook on the module) sees the gradient of
the output as the module returned it, also when a later in-place op (``ReLU(inplace=True)``)
changes that tensor, and leaves the module's forward untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from pptp.errors import ConfigError

#: per-example gradient memory per optimisation step: a batch whose per-example gradients of the
#: chosen parameters (fp32) would take more is processed in chunks (see :func:`chunk_size`).
#: 256 MiB keeps a ResNet-18 suffix split (layer4 + head, 8.4M parameters) at 7 examples a chunk.
MEMORY_BUDGET_BYTES = 256 * 2**20


def chunk_size(params: Mapping[str, torch.Tensor], batch: int, *, budget: int) -> int:
    """Examples per chunk so that ``chunk * sum(numel) * 4`` bytes stay within ``budget`` (>= 1)."""
    per_example = 4 * sum(p.numel() for p in params.values())
    return max(1, min(batch, budget // max(per_example, 1)))


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
    """Hooks that collect per-example gradients of ``params`` (``name -> parameter`` of
    ``model``) during every backward pass in training mode, until :meth:`remove`.

    After ``loss.backward()``, :meth:`pop` returns ``name -> (n, *param.shape)``: row i is the
    gradient of the terms of ``loss`` that example i of the forward pass contributes (with the
    loop's loss ``sum_i l_i / B`` that is ``grad l_i / B``). A chosen parameter that the forward
    did not use is absent.
    """

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter]) -> None:
        from opacus.grad_sample import GradSampleModule  # 1 s import, only needed here
        from opacus.grad_sample.functorch import ft_compute_per_sample_gradient, prepare_layer

        self._samplers: dict[type, Any] = dict(GradSampleModule.GRAD_SAMPLERS)
        self._fallback = ft_compute_per_sample_gradient
        self._names = {id(p): n for n, p in params.items()}
        self._grads: dict[str, torch.Tensor] = {}
        self._inputs: dict[nn.Module, list[list[torch.Tensor]]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._functional: list[nn.Module] = []  # modules that the torch.func fallback computes
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
        sampler = self._samplers.get(type(module), self._fallback)
        # Opacus' unfold2d (conv sampler) assumes NCHW strides: a channels_last input gives
        # wrong per-example gradients (zeros) in opacus 1.6.0, so hand it contiguous tensors
        inputs = [t.contiguous() for t in inputs]
        for param, g in sampler(module, inputs, grad_output.contiguous()).items():
            name = self._names.get(id(param))
            if name is None:
                continue  # a parameter of the module that was not chosen
            self._grads[name] = self._grads[name] + g if name in self._grads else g

    def pop(self) -> dict[str, torch.Tensor]:
        """The per-example gradients of the last backward pass(es) since the previous pop."""
        grads, self._grads = self._grads, {}
        self._inputs.clear()
        return grads

    def remove(self) -> None:
        """Remove every hook; the model is as it was before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._functional:  # Opacus caches the fallback's function on the module
            if hasattr(module, "ft_compute_sample_grad"):
                delattr(module, "ft_compute_sample_grad")
        self._functional.clear()
        self._grads.clear()
        self._inputs.clear()


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
