"""Where tensors live and how they are laid out: shared by training and queries."""

from __future__ import annotations

import contextlib

import torch

from pptp.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when there is one; an explicit ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device = {name!r} is not a device; use auto, cpu or cuda"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but no CUDA device is visible; use auto or cpu")
    return device


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """Image batches ``(B, C, H, W)`` in channels_last layout (faster convolutions, CPU and GPU)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def autocast(
    device: torch.device, *, enabled: bool = True
) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA; nothing on the CPU, where bf16 was ~4x slower
    (``docs/stack-notes.md#cpu-precision-and-memory-layout``)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
