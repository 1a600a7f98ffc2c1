"""Tests for pptp.data: registry, pool, membership matrix, batching, augmentation, and the
torchvision path (tiny MNIST-format folders through the real loader; offline errors)."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures_torchvision import TinyImages, write_fake_cifar10, write_idx, write_mnist

from pptp.data import (
    DATASETS,
    SYSTEM_DATA_ENV,
    DatasetSpec,
    Pool,
    augment,
    batches,
    keep_matrix,
    keep_row,
    load_raw,
    make_pool,
)
from pptp.data import _run_loader as _run_loader  # the loader with its checks and messages
from pptp.errors import ConfigError, DataUnavailableError

ON_DISK = sorted(name for name, spec in DATASETS.items() if not spec.bundled)
# Where each dataset's files must be, as the error message must say it.
LAYOUT_KEY = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte",
    "fashion_mnist": "FashionMNIST/raw/train-images-idx3-ubyte",
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "svhn": "train_32x32.mat",
}
FLIPS = {"cifar10": True, "cifar100": True}  # natural images; digits and characters are not


def unnormalise(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return x * std + mean


# --- registry ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_spec_fields_are_sane(name: str) -> None:
    spec = DATASETS[name]
    assert spec.name == name
    assert spec.num_classes in (10, 100)
    assert spec.channels in (1, 3)
    assert len(spec.mean) == len(spec.std) == spec.channels
    assert all(0 < m < 1 for m in spec.mean)
    assert all(0 < s < 1 for s in spec.std)
    assert spec.image_size in (8, 28, 32)
    assert spec.flip is FLIPS.get(name, False)
    assert callable(spec.load)
    if not spec.bundled:
        assert LAYOUT_KEY[name] in spec.layout.format(root="")


def test_every_on_disk_dataset_has_a_layout_check() -> None:
    assert set(ON_DISK) == set(LAYOUT_KEY)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar11'.*cifar10.*digits"):
        make_pool("cifar11", test_size=10)


# --- digits, the offline dataset -------------------------------------------------------------


def test_digits_raw_is_pooled_and_scaled() -> None:
    x, y = load_raw("digits")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert load_raw("digits", data_dir="elsewhere")[0] is x  # cached; no directory involved


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


# --- batching and augmentation ---------------------------------------------------------------


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


# --- the torchvision path -------------------------------------------------------------------


def written(data: TinyImages) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.concatenate([data.x_train, data.x_test])[:, None]
    return torch.from_numpy(x), torch.from_numpy(np.concatenate([data.y_train, data.y_test]))


def test_mnist_loads_through_torchvision(tiny_mnist: tuple[Path, TinyImages]) -> None:
    root, data = tiny_mnist
    x, y = load_raw("mnist", data_dir=root)
    x_w, y_w = written(data)
    assert x.dtype == torch.uint8 and torch.equal(x, x_w) and torch.equal(y, y_w)

    pool = make_pool("mnist", data_dir=root, seed=0, test_size=10, val_size=5)
    assert pool.x.shape == (55, 1, 28, 28) and pool.x_test.shape == (10, 1, 28, 28)
    assert pool.x_val.shape == (5, 1, 28, 28) and (pool.num_classes, pool.flip) == (10, False)
    back = (unnormalise(pool.x, DATASETS["mnist"]) * 255).round().to(torch.uint8)
    assert torch.equal(back, x_w[pool.pool_index])
    assert torch.equal(pool.y, y_w[pool.pool_index])
    assert torch.equal(pool.y_test, y_w[pool.test_index])


def test_fashion_mnist_loads_from_its_own_folder(tmp_path: Path) -> None:
    data = write_mnist(tmp_path, folder="FashionMNIST", n_train=12, n_test=4, seed=5)
    x, y = load_raw("fashion_mnist", data_dir=tmp_path)
    x_w, y_w = written(data)
    assert torch.equal(x, x_w) and torch.equal(y, y_w)
    with pytest.raises(DataUnavailableError, match="MNIST/raw"):
        load_raw("mnist", data_dir=tmp_path)  # MNIST is not there


def gzip_originals(data: TinyImages, folder: Path) -> None:
    """The four files as the dataset's authors (and Debian's package) ship them: IDX, gzipped."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": data.x_train,
        "train-labels-idx1-ubyte": data.y_train,
        "t10k-images-idx3-ubyte": data.x_test,
        "t10k-labels-idx1-ubyte": data.y_test,
    }
    for name, array in arrays.items():
        write_idx(folder / name, array)
        raw = (folder / name).read_bytes()
        (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        (folder / name).unlink()


def test_fashion_mnist_reads_the_original_gzipped_files_in_data_dir(tmp_path: Path) -> None:
    data = write_mnist(tmp_path / "source", folder="FashionMNIST", n_train=12, n_test=4, seed=6)
    gzip_originals(data, tmp_path / "debian")
    x, y = load_raw("fashion_mnist", data_dir=tmp_path / "debian")
    x_w, y_w = written(data)
    assert x.dtype == torch.uint8 and torch.equal(x, x_w) and torch.equal(y, y_w)


def test_fashion_mnist_falls_back_to_the_system_package_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_mnist(tmp_path / "source", folder="FashionMNIST", n_train=10, n_test=5, seed=7)
    gzip_originals(data, tmp_path / "usr-share")
    spec = dataclasses.replace(
        DATASETS["fashion_mnist"], system_dirs=(str(tmp_path / "usr-share"),)
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataUnavailableError) as err:  # PPTP_SYSTEM_DATA=0: not looked at
        _run_loader(spec, empty, False)
    assert str(tmp_path / "usr-share") not in str(err.value)
    monkeypatch.delenv(SYSTEM_DATA_ENV)
    x, y = _run_loader(spec, empty, False)
    x_w, y_w = written(data)
    assert torch.equal(x, x_w) and torch.equal(y, y_w)


def test_torchvision_layout_wins_over_original_files(tmp_path: Path) -> None:
    data = write_mnist(tmp_path, folder="FashionMNIST", n_train=8, n_test=4, seed=8)
    other = write_mnist(tmp_path / "other", folder="x", n_train=3, n_test=2, seed=9)
    gzip_originals(other, tmp_path)  # original files directly in the root as well
    x, _ = load_raw("fashion_mnist", data_dir=tmp_path)
    assert torch.equal(x, written(data)[0])


def test_missing_fashion_mnist_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = dataclasses.replace(DATASETS["fashion_mnist"], system_dirs=(str(tmp_path / "none"),))
    monkeypatch.delenv(SYSTEM_DATA_ENV)
    with pytest.raises(DataUnavailableError) as err:
        _run_loader(spec, tmp_path, False)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "none") in message and "download" in message
    assert DATASETS["fashion_mnist"].system_dirs == ("/usr/share/datasets/fashion-mnist",)


