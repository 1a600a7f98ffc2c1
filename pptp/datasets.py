"""The datasets registry and loaders (docs/design.md#data-without-a-network).

:data:`DATASETS` names every dataset. A :class:`DatasetSpec` loads the dataset's train and test
splits *pooled* (train first, then test) as ``x: (n, C, H, W)`` (uint8 in 0..255, or float32 in
[0, 1]) and ``y: (n,)`` int64. ``digits`` is scikit-learn's bundled copy (offline); the others come
through ``torchvision.datasets`` from a data directory and are downloaded only when asked; MNIST
and Fashion-MNIST are also read from the four original IDX files (``.gz`` or not), e.g. where
Debian's ``dataset-fashion-mnist`` installs them. A missing or corrupt dataset raises
:class:`~pptp.errors.DataUnavailableError` naming the directory, the expected layout and what to
do. Raw datasets are cached in-process (:func:`load_raw`); :mod:`pptp.data` cuts them into pools.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pptp.errors import DataUnavailableError
from pptp.registry import Registry

logger = logging.getLogger(__name__)

Loader = Callable[["DatasetSpec", Path, bool], tuple[torch.Tensor, torch.Tensor]]
"""``(spec, root, download) -> (x, y)``: train then test; x (n, C, H, W) uint8, or float in
[0, 1]."""

SYSTEM_DATA_ENV = "PPTP_SYSTEM_DATA"
"""Set to ``0`` to ignore copies installed by system packages (``DatasetSpec.system_dirs``): the
test suite does, so its results do not depend on what the machine has installed."""


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: how to load it and what a model needs to know about it.

    ``mean``/``std`` are per-channel statistics of images scaled to [0, 1] (commonly used
    training-split values), used to normalise. ``flip`` says whether a random horizontal flip keeps
    the label meaning (natural images yes; digits and characters no). ``layout`` is the expected
    on-disk layout with ``{root}`` standing for the data directory; ``source`` says where the
    files come from.
    """

    name: str
    load: Loader
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    layout: str
    source: str
    n_examples: int  # train and test splits pooled: what make_pool cuts test, val and pool from
    bundled: bool = False
    #: folders a system package installs the original files in, searched when ``data_dir`` holds
    #: neither torchvision's layout nor the original files (e.g. Debian's dataset-fashion-mnist)
    system_dirs: tuple[str, ...] = ()
    #: how to get the files without a download, named in the error when they are missing
    package_hint: str = ""
    #: the last ``n_test`` examples are the dataset's own test split, used as the test set as
    #: they are (a user's ``test/`` folder or ``x_test``); 0: make_pool cuts ``test_size``
    n_test: int = 0
    #: x holds feature vectors as (n, F, 1, 1): no crops, no flips, per-feature statistics
    table: bool = False
    #: a hash of a user's files or arrays (:mod:`pptp.own_data`), keyed by the reference bank
    fingerprint: str = ""

    def facts(self, image_size: int | None = None) -> DataFacts:
        """What a model needs to know, with ``data.image_size`` applied."""
        size = 1 if self.table else image_size or self.image_size
        return DataFacts(self.num_classes, self.channels, size, table=self.table)


