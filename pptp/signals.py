"""Per-example signals of a trained model on the whole pool: logits, loss, confidence.

Attacks (:mod:`pptp.attacks`) are pure functions of these arrays. The model is queried once per
example and per *query*: the clean image, and optionally its horizontal flip and one-pixel shifts,
as Carlini et al. (2022, §VI-A) query LiRA with augmented copies of each example.

**Queries follow training** (this project's rule): an augmented query only helps an
attack when the model trained on that augmentation, since then members are fitted under it too.
Averaging shifted queries into a model that never saw shifts mixes in signals on which members and
non-members look alike, and hides leakage (on ``spaces/quickstart_memorising.yaml`` it lowered
LiRA/RMIA AUC by 0.04-0.06). :func:`resolve_queries` therefore picks, with
``attack.query_augment: null`` (the default): shifts only if ``train.augment`` and
``train.crop_pad > 0``, the flip only if ``train.augment`` and the dataset allows flips;
``true`` forces the flip (where the dataset allows it) and the shifts, ``false`` the clean query
alone. Target and reference models are always queried with the same resolved queries (the bank's
key carries them).

Signals are computed in IEEE float32 on every device: no bf16 autocast whatever ``train.bf16``
says, and on CUDA no TF32 (cuDNN runs float32 convolutions in TF32 by default). Attack scores
compare a target with references that may have been queried on another device, and bf16's 8-bit
or TF32's 10-bit mantissa would round the logits that LiRA and RMIA compare.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pptp.config import TrialConfig
from pptp.data import dataset_spec
from pptp.device import channels_last
from pptp.registry import Registry

Query = Callable[[torch.Tensor], torch.Tensor]
"""``(B, C, H, W) -> (B, C, H, W)``: one way of presenting a batch to the model."""

QUERIES: Registry[Query] = Registry("query")


def _shift(dx: int, dy: int) -> Query:
    """Translate by (dx, dy) pixels with zero fill (images are normalised, so 0 is the mean)."""

    def shifted(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        h, w = x.shape[-2:]
        out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
            ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
        return out

    return shifted


QUERIES.register("clean")(lambda x: x)
QUERIES.register("flip")(lambda x: x.flip(-1))
QUERIES.register("shift+x")(_shift(1, 0))
QUERIES.register("shift-x")(_shift(-1, 0))
QUERIES.register("shift+y")(_shift(0, 1))

FLIP_QUERIES = ("flip",)
SHIFT_QUERIES = ("shift+x", "shift-x", "shift+y")


def query_names(*, flip: bool, shifts: bool) -> tuple[str, ...]:
    """The query names in their fixed order: ``clean`` first, then the flip, then the shifts."""
    return ("clean", *(FLIP_QUERIES if flip else ()), *(SHIFT_QUERIES if shifts else ()))


def resolve_queries(cfg: TrialConfig) -> tuple[str, ...]:
    """The queries a trial's target and its references are asked, from the config alone.

    ``attack.query_augment``: ``None`` follows training (shifts iff ``train.augment`` and
    ``train.crop_pad > 0``; the flip iff ``train.augment`` and the dataset allows flips),
    ``True`` forces every augmented query the dataset allows, ``False`` the clean query only.
    """
    spec = dataset_spec(cfg.data)
    dataset_flips, crops = spec.flip, not spec.table  # a table is never cropped nor flipped
    forced = cfg.attack.query_augment
    if forced is None:
        augment = cfg.train.augment
        return query_names(
            flip=augment and dataset_flips, shifts=augment and crops and cfg.train.crop_pad > 0
        )
    return query_names(flip=forced and dataset_flips, shifts=forced and crops)


@dataclass(frozen=True)
class Signals:
    """A model's outputs on every pool example.

    ``logits: (n_examples, n_queries, n_classes)`` float32, query 0 the clean one;
    ``labels: (n_examples,)`` int64.
    """

    logits: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.logits.ndim != 3 or self.logits.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"logits {self.logits.shape} must be (n_examples, n_queries, n_classes) with "
                f"n_examples = len(labels) = {self.labels.shape[0]}"
            )

    @property
    def loss(self) -> np.ndarray:
        """Cross-entropy of the clean query, ``(n_examples,)``."""
        z = self.logits[:, 0].astype(np.float64)
        lse = np.logaddexp.reduce(z, axis=1)
        return lse - z[np.arange(len(self.labels)), self.labels]

    @property
    def confidence(self) -> np.ndarray:
        """Softmax probability of the true label on the clean query, ``(n_examples,)``."""
        return np.exp(-self.loss)


@torch.no_grad()
def compute_signals(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    queries: Sequence[str] = ("clean",),
    batch_size: int = 1024,
) -> Signals:
    """Query ``model`` (eval mode, no gradients, float32) on ``x: (n, C, H, W)``, batched.

    ``queries`` are names in :data:`QUERIES`, the first must be ``clean`` (attacks that use one
    query read index 0). The model's device is used; ``x`` may live anywhere and is moved batch by
    batch.
    """
    if not queries or queries[0] != "clean":
        raise ValueError(f"queries must start with 'clean', got {list(queries)}")
    functions = [QUERIES[q] for q in queries]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with _ieee_float32(device), _no_autocast(device):
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size].to(device, torch.float32)
                per_query = [model(channels_last(q(xb))).float() for q in functions]
                chunks.append(torch.stack(per_query, dim=1).cpu())  # (b, n_queries, C)
    finally:
        model.train(was_training)
    logits = torch.cat(chunks).numpy().astype(np.float32, copy=False)
    if not np.isfinite(logits).all():
        raise FloatingPointError("the model produced NaN or infinite logits on the pool")
    return Signals(logits=logits, labels=y.cpu().numpy().astype(np.int64))


@contextlib.contextmanager
def _ieee_float32(device: torch.device) -> Iterator[None]:
    """Full float32 convolutions and matmuls on CUDA while the block runs (no TF32); a no-op on
    other devices. Restores the previous settings."""
    if device.type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    settings: list[tuple[Any, str, object]]
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        settings = [
            (conv, "fp32_precision", "ieee"),
            (torch.backends.cuda.matmul, "fp32_precision", "ieee"),
        ]
    else:
        settings = [
            (torch.backends.cudnn, "allow_tf32", False),
            (torch.backends.cuda.matmul, "allow_tf32", False),
        ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in settings]
    try:
        for obj, name, value in settings:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast off for the block, even inside a caller's autocast region (CPU and CUDA)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