def test_a_truncated_idx_file_is_unavailable(tmp_path: Path) -> None:
    data = write_mnist(tmp_path / "source", folder="x", n_train=6, n_test=2, seed=10)
    gzip_originals(data, tmp_path / "orig")
    (tmp_path / "orig" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03"))
    with pytest.raises(DataUnavailableError, match=r"IDX|header"):
        load_raw("fashion_mnist", data_dir=tmp_path / "orig")


@pytest.mark.parametrize("name", ON_DISK)
def test_missing_dataset_names_directory_and_layout(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as err:
        make_pool(name, data_dir=tmp_path, test_size=10)
    message = str(err.value)
    assert str(tmp_path) in message
    assert LAYOUT_KEY[name] in message
    assert "download=True" in message


def test_corrupt_cifar_folder_is_unavailable(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    with pytest.raises(DataUnavailableError, match="corrupted") as err:
        load_raw("cifar10", data_dir=tmp_path)
    assert "cifar-10-batches-py" in str(err.value)


def test_corrupt_mnist_files_are_unavailable(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=4, n_test=2)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\xff" * 16)
    with pytest.raises(DataUnavailableError, match=str(tmp_path)):
        load_raw("mnist", data_dir=tmp_path)


def test_labels_outside_the_classes_are_unavailable(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=4, n_test=2)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.array([3, 12]))
    with pytest.raises(DataUnavailableError, match=r"labels outside 0\.\.9"):
        load_raw("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("name", ON_DISK)
def test_download_offline_is_unavailable(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def offline(request: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataUnavailableError) as err:
        make_pool(name, data_dir=tmp_path, test_size=10, download=True)
    assert calls, "torchvision's download must have been attempted"
    message = str(err.value)
    assert str(tmp_path) in message and LAYOUT_KEY[name] in message
    assert "Downloading failed" in message


def test_bundled_dataset_size_is_declared() -> None:
    """``n_examples`` lets space validation size pools before any data is loaded."""
    x, y = load_raw("digits")
    assert DATASETS["digits"].n_examples == len(y) == len(x)
    assert all(spec.n_examples > 0 for spec in DATASETS.values())


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
