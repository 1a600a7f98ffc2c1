"""A user's own data: an image folder, arrays, a table, or a loader function.

``data.name`` picks the source (:data:`SOURCES`, or an import path for a loader) and
``data.data_dir`` says where it is:

==================  ==========================================================================
``image_folder``    a folder with one subfolder per class (class names sorted, as torchvision's
                    ``ImageFolder``), any format Pillow reads, converted to grayscale when every
                    image is, else RGB, and resized to ``data.image_size`` (bilinear; may be
                    omitted when every image has the same square size). With ``train/`` and
                    ``test/`` subfolders (or a ``test/`` beside the class folders), ``test/`` is
                    the held-out test set and ``data.test_size`` is not used.
``arrays``          a ``.npz`` file with ``x`` and ``y`` (and optionally ``x_test``, ``y_test``),
                    or a folder with ``x.npy``, ``y.npy`` (and ``x_test.npy``, ``y_test.npy``).
``table``           a ``.csv`` or ``.parquet`` file; ``data.label`` names the label column;
                    every other column is a feature. Text and boolean columns are one-hot
                    encoded (``pandas.get_dummies``, categories from the whole file).
``mod:function``    an import path (``package.module:function`` or ``file.py:function``) to a
                    function of no arguments returning ``(x, y)`` or ``(x, y, x_test, y_test)``
                    as tensors or arrays.
==================  ==========================================================================

Arrays (from ``arrays`` or a loader): ``x`` is ``(n, F)`` feature vectors (a table), ``(n, H, W)``
grayscale images, or ``(n, C, H, W)`` / ``(n, H, W, C)`` images with C in 1 or 3; uint8 images
are scaled from 0..255, float ones are taken as they are. Labels are integers 0..K-1 (each
class present; a table's text labels are mapped to 0..K-1 in sorted order).

Tables enter the pool as ``(n, F, 1, 1)``: one channel per feature, so that per-channel
standardisation with the pool's statistics standardises each feature
(:func:`pptp.data.make_pool`), and crops and flips never apply. A user's model gets the facts
(:class:`~pptp.datasets.DataFacts`); ``features`` is ``F``.

Every problem (a file Pillow or pandas cannot read, one class only, NaN or infinite features,
labels out of range, a missing label column) is one :class:`~pptp.errors.ConfigError` naming the
file or column. :func:`load_source` is cached in-process; its :attr:`Source.fingerprint` hashes
the files (or the loader's arrays), which the reference bank keys (:mod:`pptp.bank`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pptp.errors import ConfigError, DataUnavailableError
from pptp.imports import file_fingerprint, is_import_path, resolve, split
from pptp.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A user's data as read: ``x (n, C, S, S)`` uint8 or float32, ``y (n,)`` int64, the last
    ``n_test`` examples being the source's own test split (0: none). ``table``: ``x`` holds
    feature vectors as ``(n, F, 1, 1)``. ``classes``: class names in label order.
    ``fingerprint``: sha256 (16 hex) of the files or arrays."""

    x: torch.Tensor
    y: torch.Tensor
    n_test: int
    table: bool
    classes: tuple[str, ...]
    fingerprint: str
    where: str


@dataclass(frozen=True)
class Request:
    """What a source reader needs: where (absolute), the image size and the label column."""

    root: Path
    image_size: int | None
    label: str
    name: str


Reader = Callable[[Request], Source]
SOURCES: Registry[Reader] = Registry("data source")


def is_own_data(name: str) -> bool:
    """Whether ``data.name`` names a user's data (a source of :data:`SOURCES` or a loader)."""
    return name in SOURCES or is_import_path(name)


def load_source(name: str, root: str, image_size: int | None, label: str) -> Source:
    """Read the user's data ``name`` (a :data:`SOURCES` entry or a loader's import path) at
    ``root``; cached in-process while the files keep their sizes and modification times (the
    tensors are shared: do not modify them in place)."""
    return _cached_source(name, root, image_size, label, _stamp(name, Path(root)))


