"""Datasets, the data pool, the membership matrix and on-device batching (DESIGN.md §3, §7, §9).

Stages, in order:

1. :data:`DATASETS` names every dataset. A :class:`DatasetSpec` loads the dataset's train and test
   splits *pooled* (train first, then test) as ``x: (n, C, H, W)`` (uint8 in 0..255, or float32 in
   [0, 1]) and ``y: (n,)`` int64. ``digits`` is scikit-learn's bundled copy (offline); the others
   come through ``torchvision.datasets`` from a data directory and are downloaded only when asked.
   A missing or corrupt dataset raises :class:`~pptp.errors.DataUnavailableError` naming the
   directory, the expected layout and what to do. Raw datasets are cached in-process.
2. :func:`make_pool` shuffles the pooled data with a seed and cuts it into a held-out test set, a
   held-out validation set and the *pool*; every member set is a subset of the pool, so test and
   validation are disjoint from all of them. Images are scaled to [0, 1], optionally resized, and
   normalised per channel; the tensors live on the training device (DESIGN.md §7).
3. :func:`keep_row` / :func:`keep_matrix` give the membership matrix ``keep[model, example]``
   (row 0 the target, rows 1.. reference models; LiRA, Carlini et al. 2022, "Membership Inference
   Attacks From First Principles"): each row is a random half of the pool, and row ``i`` does not
   depend on how many rows exist, so a reference bank can grow without changing its first models.
4. :func:`batches` and :func:`augment` slice and augment batches on the tensors' device with no
   per-sample Python: random crop with zero padding and random horizontal flip, drawing randomness
   only from a given :class:`torch.Generator`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pptp.config import DataConfig
from pptp.errors import ConfigError, DataUnavailableError
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


# ---------------------------------------------------------------------------------------------
# The pool.

_KEEP_SALT = 0x6B656570  # "keep" in ASCII: keeps membership draws apart from the pool shuffle
_CANARY_SALT = 0x63616E79  # "cany": keeps canary draws apart from the pool shuffle and keep rows


@dataclass(frozen=True, eq=False)
class Pool:
    """A dataset cut into pool, held-out validation and held-out test sets, ready on a device.

    Tensors: ``x`` (n_pool, C, H, W) float32, normalised per channel; ``y`` (n_pool,) int64;
    likewise ``x_test``/``y_test`` and ``x_val``/``y_val`` (n_val may be 0). Members of the target
    and of every reference model are drawn from the pool (:meth:`keep`), so test and validation
    are disjoint from every member set. ``pool_index``, ``test_index``, ``val_index`` (int64
    numpy) give each example's index in the raw pooled dataset (:func:`load_raw`): provenance.

    ``canary`` (n_pool,) bool marks the planted canaries (None when none were planted): pool
    examples whose label was replaced by another class (:func:`plant_canaries`); ``y`` holds the
    planted labels, ``canary_true_y`` the original ones of the canaries, in pool order.
    """

    dataset: str
    seed: int
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    flip: bool
    pool_index: np.ndarray
    test_index: np.ndarray
    val_index: np.ndarray
    canary: np.ndarray | None = None
    canary_true_y: np.ndarray | None = None

    @property
    def n_canaries(self) -> int:
        return 0 if self.canary is None else int(self.canary.sum())

    def keep(self, n_models: int) -> np.ndarray:
        """Membership ``keep[model, example]`` (n_models, n_pool) bool; row 0 = target."""
        return keep_matrix(len(self.pool_index), self.seed, n_models)


def _check_size(name: str, value: int | None, *, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or value < minimum):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _prepare(
    x_raw: torch.Tensor,
    index: np.ndarray,
    spec: DatasetSpec,
    image_size: int | None,
    device: torch.device,
) -> torch.Tensor:
    """Select, move, scale to [0, 1], resize (bilinear) and normalise: (len(index), C, S, S)."""
    x = x_raw[torch.from_numpy(index)].to(device)
    x = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)
    if image_size is not None and image_size != spec.image_size and len(x):
        shrink = image_size < spec.image_size
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrink
        )
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


def make_pool(
    name: str,
    *,
    seed: int = 0,
    pool_size: int | None = None,
    test_size: int,
    val_size: int = 0,
    image_size: int | None = None,
    data_dir: str | Path = "data",
    download: bool = False,
    device: str | torch.device = "cpu",
    canaries: int = 0,
) -> Pool:
    """Shuffle the pooled dataset with ``numpy.random.default_rng(seed)`` and cut it.

    The first ``test_size`` shuffled examples are the test set, the next ``val_size`` the
    validation set, the next ``pool_size`` (all the rest when None) the pool. ``image_size``
    resizes every image to ``image_size x image_size`` (bilinear; e.g. digits 8x8 -> 32x32 for
    CNNs) before normalising. ``canaries`` mislabels that many pool examples
    (:func:`plant_canaries`). The result is a pure function of (dataset, seed, sizes,
    image_size, canaries); ``device`` only says where the tensors live.
    """
    spec = DATASETS[name]
    _check_size("seed", seed, minimum=0)
    _check_size("test_size", test_size, minimum=0)
    _check_size("val_size", val_size, minimum=0)
    _check_size("pool_size", pool_size, minimum=2)
    _check_size("image_size", image_size, minimum=1)
    _check_size("canaries", canaries, minimum=0)

    x_raw, y_raw = load_raw(name, data_dir=data_dir, download=download)
    n = len(y_raw)
    rest = n - test_size - val_size
    wanted = rest if pool_size is None else pool_size
    if rest < 2 or wanted > rest:
        raise ConfigError(
            f"test_size {test_size} + val_size {val_size} + pool_size "
            f"{'all (at least 2)' if pool_size is None else pool_size} exceeds the {n} examples "
            f"of {name!r} (train and test pooled); make the sizes smaller"
        )

    order = np.random.default_rng(seed).permutation(n)
    test_index = order[:test_size]
    val_index = order[test_size : test_size + val_size]
    pool_index = order[test_size + val_size : test_size + val_size + wanted]

    dev = torch.device(device)

    def cut(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = _prepare(x_raw, index, spec, image_size, dev)
        return x, y_raw[torch.from_numpy(index)].to(dev)

    x, y = cut(pool_index)
    x_test, y_test = cut(test_index)
    x_val, y_val = cut(val_index)
    canary = canary_true_y = None
    if canaries:
        if canaries > len(pool_index):
            raise ConfigError(
                f"data.canaries = {canaries} exceeds the pool's {len(pool_index)} examples"
            )
        canary, planted = plant_canaries(y.cpu().numpy(), canaries, seed, spec.num_classes)
        canary_true_y = y.cpu().numpy()[canary]
        y = torch.from_numpy(planted).to(dev)
    logger.info(
        "pool %s seed=%d: pool %d, val %d, test %d, images %s on %s",
        name, seed, len(pool_index), len(val_index), len(test_index), tuple(x.shape[1:]), dev,
    )  # fmt: skip
    return Pool(
        dataset=name,
        seed=seed,
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        x_val=x_val,
        y_val=y_val,
        num_classes=spec.num_classes,
        flip=spec.flip,
        pool_index=pool_index,
        test_index=test_index,
        val_index=val_index,
        canary=canary,
        canary_true_y=canary_true_y,
    )


def plant_canaries(
    y: np.ndarray, n: int, seed: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mislabel ``n`` examples: ``(canary (len(y),) bool, labels (len(y),) int64)``.

    Canaries after Aerni et al. 2024 ("Evaluations of Machine Learning Privacy Defenses are
    Misleading", CCS 2024): a mislabeled example can only be fitted by memorising it, so it is
    the kind of record membership inference finds first, and auditing a defense on canaries
    shows the leakage that population averages hide. The ``n`` examples are drawn without
    replacement from ``default_rng([seed, _CANARY_SALT])``; each gets a label drawn uniformly
    from the *other* classes. Every model trains on a random half of the pool (:func:`keep_row`),
    so each canary is a member of about half of the models, like every other example.
    """
    rng = np.random.default_rng([seed, _CANARY_SALT])
    canary = np.zeros(len(y), dtype=bool)
    chosen = rng.choice(len(y), size=n, replace=False)
    canary[chosen] = True
    labels = np.asarray(y, dtype=np.int64).copy()
    shift = rng.integers(1, num_classes, size=n)  # 1..C-1: never the original class
    labels[chosen] = (labels[chosen] + shift) % num_classes
    return canary, labels


