"""Training batches on the device: index batches and augmentation (docs/design.md#performance).

:func:`batches` and :func:`augment` slice and augment batches on the tensors' device with no
per-sample Python: random crop with zero padding and random horizontal flip, drawing randomness
only from a given :class:`torch.Generator`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from pptp.errors import check_size


def batches(
    n: int,
    batch_size: int,
    *,
    generator: torch.Generator,
    shuffle: bool = True,
    drop_last: bool = False,
    device: str | torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """Index tensors (int64) covering ``range(n)`` once, in batches of ``batch_size``.

    A ``randperm`` drawn from ``generator`` (on the generator's device), sliced; without
    ``shuffle`` the order is 0..n-1 and the generator is not used. The last short batch is dropped
    with ``drop_last``. ``device`` (default: the generator's) is where the indices are placed:
    put them where the data lives, e.g. ``pool.x[idx]``.
    """
    check_size("n", n, minimum=0)
    check_size("batch_size", batch_size, minimum=1)
    target = torch.device(device) if device is not None else generator.device
    if shuffle:
        order = torch.randperm(n, generator=generator, device=generator.device).to(target)
    else:
        order = torch.arange(n, device=target)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def augment(
    x: torch.Tensor, *, generator: torch.Generator, crop_pad: int = 4, flip: bool
) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per example: same shape.

    ``x`` (B, C, H, W). Each example is padded by ``crop_pad`` zeros on every side (zero is the
    mean pixel of normalised data) and a window of the original size is taken at a random offset
    in 0..2*crop_pad along each axis (the CIFAR recipe of He et al. 2016 uses crop_pad=4; use 1 or
    2 for 8x8 digits); ``crop_pad=0`` disables the crop. With ``flip`` each example is mirrored
    left-right with probability 1/2 (only where the dataset allows, see ``Pool.flip``). Two
    ``gather`` calls do both at once, no per-example Python. Randomness comes only from
    ``generator`` (row offsets, then column offsets, then flips; drawn on the generator's device),
    so the same generator state gives the same output. With ``crop_pad=0`` and ``flip=False``
    ``x`` itself is returned.
    """
    check_size("crop_pad", crop_pad, minimum=0)
    if x.ndim != 4:
        raise ValueError(f"augment expects (B, C, H, W), got shape {tuple(x.shape)}")
    if crop_pad == 0 and not flip:
        return x
    b, c, h, w = x.shape
    gdev = generator.device
    p = crop_pad
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=gdev).to(x.device)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=gdev).to(x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flip:
        mirror = (torch.rand(b, generator=generator, device=gdev) < 0.5).to(x.device)
        cols = torch.where(mirror[:, None], w - 1 - cols, cols)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (b, h) rows of the padded image
    cols = dx[:, None] + cols  # (b, w) columns of the padded image, reversed where mirrored
    padded = F.pad(x, (p, p, p, p)) if p else x
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
