"""Tests for pptp.datasets: the registry, scikit-learn's digits, and the torchvision path (tiny
MNIST-format folders through the real loader, the original gzipped files, offline errors)."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_torchvision import (
    TinyImages,
    unnormalise,
    write_fake_cifar10,
    write_idx,
    write_mnist,
)

from pptp.data import make_pool
from pptp.datasets import DATASETS, SYSTEM_DATA_ENV, load_raw
from pptp.datasets import _run_loader as _run_loader  # the loader with its checks and messages
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
def test_download_offline_is_unavailable(name: str, tmp_path: Path, offline: list[str]) -> None:
    with pytest.raises(DataUnavailableError) as err:
        make_pool(name, data_dir=tmp_path, test_size=10, download=True)
    assert offline, "torchvision's download must have been attempted"
    message = str(err.value)
    assert str(tmp_path) in message and LAYOUT_KEY[name] in message
    assert "Downloading failed" in message


def test_bundled_dataset_size_is_declared() -> None:
    """``n_examples`` lets space validation size pools before any data is loaded."""
    x, y = load_raw("digits")
    assert DATASETS["digits"].n_examples == len(y) == len(x)
    assert all(spec.n_examples > 0 for spec in DATASETS.values())