def build_pool(cfg: DataConfig, *, device: torch.device | str = "cpu") -> Pool:
    """The pool a data config names (raw datasets are cached in-process)."""
    return make_pool(
        cfg.name,
        seed=cfg.seed,
        pool_size=cfg.pool_size,
        test_size=cfg.test_size,
        val_size=cfg.val_size,
        image_size=cfg.image_size,
        data_dir=cfg.data_dir,
        download=cfg.download,
        device=device,
        canaries=cfg.canaries,
    )


def check_data(cfg: DataConfig) -> None:
    """Load the raw dataset once (it is cached): a missing dataset stops here, clearly, before
    anything trains (:class:`~pptp.errors.DataUnavailableError` names the folder and layout)."""
    load_raw(cfg.name, data_dir=cfg.data_dir, download=cfg.download)


# ---------------------------------------------------------------------------------------------
# Membership.


def keep_row(n_pool: int, seed: int, row: int) -> np.ndarray:
    """Members of model ``row``: (n_pool,) bool with exactly ``n_pool // 2`` True.

    Drawn from ``np.random.default_rng([seed, row, _KEEP_SALT])``, so row ``i`` depends only on
    (n_pool, seed, i): growing a reference bank from 4 to 16 models keeps the first rows. Across
    rows each example is a member with probability 1/2 (not exactly half of the models).
    """
    _check_size("n_pool", n_pool, minimum=0)
    _check_size("seed", seed, minimum=0)
    _check_size("row", row, minimum=0)
    members = np.random.default_rng([seed, row, _KEEP_SALT]).permutation(n_pool)[: n_pool // 2]
    keep = np.zeros(n_pool, dtype=bool)
    keep[members] = True
    return keep


def keep_matrix(n_pool: int, seed: int, n_models: int) -> np.ndarray:
    """``keep[model, example]`` (n_models, n_pool) bool: rows :func:`keep_row` 0..n_models-1."""
    _check_size("n_models", n_models, minimum=1)
    return np.stack([keep_row(n_pool, seed, row) for row in range(n_models)])


# ---------------------------------------------------------------------------------------------
# Device-side batching and augmentation.


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
    _check_size("n", n, minimum=0)
    _check_size("batch_size", batch_size, minimum=1)
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
    _check_size("crop_pad", crop_pad, minimum=0)
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
