"""Who leaks: the pool records the strongest attack finds most exposed, and leakage per class.

Leakage is seldom spread evenly over a dataset: a few records, often of a few classes, carry most
of it. For one target, with the attack and score direction of the trial's worst case AUC
(:meth:`pptp.result.TrialResult.worst_case`), this module gives

- the **most exposed records**: the target's members with the highest attack scores (the records
  an attacker is surest were trained on), each with its pool index, its index in the raw dataset
  (provenance), its score and its label; the population only (canaries, planted on purpose, are
  audited apart: :mod:`pptp.audit`);
- **per-class TPR at 1% FPR**: the threshold at which 1% of all non-members (of the population)
  are called members, and for each class the share of its members above it. One threshold for all
  classes, as an attacker would use; a TPR per class is NaN when the population's non-members
  cannot resolve 1% (:func:`pptp.metrics.resolvable`).

Image thumbnails of the exposed records (scaled back to [0, 1]) ride along for the report's grid.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from pptp.metrics import resolvable

#: records listed per trial
TOP = 32
#: the FPR of the per-class TPRs
CLASS_FPR = 0.01


@dataclass(frozen=True)
class ExposedRecord:
    """One exposed member: its rank (1 = most exposed), ``pool_index`` (row of the pool),
    ``dataset_index`` (row of the raw dataset), the attack's ``score`` (higher = member, in the
    direction the attack was strongest) and ``label``."""

    rank: int
    pool_index: int
    dataset_index: int
    score: float
    label: int


@dataclass(frozen=True)
class Exposure:
    """Who leaks in one target, for ``attack`` (``inverted``: its negated scores).

    ``records``: the :data:`TOP` most exposed members. ``class_tpr``: class -> TPR at
    :data:`CLASS_FPR` (NaN when not resolved), ``class_members``: class -> members scored.
    ``thumbnails``: (len(records), C, H, W) float32 in [0, 1], or None for table data.
    """

    attack: str
    inverted: bool
    records: tuple[ExposedRecord, ...]
    class_tpr: dict[int, float]
    class_members: dict[int, int]
    thumbnails: np.ndarray | None = None

    def records_csv(self) -> str:
        """``exposed.csv``: rank, pool_index, dataset_index, score, label, attack."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["rank", "pool_index", "dataset_index", "score", "label", "attack"])
        side = f"{self.attack} (inverted)" if self.inverted else self.attack
        for r in self.records:
            writer.writerow(
                [r.rank, r.pool_index, r.dataset_index, f"{r.score:.6g}", r.label, side]
            )
        return out.getvalue()

    def class_csv(self) -> str:
        """``class_tpr.csv``: label, members, tpr@1%fpr (empty when not resolved)."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["label", "members", "tpr@1%fpr"])
        for label in sorted(self.class_tpr):
            tpr = self.class_tpr[label]
            writer.writerow(
                [label, self.class_members[label], "" if math.isnan(tpr) else f"{tpr:.4f}"]
            )
        return out.getvalue()


def most_exposed(
    scores: np.ndarray,
    is_member: np.ndarray,
    labels: np.ndarray,
    dataset_index: np.ndarray,
    *,
    population: np.ndarray | None = None,
    attack: str,
    inverted: bool = False,
    images: torch.Tensor | None = None,
    normalisation: tuple[torch.Tensor, torch.Tensor] | None = None,
    top: int = TOP,
) -> Exposure:
    """Who leaks, from one attack's pool scores.

    ``scores``, ``is_member``, ``labels``, ``dataset_index``: (n_pool,), the attack's own
    direction (``inverted`` negates it). ``population``: (n_pool,) bool, the records considered
    (default all; the trial passes the non-canaries). ``images``: the pool's normalised inputs
    (n_pool, C, H, W) and ``normalisation`` their ``(mean, std)`` (1, C, 1, 1), for thumbnails;
    None (or feature vectors, H = W = 1) gives none.
    """
    signed = -np.asarray(scores, dtype=np.float64) if inverted else np.asarray(scores, np.float64)
    member = np.asarray(is_member, dtype=bool)
    keep = np.ones(len(signed), bool) if population is None else np.asarray(population, bool)
    candidates = np.flatnonzero(member & keep)
    order = candidates[np.argsort(-signed[candidates], kind="stable")][:top]
    records = tuple(
        ExposedRecord(rank + 1, int(i), int(dataset_index[i]), float(signed[i]), int(labels[i]))
        for rank, i in enumerate(order)
    )
    out_scores = signed[keep & ~member]
    class_tpr: dict[int, float] = {}
    class_members: dict[int, int] = {}
    threshold = math.nan
    if len(out_scores) and resolvable(CLASS_FPR, len(out_scores)):
        # the smallest threshold calling at most 1% of the non-members members
        allowed = math.floor(CLASS_FPR * len(out_scores) + 1e-9)
        ranked = np.sort(out_scores)[::-1]
        threshold = float(ranked[allowed]) if allowed < len(ranked) else -math.inf
    for label in np.unique(np.asarray(labels)[member & keep]):
        mine = signed[member & keep & (np.asarray(labels) == label)]
        class_members[int(label)] = len(mine)
        class_tpr[int(label)] = (
            math.nan if math.isnan(threshold) else float((mine > threshold).mean())
        )
    thumbnails = None
    if images is not None and normalisation is not None and images.shape[-1] > 1 and len(order):
        mean, std = normalisation
        picked = images[torch.from_numpy(order).to(images.device)].float()
        thumbnails = (picked * std + mean).clamp(0, 1).cpu().numpy().astype(np.float32)
    return Exposure(attack, inverted, records, class_tpr, class_members, thumbnails)


def thumbnail_grid(exposure: Exposure, *, columns: int = 8, scale: int = 3) -> bytes | None:
    """The exposed records' thumbnails as one PNG (rank order, row by row; each image upscaled
    ``scale`` times with nearest neighbours), or None without thumbnails. Uses Pillow."""
    from PIL import Image

    if exposure.thumbnails is None or not len(exposure.thumbnails):
        return None
    images = exposure.thumbnails  # (n, C, H, W) in [0, 1]
    n, channels, height, width = images.shape
    rows = math.ceil(n / columns)
    pad = 2
    grid = np.ones((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), np.float32)
    for k in range(n):
        r, c = divmod(k, columns)
        tile = images[k].transpose(1, 2, 0)
        tile = np.repeat(tile, 3, axis=2) if channels == 1 else tile[..., :3]
        y, x = pad + r * (height + pad), pad + c * (width + pad)
        grid[y : y + height, x : x + width] = tile
    picture = Image.fromarray((grid * 255).round().astype(np.uint8))
    picture = picture.resize(
        (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
