"""How canaries are made (``data.canary_kind``): a registry of kinds.

A canary is a pool example changed so that only memorising it fits it; the canaries' attack scores
feed the canary metrics (:mod:`pptp.canaries`) and the one-run audit (:mod:`pptp.audit`).
:func:`plant` chooses which pool examples become canaries (without replacement, from
``default_rng([seed, salt])``) and the kind changes them, drawing from the same generator, so the
pool is a pure function of the data config.

``mislabeled``  the example keeps its image and gets a label drawn uniformly from the *other*
                classes (Aerni et al. 2024, "Evaluations of Machine Learning Privacy Defenses are
                Misleading"): an in-distribution record the model can only fit by memorising.
``ood``         the image is replaced by uniform noise in [0, 1] (normalised like every image) and
                the label drawn uniformly from all classes: out-of-distribution inputs with random
                labels, which the auditing literature finds easier to detect (nothing else in the
                pool resembles them, so a model that memorises them shows it; e.g. Steinke, Nasr
                & Jagielski 2023 and Nasr et al. 2023 audit with such input-space canaries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pptp.registry import Registry


@dataclass(frozen=True)
class Planting:
    """What a kind is given: the pool's normalised images ``x`` (n_pool, C, H, W), labels ``y``
    (n_pool,) int64, the ``chosen`` canaries' indices (n,), the generator to draw from, the number
    of classes, and the normalisation the pool used (``mean``, ``std``: (1, C, 1, 1), images
    scaled to [0, 1] before it)."""

    x: torch.Tensor
    y: np.ndarray
    chosen: np.ndarray
    rng: np.random.Generator
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor


#: a kind returns the pool's images and labels with its canaries planted (``x`` may be the same
#: tensor when the images are kept)
CanaryKind = Callable[[Planting], tuple[torch.Tensor, np.ndarray]]

CANARY_KINDS: Registry[CanaryKind] = Registry("canary kind")


@CANARY_KINDS.register("mislabeled")
def mislabeled(p: Planting) -> tuple[torch.Tensor, np.ndarray]:
    labels = p.y.copy()
    shift = p.rng.integers(1, p.num_classes, size=len(p.chosen))  # 1..C-1: never the same
    labels[p.chosen] = (labels[p.chosen] + shift) % p.num_classes
    return p.x, labels


@CANARY_KINDS.register("ood")
def ood(p: Planting) -> tuple[torch.Tensor, np.ndarray]:
    _, channels, height, width = p.x.shape
    noise = torch.from_numpy(
        p.rng.random((len(p.chosen), channels, height, width), dtype=np.float32)
    ).to(p.x.device)
    x = p.x.clone()
    x[torch.from_numpy(p.chosen).to(p.x.device)] = (noise - p.mean) / p.std
    labels = p.y.copy()
    labels[p.chosen] = p.rng.integers(0, p.num_classes, size=len(p.chosen))
    return x, labels


def plant(
    kind: str,
    x: torch.Tensor,
    y: np.ndarray,
    n: int,
    seed: int,
    salt: int,
    num_classes: int,
    normalisation: tuple[torch.Tensor, torch.Tensor],
) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Plant ``n`` canaries of ``kind``: ``(canary (n_pool,) bool, x, labels (n_pool,) int64)``.

    The ``n`` examples are drawn without replacement from ``default_rng([seed, salt])``; the kind
    draws what it needs from the same generator afterwards. ``normalisation``: the pool's
    ``(mean, std)``, each (1, C, 1, 1).
    """
    make = CANARY_KINDS[kind]
    rng = np.random.default_rng([seed, salt])
    chosen = rng.choice(len(y), size=n, replace=False)
    canary = np.zeros(len(y), dtype=bool)
    canary[chosen] = True
    mean, std = normalisation
    planted_x, labels = make(
        Planting(x, np.asarray(y, dtype=np.int64), chosen, rng, num_classes, mean, std)
    )
    return canary, planted_x, labels
