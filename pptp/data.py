"""The data pool and the membership matrix (docs/design.md#pool-and-membership).

Stages, in order (the datasets themselves are :mod:`pptp.datasets`; batches of a pool are
sliced and augmented on the device by :mod:`pptp.batches`):

1. :func:`make_pool` shuffles a dataset's pooled train and test splits
   (:func:`~pptp.datasets.load_raw`) with a seed and cuts them into a held-out test set, a
   held-out validation set and the *pool*; every member set is a subset of the pool, so test
   and validation are disjoint from all of them. Images are scaled to [0, 1], optionally
   resized, and normalised per channel; the tensors live on the training device
   (docs/design.md#performance).
   Some pool examples may become canaries (:mod:`pptp.canary_kinds`: mislabeled, or
   out-of-distribution); :func:`build_pool` builds the pool a data config names.
2. :func:`keep_row` / :func:`keep_matrix` give the membership matrix ``keep[model, example]``
   (row 0 the target, rows 1.. reference models; LiRA, Carlini et al. 2022, "Membership Inference
   Attacks From First Principles"): each row is a random half of the pool, and row ``i`` does not
   depend on how many rows exist, so a reference bank can grow without changing its first models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pptp.canary_kinds import plant
from pptp.config import DataConfig
from pptp.datasets import DATASETS, DatasetSpec, load_raw
from pptp.errors import ConfigError, check_size
from pptp.own_data import is_own_data, load_source

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The pool.

_KEEP_SALT = 0x6B656570  # "keep" in ASCII: keeps membership draws apart from the pool shuffle
_CANARY_SALT = 0x63616E79  # "cany": keeps canary draws apart from the pool shuffle and keep rows
_COIN_SALT = 0x636F696E  # "coin": the canaries' membership coins, apart from every other draw


@dataclass(frozen=True, eq=False)
class Pool:
    """A dataset cut into pool, held-out validation and held-out test sets, ready on a device.

    Tensors: ``x`` (n_pool, C, H, W) float32, normalised per channel; ``y`` (n_pool,) int64;
    likewise ``x_test``/``y_test`` and ``x_val``/``y_val`` (n_val may be 0). Members of the target
    and of every reference model are drawn from the pool (:meth:`keep`), so test and validation
    are disjoint from every member set. ``pool_index``, ``test_index``, ``val_index`` (int64
    numpy) give each example's index in the raw pooled dataset
    (:func:`~pptp.datasets.load_raw`): provenance.

    ``canary`` (n_pool,) bool marks the planted canaries (None when none were planted): pool
    examples changed as ``canary_kind`` says (:mod:`pptp.canary_kinds`); ``x`` and ``y`` hold the
    planted images and labels, ``canary_true_y`` the original labels of the examples the canaries
    replaced, in pool order.
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
    canary_kind: str = "mislabeled"
    # (mean, std), each (1, C, 1, 1): x = (images in [0, 1] - mean) / std; None for hand-built pools
    normalisation: tuple[torch.Tensor, torch.Tensor] | None = None
    table: bool = False  # x holds feature vectors (n, F, 1, 1): no crops (pptp.own_data)

    @property
    def n_canaries(self) -> int:
        return 0 if self.canary is None else int(self.canary.sum())

    def keep(self, n_models: int) -> np.ndarray:
        """Membership ``keep[model, example]`` (n_models, n_pool) bool; row 0 = target. The
        canaries' entries are independent coin flips (:func:`keep_row`)."""
        return keep_matrix(len(self.pool_index), self.seed, n_models, canary=self.canary)

    def keep_row(self, row: int) -> np.ndarray:
        """Members of model ``row`` (0 = target): :func:`keep_row` of this pool."""
        return keep_row(len(self.pool_index), self.seed, row, canary=self.canary)


def _scaled(
    x_raw: torch.Tensor,
    index: np.ndarray,
    spec: DatasetSpec,
    image_size: int | None,
    device: torch.device,
) -> torch.Tensor:
    """Select, move, scale to [0, 1] (uint8) and resize (bilinear): (len(index), C, S, S)."""
    x = x_raw[torch.from_numpy(index)].to(device)
    x = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)
    if image_size is not None and image_size != spec.image_size and len(x) and not spec.table:
        shrink = image_size < spec.image_size
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrink
        )
    return x


