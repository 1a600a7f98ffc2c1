"""Write tiny datasets in torchvision's own on-disk formats, so tests load them through the real
``torchvision.datasets`` classes (docs/design.md#data-without-a-network).

MNIST / Fashion-MNIST (torchvision 0.29, ``datasets/mnist.py``): ``MNIST(root)`` reads the
*uncompressed* IDX files ``<root>/<ClassName>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
and only checks that they exist (no MD5), so small files load. IDX: a big-endian header
``0x00 0x00 <type 0x08 = uint8> <number of dims>``, then one big-endian int32 per dim, then the
data. CIFAR and SVHN files are checked against fixed MD5 sums, so only their error paths can be
tested with fake files (:func:`write_fake_cifar10`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pptp.datasets import DatasetSpec


@dataclass(frozen=True)
class TinyImages:
    """What was written: x (n, H, W) uint8, y (n,) int64 for each split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array (1 to 3 dims) as an uncompressed IDX file."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist(
    root: Path,
    *,
    folder: str = "MNIST",
    n_train: int = 50,
    n_test: int = 20,
    size: int = 28,
    seed: int = 0,
) -> TinyImages:
    """Random images and labels 0..9 in ``root/<folder>/raw/`` (``FashionMNIST`` for Fashion)."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    data = TinyImages(
        x_train=rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        y_train=rng.integers(0, 10, n_train).astype(np.int64),
        x_test=rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        y_test=rng.integers(0, 10, n_test).astype(np.int64),
    )
    write_idx(raw / "train-images-idx3-ubyte", data.x_train)
    write_idx(raw / "train-labels-idx1-ubyte", data.y_train)
    write_idx(raw / "t10k-images-idx3-ubyte", data.x_test)
    write_idx(raw / "t10k-labels-idx1-ubyte", data.y_test)
    return data


def write_fake_cifar10(root: Path) -> Path:
    """A ``cifar-10-batches-py`` folder with every expected file name but wrong contents."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    for name in names:
        (folder / name).write_bytes(b"not a CIFAR batch")
    return folder


def unnormalise(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """The [0, 1] pixels a pool's images ``x: (n, C, H, W)`` were normalised from (per channel,
    with the dataset's ``mean`` and ``std``, as :func:`pptp.data.make_pool` does)."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return x * std + mean
