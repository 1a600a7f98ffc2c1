"""Tests for pptp.batches: index batches and on-device augmentation (random crop and flip)."""

from __future__ import annotations

import itertools

import pytest
import torch

from pptp.batches import augment, batches
from pptp.errors import ConfigError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_batches_cover_every_index_once() -> None:
    parts = list(batches(103, 25, generator=gen(0)))
    assert [len(b) for b in parts] == [25, 25, 25, 25, 3]
    assert all(b.dtype == torch.int64 for b in parts)
    flat = torch.cat(parts)
    assert sorted(flat.tolist()) == list(range(103))
    assert not torch.equal(flat, torch.arange(103))  # shuffled
    assert torch.equal(flat, torch.cat(list(batches(103, 25, generator=gen(0)))))
    assert not torch.equal(flat, torch.cat(list(batches(103, 25, generator=gen(1)))))


def test_batches_drop_last_and_no_shuffle() -> None:
    assert [len(b) for b in batches(103, 25, generator=gen(0), drop_last=True)] == [25] * 4
    plain = list(batches(10, 4, generator=gen(0), shuffle=False))
    assert torch.equal(torch.cat(plain), torch.arange(10))
    assert list(batches(0, 4, generator=gen(0))) == []
    with pytest.raises(ConfigError):
        next(batches(10, 0, generator=gen(0)))


def matching_crops(out: torch.Tensor, x: torch.Tensor, pad: int, flips: bool) -> list[set]:
    """For each example, the (dy, dx, flipped) windows of the zero-padded input equal to it."""
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    found: list[set] = []
    for i in range(len(x)):
        hits = set()
        for dy, dx, f in itertools.product(range(2 * pad + 1), range(2 * pad + 1), (0, 1)):
            window = padded[i, :, dy : dy + h, dx : dx + w]
            if f:
                if not flips:
                    continue
                window = window.flip(-1)
            if torch.equal(out[i], window):
                hits.add((dy, dx, f))
        found.append(hits)
    return found


def test_augment_is_deterministic_under_a_generator() -> None:
    x = torch.randn(64, 3, 32, 32, generator=gen(9))
    a = augment(x, generator=gen(0), flip=True)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, augment(x, generator=gen(0), flip=True))
    assert not torch.equal(a, augment(x, generator=gen(1), flip=True))


def test_augment_without_crop_or_flip_is_identity() -> None:
    x = torch.randn(8, 3, 32, 32, generator=gen(9))
    assert torch.equal(augment(x, generator=gen(0), crop_pad=0, flip=False), x)


def test_augment_flip_only_mirrors_some_examples() -> None:
    x = torch.randn(64, 3, 8, 8, generator=gen(9))
    out = augment(x, generator=gen(0), crop_pad=0, flip=True)
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each is exactly one of them
    assert 10 < sum(flipped) < 54


@pytest.mark.parametrize("flip", [False, True])
def test_augment_takes_a_shifted_window_of_the_zero_padded_image(flip: bool) -> None:
    x = torch.randn(32, 2, 6, 6, generator=gen(9))
    out = augment(x, generator=gen(3), crop_pad=2, flip=flip)
    found = matching_crops(out, x, pad=2, flips=flip)
    assert all(found), "every output must be a window of the padded input"
    offsets = {(dy, dx) for hits in found for dy, dx, _ in hits}
    assert len(offsets) > 5  # offsets vary across examples
    if flip:
        assert {f for hits in found for _, _, f in hits} == {0, 1}