@dataclass(frozen=True)
class DataFacts:
    """The data as a model sees it: inputs ``(N, channels, image_size, image_size)`` float32,
    normalised, and ``num_classes`` logits out. A table has ``table=True``, one channel per
    feature and ``image_size`` 1: ``features`` = channels * image_size**2 is the input width
    after ``nn.Flatten()``. What a user's model factory gets (:mod:`pptp.own_model`)."""

    num_classes: int
    channels: int
    image_size: int
    table: bool = False

    @property
    def features(self) -> int:
        return self.channels * self.image_size * self.image_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _register(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.register(spec.name)(spec)


# ---------------------------------------------------------------------------------------------
# Loaders: each returns the train split followed by the test split.


def _load_digits(
    spec: DatasetSpec, root: Path, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1,797 images, pixel values 0..16 scaled to [0, 1])."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images / 16.0).to(torch.float32).unsqueeze(1)
    y = torch.from_numpy(digits.target).to(torch.int64)
    return x, y


_IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_path(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (uncompressed first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def original_files(folder: Path) -> list[Path] | None:
    """The four original MNIST-format files in ``folder`` (each ``.gz`` or not), or None."""
    paths = [_idx_path(folder, name) for name in _IDX_NAMES]
    return None if any(p is None for p in paths) else [p for p in paths if p is not None]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (LeCun et al.'s MNIST format), gzipped or not.

    Header: two zero bytes, the type byte (0x08 = uint8, the only type MNIST-format files use),
    the number of dimensions, then one big-endian int32 per dimension; then the data.
    """
    import gzip

    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, the file holds {data.size} bytes of data")
    return data.reshape(shape)


def _read_original(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    if x_train.ndim != 3 or y_train.ndim != 1 or len(x_train) != len(y_train):
        raise ValueError(
            f"{paths[0].parent}: training images {x_train.shape} and labels {y_train.shape}"
        )
    if x_test.ndim != 3 or y_test.ndim != 1 or len(x_test) != len(y_test):
        raise ValueError(f"{paths[0].parent}: test images {x_test.shape} and labels {y_test.shape}")
    x = torch.from_numpy(np.concatenate([x_train, x_test])).unsqueeze(1)
    y = torch.from_numpy(np.concatenate([y_train, y_test]).astype(np.int64))
    return x, y


def system_dirs(spec: DatasetSpec) -> tuple[str, ...]:
    """The spec's system folders, or none when ``PPTP_SYSTEM_DATA=0`` (:data:`SYSTEM_DATA_ENV`)."""
    return () if os.environ.get(SYSTEM_DATA_ENV, "1") == "0" else spec.system_dirs


def _mnist_like(cls_name: str) -> Loader:
    """Loader for ``torchvision.datasets.MNIST`` and subclasses: data (n, 28, 28) uint8.

    Looked for, in order: torchvision's layout (``root/<cls_name>/raw/``, uncompressed), the four
    original files (gzipped or not) directly in ``root``, the same in each of the spec's
    :func:`system_dirs` (where a system package such as Debian's ``dataset-fashion-mnist``
    installs them); only then torchvision itself, which downloads when ``download`` is set and
    otherwise raises.
    """

    def load(spec: DatasetSpec, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        tv_raw = root / cls_name / "raw"
        if not all((tv_raw / name).is_file() for name in _IDX_NAMES):
            for folder in (root, *(Path(d) for d in system_dirs(spec))):
                paths = original_files(folder)
                if paths is not None:
                    logger.info("%s: reading the original files in %s", cls_name, folder)
                    return _read_original(paths)
        splits = [cls(str(root), train=train, download=download) for train in (True, False)]
        x = torch.cat([s.data for s in splits]).unsqueeze(1)
        y = torch.cat([torch.as_tensor(s.targets) for s in splits]).to(torch.int64)
        return x, y

    return load


def _cifar(cls_name: str) -> Loader:
    """Loader for ``torchvision.datasets.CIFAR10/100``: data (n, 32, 32, 3) uint8 numpy, HWC."""

    def load(spec: DatasetSpec, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        splits = [cls(str(root), train=train, download=download) for train in (True, False)]
        x = torch.from_numpy(np.concatenate([s.data for s in splits])).permute(0, 3, 1, 2)
        y = torch.as_tensor(np.concatenate([s.targets for s in splits]), dtype=torch.int64)
        return x.contiguous(), y

    return load


def _load_svhn(spec: DatasetSpec, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``torchvision.datasets.SVHN`` train + test (not ``extra``): data (n, 3, 32, 32) uint8."""
    import torchvision.datasets as tvd

    splits = [tvd.SVHN(str(root), split=split, download=download) for split in ("train", "test")]
    x = torch.from_numpy(np.concatenate([s.data for s in splits]))
    y = torch.from_numpy(np.concatenate([s.labels for s in splits])).to(torch.int64)
    return x.contiguous(), y


_MNIST_FILES = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (uncompressed IDX files)"
)

FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs the four original ``.gz`` files."""

_register(
    DatasetSpec(
        name="digits",
        load=_load_digits,
        num_classes=10,
        channels=1,
        image_size=8,
        mean=(0.3053,),  # all 1,797 images, values / 16
        std=(0.3760,),
        flip=False,
        layout="bundled with scikit-learn (sklearn.datasets.load_digits)",
        source="scikit-learn",
        n_examples=1797,
        bundled=True,
    )
)
_register(
    DatasetSpec(
        name="mnist",
        load=_mnist_like("MNIST"),
        num_classes=10,
        channels=1,
        image_size=28,
        mean=(0.1307,),
        std=(0.3081,),
        flip=False,
        layout="{root}/MNIST/raw/" + _MNIST_FILES + ", or the four original files (.gz or not) "
        "directly in {root}",
        source="the four MNIST .gz files (ossci-datasets.s3.amazonaws.com/mnist/)",
        n_examples=70000,
    )
)
_register(
    DatasetSpec(
        name="fashion_mnist",
        load=_mnist_like("FashionMNIST"),
        num_classes=10,
        channels=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        flip=False,
        layout="{root}/FashionMNIST/raw/" + _MNIST_FILES + ", or the four original files "
        "(.gz or not) directly in {root}",
        source="the four Fashion-MNIST .gz files (github.com/zalandoresearch/fashion-mnist)",
        n_examples=70000,
        system_dirs=(FASHION_MNIST_DEBIAN,),
        package_hint="On Debian or Ubuntu, `apt-get install dataset-fashion-mnist` puts the "
        f"original files in {FASHION_MNIST_DEBIAN}/, where they are found with no setting",
    )
)
_register(
    DatasetSpec(
        name="cifar10",
        load=_cifar("CIFAR10"),
        num_classes=10,
        channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        flip=True,
        layout="{root}/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta "
        "(torchvision checks their MD5 sums)",
        source="cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html), extracted",
        n_examples=60000,
    )
)
_register(
    DatasetSpec(
        name="cifar100",
        load=_cifar("CIFAR100"),
        num_classes=100,
        channels=3,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        flip=True,
        layout="{root}/cifar-100-python/train, test, meta (torchvision checks their MD5 sums)",
        source="cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html), extracted",
        n_examples=60000,
    )
)
_register(
    DatasetSpec(
        name="svhn",
        load=_load_svhn,
        num_classes=10,
        channels=3,
        image_size=32,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        flip=False,  # digits: a mirrored 2 or 5 is not a 2 or 5
        layout="{root}/train_32x32.mat, test_32x32.mat (torchvision checks their MD5 sums)",
        source="http://ufldl.stanford.edu/housenumbers/ (format 2, cropped digits)",
        n_examples=99289,  # 73,257 train + 26,032 test (the "extra" split is not used)
    )
)


# ---------------------------------------------------------------------------------------------
# Loading with clear errors and an in-process cache.

# What torchvision raises for a missing, corrupt or undownloadable dataset: RuntimeError
# ("Dataset not found or corrupted", "Error downloading ..."), URLError (an OSError) when
# download=True offline, and AssertionError/TypeError/ValueError from its IDX parser on bad files.
_LOAD_ERRORS = (RuntimeError, OSError, AssertionError, TypeError, ValueError)


def _root(data_dir: str | Path) -> Path:
    return Path(data_dir).expanduser().absolute()


def _unavailable(spec: DatasetSpec, root: Path, err: BaseException, download: bool) -> str:
    reason = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
    if download:
        todo = (
            "Downloading failed (is there internet access?): copy the files there from a machine "
            "that has them, or download on a machine with internet access"
        )
    else:
        todo = (
            "Copy the files there (or point data.data_dir / --data-dir at a folder that holds "
            "them), or set data.download: true (download=True) on a machine with internet access"
        )
    searched = "".join(f" and {d}" for d in system_dirs(spec))
    package = f" {spec.package_hint}." if spec.package_hint else ""
    return (
        f"dataset {spec.name!r} is not available in {root}{searched} ({reason}). "
        f"Expected layout: {spec.layout.format(root=root)}; source: {spec.source}.{package} "
        f"{todo}."
    )


def _run_loader(spec: DatasetSpec, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        x, y = spec.load(spec, root, download)
    except _LOAD_ERRORS as err:
        raise DataUnavailableError(_unavailable(spec, root, err, download)) from err
    shape = (spec.channels, spec.image_size, spec.image_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape or len(x) != len(y):
        raise DataUnavailableError(
            f"dataset {spec.name!r} in {root} has images {tuple(x.shape)} and {len(y)} labels; "
            f"expected (n, {', '.join(map(str, shape))}) and n labels: the files are corrupt. "
            f"Expected layout: {spec.layout.format(root=root)}."
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise DataUnavailableError(
            f"dataset {spec.name!r} in {root} has labels outside 0..{spec.num_classes - 1}: the "
            "files are corrupt or belong to another dataset."
        )
    return x, y


@functools.lru_cache(maxsize=8)
def _cached_raw(name: str, root: str) -> tuple[torch.Tensor, torch.Tensor]:
    spec = DATASETS[name]
    logger.info("loading dataset %s from %s", name, root if not spec.bundled else spec.source)
    x, y = _run_loader(spec, Path(root), False)
    logger.info("dataset %s: %d images of shape %s", name, len(x), tuple(x.shape[1:]))
    return x, y


def load_raw(
    name: str, *, data_dir: str | Path = "data", download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's train and test splits pooled (train first): x (n, C, H, W), y (n,) int64.

    x is uint8 (0..255) for torchvision datasets and float32 in [0, 1] for ``digits``; both on
    the CPU. Cached in-process by (name, data directory): the returned tensors are shared, do not
    modify them in place. With ``download=True`` a dataset missing from ``data_dir`` is
    downloaded there first (torchvision), then loaded.
    """
    spec = DATASETS[name]
    root = _root(data_dir)
    key = "" if spec.bundled else str(root)
    try:
        return _cached_raw(name, key)
    except DataUnavailableError:
        if not download:
            raise
    logger.info("downloading dataset %s to %s", name, root)
    _run_loader(spec, root, True)
    return _cached_raw(name, key)
