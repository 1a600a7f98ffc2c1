"""Tests for pptp.data: the pool (cuts, provenance, normalisation, sizes), the membership matrix
and the planted canaries."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from fixtures_torchvision import unnormalise

from pptp.data import Pool, keep_matrix, keep_row, make_pool
from pptp.datasets import DATASETS, load_raw
from pptp.errors import ConfigError

# --- the pool -------------------------------------------------------------------------------


def test_digits_pool_shapes_and_dtypes(digits_pool: Pool) -> None:
    p = digits_pool
    assert (p.dataset, p.seed, p.num_classes, p.flip) == ("digits", 0, 10, False)
    for x, y, n in ((p.x, p.y, 1297), (p.x_test, p.y_test, 400), (p.x_val, p.y_val, 100)):
        assert x.shape == (n, 1, 8, 8) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert y.shape == (n,) and y.dtype == torch.int64
    assert p.pool_index.shape == (1297,) and p.pool_index.dtype == np.int64


def test_test_val_and_pool_are_disjoint_and_cover_the_data(digits_pool: Pool) -> None:
    p = digits_pool
    together = np.concatenate([p.test_index, p.val_index, p.pool_index])
    assert len(np.unique(together)) == len(together) == 1797


def test_pool_values_match_their_provenance(digits_pool: Pool) -> None:
    x_raw, y_raw = load_raw("digits")
    spec = DATASETS["digits"]
    for x, y, index in (
        (digits_pool.x, digits_pool.y, digits_pool.pool_index),
        (digits_pool.x_test, digits_pool.y_test, digits_pool.test_index),
        (digits_pool.x_val, digits_pool.y_val, digits_pool.val_index),
    ):
        torch.testing.assert_close(unnormalise(x, spec), x_raw[index])
        assert torch.equal(y, y_raw[index])


def test_pool_is_normalised(digits_pool: Pool) -> None:
    assert abs(float(digits_pool.x.mean())) < 0.05
    assert abs(float(digits_pool.x.std()) - 1.0) < 0.05


def test_pool_is_deterministic_and_seed_dependent(digits_pool: Pool) -> None:
    again = make_pool("digits", seed=0, test_size=400, val_size=100)
    for field in ("x", "y", "x_test", "y_test", "x_val", "y_val"):
        assert torch.equal(getattr(again, field), getattr(digits_pool, field))
    assert np.array_equal(again.pool_index, digits_pool.pool_index)
    other = make_pool("digits", seed=1, test_size=400, val_size=100)
    assert not np.array_equal(other.test_index, digits_pool.test_index)
    assert not torch.equal(other.x, digits_pool.x)


def test_pool_size_cuts_the_pool_only(digits_pool: Pool) -> None:
    small = make_pool("digits", seed=0, pool_size=100, test_size=400, val_size=100)
    assert small.x.shape[0] == 100
    assert np.array_equal(small.test_index, digits_pool.test_index)
    assert np.array_equal(small.val_index, digits_pool.val_index)
    assert np.array_equal(small.pool_index, digits_pool.pool_index[:100])


def test_image_size_resizes_before_normalising() -> None:
    native = make_pool("digits", seed=0, pool_size=50, test_size=10)
    same = make_pool("digits", seed=0, pool_size=50, test_size=10, image_size=8)
    assert torch.equal(native.x, same.x)
    big = make_pool("digits", seed=0, pool_size=50, test_size=10, image_size=32)
    assert big.x.shape == (50, 1, 32, 32) and big.x_test.shape == (10, 1, 32, 32)
    spec = DATASETS["digits"]
    # Bilinear upsampling keeps each image's mean brightness (up to edge effects).
    torch.testing.assert_close(
        unnormalise(big.x, spec).mean(dim=(1, 2, 3)),
        unnormalise(native.x, spec).mean(dim=(1, 2, 3)),
        atol=0.03,
        rtol=0,
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_size": -1}, "test_size"),
        ({"test_size": 10, "val_size": -5}, "val_size"),
        ({"test_size": 10, "pool_size": 1}, "pool_size"),
        ({"test_size": 10, "pool_size": 0}, "pool_size"),
        ({"test_size": 10, "image_size": 0}, "image_size"),
        ({"test_size": 10, "seed": -1}, "seed"),
        ({"test_size": 400, "val_size": 100, "pool_size": 1500}, r"400 .* 100 .* 1500 .*1797"),
        ({"test_size": 1797}, "1797"),
    ],
)
def test_bad_sizes_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_pool("digits", **kwargs)


# --- membership ------------------------------------------------------------------------------


@pytest.mark.parametrize("n_pool", [0, 1, 100, 101])
def test_keep_rows_are_exactly_half(n_pool: int) -> None:
    keep = keep_matrix(n_pool, 3, 8)
    assert keep.shape == (8, n_pool) and keep.dtype == bool
    assert (keep.sum(axis=1) == n_pool // 2).all()


def test_keep_rows_do_not_depend_on_the_number_of_rows() -> None:
    assert np.array_equal(keep_matrix(500, 7, 16)[:4], keep_matrix(500, 7, 4))
    assert np.array_equal(keep_matrix(500, 7, 16)[9], keep_row(500, 7, 9))


def test_keep_rows_differ_between_rows_and_seeds() -> None:
    keep = keep_matrix(500, 7, 16)
    for i, j in itertools.combinations(range(16), 2):
        assert not np.array_equal(keep[i], keep[j])
    assert not np.array_equal(keep_row(500, 7, 0), keep_row(500, 8, 0))
    # Across many models every example is a member about half the time.
    share = keep_matrix(200, 0, 400).mean(axis=0)
    assert abs(share.mean() - 0.5) < 0.01 and share.min() > 0.35 and share.max() < 0.65


def test_pool_keep_uses_the_pool_seed(digits_pool: Pool) -> None:
    keep = digits_pool.keep(3)
    assert keep.shape == (3, 1297)
    assert np.array_equal(keep, keep_matrix(1297, digits_pool.seed, 3))


@pytest.mark.parametrize(("n_pool", "seed", "n_models"), [(-1, 0, 1), (10, -1, 1), (10, 0, 0)])
def test_keep_matrix_rejects_bad_arguments(n_pool: int, seed: int, n_models: int) -> None:
    with pytest.raises(ConfigError):
        keep_matrix(n_pool, seed, n_models)


# --- canaries -------------------------------------------------------------------------------


def test_canaries_are_mislabeled_pool_examples_in_half_the_models() -> None:
    clean = make_pool("digits", seed=3, test_size=300, val_size=100)
    pool = make_pool("digits", seed=3, test_size=300, val_size=100, canaries=200)
    assert clean.canary is None and clean.n_canaries == 0
    assert pool.canary is not None and pool.n_canaries == 200
    changed = (pool.y != clean.y).numpy()
    assert np.array_equal(changed, pool.canary)  # every canary, and only canaries, relabelled
    assert np.array_equal(pool.canary_true_y, clean.y.numpy()[pool.canary])
    assert torch.equal(pool.y_test, clean.y_test) and torch.equal(pool.x, clean.x)
    # membership is the ordinary keep matrix: each canary is in about half of the models
    share = pool.keep(64)[:, pool.canary].mean(0)
    assert 0.3 < share.mean() < 0.7
    again = make_pool("digits", seed=3, test_size=300, val_size=100, canaries=200)
    assert torch.equal(again.y, pool.y)  # a pure function of the seed


def test_too_many_canaries_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="canaries"):
        make_pool("digits", seed=0, test_size=300, val_size=100, pool_size=50, canaries=51)


def test_ood_canaries_are_noise_images_with_random_labels() -> None:
    clean = make_pool("digits", seed=3, test_size=300, val_size=100)
    pool = make_pool("digits", seed=3, test_size=300, val_size=100, canaries=200, canary_kind="ood")
    assert pool.canary is not None and pool.canary_kind == "ood"
    # the same examples as the mislabeled kind would pick; only they change, images and labels
    mislabeled = make_pool("digits", seed=3, test_size=300, val_size=100, canaries=200)
    assert np.array_equal(pool.canary, mislabeled.canary)
    changed = (pool.x != clean.x).flatten(1).any(1).numpy()
    assert np.array_equal(changed, pool.canary)
    assert torch.equal(
        pool.y[~torch.from_numpy(pool.canary)], clean.y[~torch.from_numpy(pool.canary)]
    )
    # labels from all classes (about a tenth keep their class by chance), images uniform in [0, 1]
    labels = pool.y.numpy()[pool.canary]
    assert set(labels) == set(range(10)) and (labels == pool.canary_true_y).mean() < 0.2
    spec = DATASETS["digits"]
    images = pool.x[torch.from_numpy(pool.canary)] * spec.std[0] + spec.mean[0]
    assert images.min() >= -1e-6 and images.max() <= 1 + 1e-6 and abs(images.mean() - 0.5) < 0.01
    again = make_pool(
        "digits", seed=3, test_size=300, val_size=100, canaries=200, canary_kind="ood"
    )
    assert torch.equal(again.x, pool.x) and torch.equal(again.y, pool.y)


def test_an_unknown_canary_kind_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown canary kind 'odd'; known: mislabeled, ood"):
        make_pool("digits", seed=3, test_size=300, val_size=100, canaries=20, canary_kind="odd")