def _statistics(spec: DatasetSpec, pool_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``(1, C, 1, 1)``: the spec's, or (a user's data, whose spec has
    none) the pool's own (for a table: per feature); a constant channel gets std 1."""
    device = pool_x.device
    if spec.mean:
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return mean, std
    mean = pool_x.mean(dim=(0, 2, 3), keepdim=True)
    std = pool_x.std(dim=(0, 2, 3), keepdim=True)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def dataset_spec(data: DataConfig) -> DatasetSpec:
    """The dataset ``data`` names: a built-in's registered spec (nothing loaded), or a user's
    data (:mod:`pptp.own_data`), read (cached) to learn its classes, shape and fingerprint."""
    return raw_data(data)[0] if is_own_data(data.name) else DATASETS[data.name]


def raw_data(data: DataConfig) -> tuple[DatasetSpec, torch.Tensor, torch.Tensor]:
    """``(spec, x, y)`` of the dataset ``data`` names, x (n, C, H, W) on the CPU (cached)."""
    if not is_own_data(data.name):
        spec = DATASETS[data.name]
        x, y = load_raw(data.name, data_dir=data.data_dir, download=data.download)
        return spec, x, y
    check_size("image_size", data.image_size, minimum=1)
    root = str(Path(data.data_dir).expanduser().absolute())
    source = load_source(data.name, root, data.image_size, data.label)
    spec = DatasetSpec(
        name=data.name,
        load=_not_a_loader,
        num_classes=len(source.classes),
        channels=int(source.x.shape[1]),
        image_size=int(source.x.shape[2]),
        mean=(),
        std=(),
        flip=False,  # a user's images: whether a mirror keeps the label is not known
        layout=source.where,
        source=source.where,
        n_examples=len(source.y),
        n_test=source.n_test,
        table=source.table,
        fingerprint=source.fingerprint,
    )
    return spec, source.x, source.y


def _not_a_loader(
    spec: DatasetSpec, root: Path, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    raise AssertionError("a user's data is read by pptp.own_data.load_source")


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
    canary_kind: str = "mislabeled",
    label: str = "label",
) -> Pool:
    """Shuffle the pooled dataset with ``numpy.random.default_rng(seed)`` and cut it.

    The first ``test_size`` shuffled examples are the test set, the next ``val_size`` the
    validation set, the next ``pool_size`` (all the rest when None) the pool. A dataset with its
    own test split (a user's ``test/`` folder or ``x_test``, ``DatasetSpec.n_test``) keeps that
    split as the test set and shuffles only the rest (``test_size`` is not used).
    ``image_size`` resizes every image to ``image_size x image_size`` (bilinear; e.g. digits
    8x8 -> 32x32 for CNNs) before normalising: with the spec's per-channel statistics, or for a
    user's data with the pool's own (per feature for a table). ``canaries`` turns that many
    pool examples into canaries of ``canary_kind`` (:func:`pptp.canary_kinds.plant`). The result
    is a pure function of (dataset, seed, sizes, image_size, canaries, canary_kind); ``device``
    only says where the tensors live.
    """
    check_size("seed", seed, minimum=0)
    check_size("test_size", test_size, minimum=0)
    check_size("val_size", val_size, minimum=0)
    check_size("pool_size", pool_size, minimum=2)
    check_size("image_size", image_size, minimum=1)
    check_size("canaries", canaries, minimum=0)
    data = DataConfig(
        name=name, image_size=image_size, data_dir=str(data_dir), download=download, label=label
    )
    spec, x_raw, y_raw = raw_data(data)
    n = len(y_raw) - spec.n_test
    if spec.n_test:
        test_size = 0
    rest = n - test_size - val_size
    wanted = rest if pool_size is None else pool_size
    if rest < 2 or wanted > rest:
        raise ConfigError(
            f"test_size {test_size} + val_size {val_size} + pool_size "
            f"{'all (at least 2)' if pool_size is None else pool_size} exceeds the {n} examples "
            f"of {name!r} ({'its training split' if spec.n_test else 'train and test pooled'})"
            "; make the sizes smaller"
        )

    order = np.random.default_rng(seed).permutation(n)
    test_index = order[:test_size] if not spec.n_test else np.arange(n, n + spec.n_test)
    val_index = order[test_size : test_size + val_size]
    pool_index = order[test_size + val_size : test_size + val_size + wanted]

    dev = torch.device(device)
    scaled = {
        part: _scaled(x_raw, index, spec, image_size, dev)
        for part, index in (("pool", pool_index), ("test", test_index), ("val", val_index))
    }
    mean, std = _statistics(spec, scaled["pool"])

    def cut(part: str, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = ((scaled[part] - mean) / std).contiguous()
        return x, y_raw[torch.from_numpy(index)].to(dev)

    x, y = cut("pool", pool_index)
    x_test, y_test = cut("test", test_index)
    x_val, y_val = cut("val", val_index)
    canary = canary_true_y = None
    if canaries:
        if canaries > len(pool_index):
            raise ConfigError(
                f"data.canaries = {canaries} exceeds the pool's {len(pool_index)} examples"
            )
        true_y = y.cpu().numpy()
        canary, x, planted = plant(
            canary_kind, x, true_y, canaries, seed, _CANARY_SALT, spec.num_classes, (mean, std)
        )
        canary_true_y = true_y[canary]
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
        canary_kind=canary_kind,
        table=spec.table,
        normalisation=(mean, std),
    )


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
        canary_kind=cfg.canary_kind,
        label=cfg.label,
    )