def _stamp(name: str, root: Path) -> str:
    """Sizes and modification times of the files a source reads (a loader: its source file)."""
    if is_import_path(name):
        where = split(name)[0]
        paths = [Path(where)] if where.endswith(".py") else []
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        paths = [root]
    digest = hashlib.sha256()
    for path in paths:
        if path.exists():
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _cached_source(name: str, root: str, image_size: int | None, label: str, stamp: str) -> Source:
    request = Request(Path(root), image_size, label, name)
    reader = _loader if is_import_path(name) else SOURCES[name]
    source = reader(request)
    logger.info(
        "data %s (%s): %d examples of shape %s, %d classes%s",
        name,
        source.where,
        len(source.y),
        tuple(source.x.shape[1:]),
        len(source.classes),
        f", {source.n_test} of them its test split" if source.n_test else "",
    )
    return source


# ---------------------------------------------------------------------------------------------
# Checks shared by every reader


def _labels(y: Any, *, where: str, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ConfigError(f"{where}: labels have shape {y.shape}; need ({n},), one per example")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.equal(np.mod(y, 1), 0).all():
            raise ConfigError(f"{where}: labels must be integers 0..K-1, got non-integer values")
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise ConfigError(f"{where}: labels must be integers 0..K-1, got {y.dtype}")
    return y.astype(np.int64)


def _check_classes(y: np.ndarray, y_test: np.ndarray | None, *, where: str) -> int:
    """K = number of classes; labels must be exactly 0..K-1 (every class present), at least 2."""
    present = np.unique(y)
    if len(present) < 2:
        raise ConfigError(
            f"{where}: one class only ({present.tolist()}); a classifier needs at least two"
        )
    k = len(present)
    if present[0] != 0 or present[-1] != k - 1:
        raise ConfigError(
            f"{where}: labels out of range: {present[:12].tolist()}"
            f"{' ...' if k > 12 else ''}; give labels 0..{k - 1}, each class present"
        )
    if y_test is not None and len(y_test) and (y_test.min() < 0 or y_test.max() >= k):
        raise ConfigError(
            f"{where}: test labels out of range ({int(y_test.min())}..{int(y_test.max())}); "
            f"the training labels are 0..{k - 1}"
        )
    return k


def _examples(x: Any, *, where: str) -> tuple[torch.Tensor, bool]:
    """Arrays as ``(n, C, S, S)`` (uint8 kept, else float32) and whether they are a table."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "uif b":
        raise ConfigError(f"{where}: x must hold numbers, got {arr.dtype}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0]
            raise ConfigError(f"{where}: NaN or infinite feature at index {tuple(bad.tolist())}")
    table = arr.ndim == 2
    if table:
        arr = arr[:, :, None, None]
    elif arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[1] not in (1, 3) and arr.shape[3] in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)
        if arr.shape[1] not in (1, 3):
            raise ConfigError(f"{where}: images {arr.shape} have neither 1 nor 3 channels")
    else:
        raise ConfigError(
            f"{where}: x has shape {arr.shape}; give (n, F) features, (n, H, W) or "
            "(n, C, H, W) images"
        )
    if not table and arr.shape[2] != arr.shape[3]:
        raise ConfigError(f"{where}: images are {arr.shape[2]}x{arr.shape[3]}, not square")
    return torch.from_numpy(np.ascontiguousarray(arr)), table


def _from_arrays(request: Request, arrays: dict[str, Any], *, where: str, digest: str) -> Source:
    """A source from ``x, y`` and optionally ``x_test, y_test``."""
    for needed in ("x", "y"):
        if needed not in arrays:
            raise ConfigError(f"{where}: no {needed!r}; give x and y (and x_test, y_test)")
    x, table = _examples(arrays["x"], where=f"{where} x")
    y = _labels(arrays["y"], where=f"{where} y", n=len(x))
    has_test = arrays.get("x_test") is not None
    x_test, y_test = x[:0], y[:0]
    if has_test:
        x_test, _ = _examples(arrays["x_test"], where=f"{where} x_test")
        y_test = _labels(arrays.get("y_test"), where=f"{where} y_test", n=len(x_test))
        if x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype:
            raise ConfigError(
                f"{where}: x_test {tuple(x_test.shape[1:])} {x_test.dtype} differs from x "
                f"{tuple(x.shape[1:])} {x.dtype}"
            )
    k = _check_classes(y, y_test if has_test else None, where=f"{where} y")
    return Source(
        x=torch.cat([x, x_test]),
        y=torch.from_numpy(np.concatenate([y, y_test])),
        n_test=len(y_test),
        table=table,
        classes=tuple(str(i) for i in range(k)),
        fingerprint=digest,
        where=where,
    )


def _array_digest(arrays: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        if arrays[name] is None:
            continue
        arr = np.ascontiguousarray(np.asarray(arrays[name]))
        digest.update(f"{name}{arr.dtype}{arr.shape}".encode() + arr.tobytes())
    return digest.hexdigest()[:16]


def _missing(request: Request, what: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"data.data_dir = {request.root}: no {what} there (data.name {request.name!r}); point "
        "data.data_dir at it (relative paths are relative to where search/run.py runs)"
    )


# ---------------------------------------------------------------------------------------------
# Sources


@SOURCES.register("arrays")
def read_arrays(request: Request) -> Source:
    """A ``.npz`` file, or a folder of ``x.npy``, ``y.npy`` (``x_test.npy``, ``y_test.npy``)."""
    root = request.root
    names = ("x", "y", "x_test", "y_test")
    arrays: dict[str, Any] = {}
    if root.is_file():
        try:
            with np.load(root, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k in names}
        except (OSError, ValueError, EOFError) as error:
            raise ConfigError(f"{root}: cannot read as .npz ({error})") from None
    elif root.is_dir() and (root / "x.npy").is_file():
        for name in names:
            path = root / f"{name}.npy"
            if path.is_file():
                try:
                    arrays[name] = np.load(path, allow_pickle=False)
                except (OSError, ValueError, EOFError) as error:
                    raise ConfigError(f"{path}: cannot read as .npy ({error})") from None
    else:
        raise _missing(request, "x.npy/y.npy folder or .npz file")
    return _from_arrays(request, arrays, where=str(root), digest=_array_digest(arrays))


@SOURCES.register("table")
def read_table(request: Request) -> Source:
    """A CSV or Parquet table: ``data.label`` is the label, every other column a feature."""
    import pandas as pd

    path = request.root
    if not path.is_file():
        raise _missing(request, ".csv or .parquet file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path)
    except Exception as error:  # pandas and pyarrow raise many kinds for a bad file
        raise ConfigError(
            f"{path}: cannot read the table ({type(error).__name__}: {error})"
        ) from None
    if request.label not in frame.columns:
        raise ConfigError(
            f"{path}: no label column {request.label!r} (data.label); columns: "
            f"{', '.join(map(str, frame.columns[:20]))}",
            key="data.label",
        )
    labels = frame[request.label]
    features = frame.drop(columns=[request.label])
    if features.shape[1] == 0:
        raise ConfigError(f"{path}: no feature column besides the label {request.label!r}")
    missing = [str(c) for c in features.columns if features[c].isna().any()]
    if missing:
        raise ConfigError(
            f"{path}: NaN (empty) values in column(s) {', '.join(missing[:10])}; fill or drop them"
        )
    if labels.isna().any():
        raise ConfigError(f"{path}: empty values in the label column {request.label!r}")
    text = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    text += [c for c in features.columns if pd.api.types.is_bool_dtype(features[c])]
    if text:
        features = pd.get_dummies(features, columns=sorted(set(text), key=str), dtype=np.float32)
    values = features.to_numpy(dtype=np.float32)
    bad = ~np.isfinite(values).all(axis=0)
    if bad.any():
        raise ConfigError(
            f"{path}: infinite values in column(s) {', '.join(map(str, features.columns[bad]))}"
        )
    if pd.api.types.is_numeric_dtype(labels):
        y = _labels(labels.to_numpy(), where=f"{path} column {request.label!r}", n=len(values))
        classes = tuple(str(i) for i in range(int(y.max()) + 1))
    else:
        names = sorted(labels.astype(str).unique())
        y = labels.astype(str).map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
        classes = tuple(names)
    _check_classes(y, None, where=f"{path} column {request.label!r}")
    return Source(
        x=torch.from_numpy(values[:, :, None, None].copy()),
        y=torch.from_numpy(np.array(y, dtype=np.int64)),
        n_test=0,
        table=True,
        classes=classes,
        fingerprint=file_fingerprint(path),
        where=str(path),
    )


def _loader(request: Request) -> Source:
    """``data.name: module:function``: the function's ``(x, y[, x_test, y_test])``."""
    function = resolve(request.name, key="data.name")
    try:
        out = function()
    except Exception as error:
        raise ConfigError(
            f"data.name = {request.name!r} failed ({type(error).__name__}: {error})",
            key="data.name",
        ) from None
    if isinstance(out, dict):
        arrays = dict(out)
    elif isinstance(out, tuple | list) and len(out) in (2, 4):
        arrays = dict(zip(("x", "y", "x_test", "y_test"), out, strict=False))
    else:
        raise ConfigError(
            f"data.name = {request.name!r} returned {type(out).__name__}; return (x, y) or "
            "(x, y, x_test, y_test) as tensors or arrays",
            key="data.name",
        )
    arrays = {
        k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in arrays.items()
    }
    where = f"data.name = {request.name!r}"
    return _from_arrays(request, arrays, where=where, digest=_array_digest(arrays))


@SOURCES.register("image_folder")
def read_image_folder(request: Request) -> Source:
    """One subfolder per class; ``test/`` (with ``train/``, or beside the class folders) is the
    test split. Images are read with Pillow, converted to L or RGB and resized to the image
    size."""
    root = request.root
    if not root.is_dir():
        raise _missing(request, "folder of class subfolders")
    train_dir = root / "train" if (root / "train").is_dir() else root
    test_dir = root / "test" if (root / "test").is_dir() else None
    classes = _class_folders(train_dir, skip={"train", "test"})
    if len(classes) < 2:
        raise ConfigError(
            f"{train_dir}: {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            "an image folder needs one subfolder per class, at least two"
        )
    files = [(f, i) for i, c in enumerate(classes) for f in _images(train_dir / c)]
    test_files: list[tuple[Path, int]] = []
    if test_dir is not None:
        unknown = sorted(set(_class_folders(test_dir, skip=set())) - set(classes))
        if unknown:
            raise ConfigError(
                f"{test_dir}: class folder(s) {', '.join(unknown)} are not in {train_dir}"
            )
        test_files = [(f, i) for i, c in enumerate(classes) for f in _images(test_dir / c)]
    empty = [c for i, c in enumerate(classes) if not any(j == i for _, j in files)]
    if empty:
        raise ConfigError(f"{train_dir}: class folder(s) {', '.join(empty)} hold no file")
    digest = hashlib.sha256()
    images = [_open(path, root, digest) for path, _ in [*files, *test_files]]
    color = any(img.mode not in ("1", "L", "LA", "I", "I;16", "F") for img in images)
    size = request.image_size or _common_size(images, root)
    x = np.stack([_pixels(img, size, color) for img in images])
    y = np.asarray([label for _, label in [*files, *test_files]], dtype=np.int64)
    return Source(
        x=torch.from_numpy(x),
        y=torch.from_numpy(y),
        n_test=len(test_files),
        table=False,
        classes=tuple(classes),
        fingerprint=digest.hexdigest()[:16],
        where=str(root),
    )


def _class_folders(folder: Path, *, skip: set[str]) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if p.is_dir() and p.name[:1] != "." and p.name not in skip
    )


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name[:1] != ".")


def _open(path: Path, root: Path, digest: Any) -> Any:
    """The image at ``path``, fully read (its bytes enter ``digest``); ConfigError naming it."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ConfigError(
            f"{path}: not an image Pillow can read ({type(error).__name__}: {error}); remove "
            "or replace it"
        ) from None
    digest.update(str(path.relative_to(root)).encode() + b"\0" + data + b"\0")
    return img


def _common_size(images: list[Any], root: Path) -> int:
    sizes = {img.size for img in images}
    if len(sizes) == 1:
        (w, h) = next(iter(sizes))
        if w == h:
            return int(w)
    raise ConfigError(
        f"{root}: images of sizes {sorted(sizes)[:4]}{' ...' if len(sizes) > 4 else ''}; set "
        "data.image_size to resize them all to one square size",
        key="data.image_size",
    )


def _pixels(img: Any, size: int, color: bool) -> np.ndarray:
    """``(C, size, size)`` uint8: L or RGB, resized with bilinear filtering."""
    from PIL import Image

    img = img.convert("RGB" if color else "L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
