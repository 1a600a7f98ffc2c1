"""Per-example signals of a trained model on the whole pool: logits, loss, confidence.

Attacks (:mod:`pptp.attacks`) are pure functions of these arrays. The model is queried once per
example and per *query augmentation*: the clean image, optionally its horizontal flip (where flips
are valid for the dataset) and one-pixel shifts, as Carlini et al. (2022, §VI-A) query LiRA with
augmented copies of each example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pptp.device import autocast, channels_last

Query = Callable[[torch.Tensor], torch.Tensor]


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


def query_augmentations(*, augment: bool, flip: bool) -> list[Query]:
    """The queries: identity first, then (if ``augment``) flip (if valid) and +-1 px shifts."""
    queries: list[Query] = [lambda x: x]
    if augment:
        if flip:
            queries.append(lambda x: x.flip(-1))
        queries += [_shift(1, 0), _shift(-1, 0), _shift(0, 1)]
    return queries


@dataclass(frozen=True)
class Signals:
    """A model's outputs on every pool example.

    ``logits: (n_examples, n_aug, n_classes)`` float32, augmentation 0 the clean query;
    ``labels: (n_examples,)`` int64.
    """

    logits: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.logits.ndim != 3 or self.logits.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"logits {self.logits.shape} must be (n_examples, n_aug, n_classes) with "
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
    augment: bool = False,
    flip: bool = False,
    batch_size: int = 1024,
) -> Signals:
    """Query ``model`` (eval mode, no gradients) on ``x: (n, C, H, W)``, batched.

    The model's device is used; ``x`` may live anywhere and is moved batch by batch.
    """
    device = next(model.parameters()).device
    queries = query_augmentations(augment=augment, flip=flip)
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        per_query = []
        for q in queries:
            with autocast(device):
                per_query.append(model(channels_last(q(xb))).float())
        chunks.append(torch.stack(per_query, dim=1).cpu())  # (b, n_aug, C)
    model.train(was_training)
    logits = torch.cat(chunks).numpy().astype(np.float32, copy=False)
    if not np.isfinite(logits).all():
        raise FloatingPointError("the model produced NaN or infinite logits on the pool")
    return Signals(logits=logits, labels=y.cpu().numpy().astype(np.int64))