def check_data(cfg: DataConfig) -> None:
    """Load the raw dataset once (it is cached): a missing dataset stops here, clearly, before
    anything trains (:class:`~pptp.errors.DataUnavailableError` names the folder and layout)."""
    raw_data(cfg)


# ---------------------------------------------------------------------------------------------
# Membership.


def keep_row(n_pool: int, seed: int, row: int, *, canary: np.ndarray | None = None) -> np.ndarray:
    """Members of model ``row``: (n_pool,) bool.

    Drawn from ``np.random.default_rng([seed, row, _KEEP_SALT])``: a random ``n_pool // 2`` of the
    pool, so row ``i`` depends only on (n_pool, seed, i, canary) and growing a reference bank from
    4 to 16 models keeps the first rows. Across rows each example is a member with probability
    1/2 (not exactly half of the models).

    ``canary`` (n_pool,) bool: those entries are then replaced by independent fair coins from
    ``default_rng([seed, row, _COIN_SALT])``. A random half is not independent coins (knowing one
    canary is in makes the next a little less likely), and the one-run audit's bound
    (:mod:`pptp.audit`, Steinke et al. 2023) assumes each canary is included independently with
    probability 1/2; the rest of the pool keeps its exact half, so a row holds ``n_pool // 2``
    members give or take the canaries' coins.
    """
    check_size("n_pool", n_pool, minimum=0)
    check_size("seed", seed, minimum=0)
    check_size("row", row, minimum=0)
    members = np.random.default_rng([seed, row, _KEEP_SALT]).permutation(n_pool)[: n_pool // 2]
    keep = np.zeros(n_pool, dtype=bool)
    keep[members] = True
    if canary is not None and canary.any():
        if canary.shape != (n_pool,):
            raise ValueError(f"canary has shape {canary.shape}; the pool holds {n_pool} examples")
        coins = np.random.default_rng([seed, row, _COIN_SALT]).random(int(canary.sum()))
        keep[canary] = coins < 0.5
    return keep


def keep_matrix(
    n_pool: int, seed: int, n_models: int, *, canary: np.ndarray | None = None
) -> np.ndarray:
    """``keep[model, example]`` (n_models, n_pool) bool: rows :func:`keep_row` 0..n_models-1."""
    check_size("n_models", n_models, minimum=1)
    return np.stack([keep_row(n_pool, seed, row, canary=canary) for row in range(n_models)])
