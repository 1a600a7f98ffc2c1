"""The reference-model bank: reference models trained once, stored with their signals.

Strong attacks (LiRA, RMIA) need reference models trained on random halves of the pool. They do
not depend on the trial being scored, so they are trained once per *recipe* (dataset, pool seed and
sizes, model, training recipe, query augmentation; plus the defense for adaptive audits) and reused
by every trial, run and study (DESIGN.md §3).

Layout, one folder per recipe, keyed by a hash of everything that determines it::

    <root>/<key>/recipe.json        the flat config the key was computed from
    <root>/<key>/ref-0003.npz       logits (n_pool, n_aug, n_classes) float32, keep (n_pool,) bool
    <root>/<key>/ref-0003.json      index, sha256 of the .npz, accuracy, seconds (the commit marker)

Reference ``i`` trains on keep row ``i + 1`` of the pool (row 0 is the target) with its own seed, so
growing the bank from K = 4 to K = 16 trains only references 4..15. Every file is written to a
temporary name and renamed into place, the ``.json`` last, so a killed writer leaves no entry that
looks finished. On load the checksum, shapes and keep row are verified; an entry that fails is
deleted and counted as missing (retrained, never used). Only ``.json`` (parsed as JSON) and ``.npz``
(``allow_pickle=False``) files of the bank's own names are read: a foreign file is never unpickled.

The training device, ``torch.compile`` and bf16 do not enter the key: they change no distribution,
only rounding. ``train.seed`` does not either: it seeds the target, and references get their own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pptp.config import AttackConfig, DefenseConfig, ProtectConfig, TrialConfig
from pptp.data import Pool, keep_row
from pptp.device import resolve_device
from pptp.signals import compute_signals
from pptp.train import build_model, build_pool, train

logger = logging.getLogger(__name__)

_NOT_IN_KEY = {
    "data.data_dir",
    "data.download",
    "train.device",
    "train.compile",
    "train.bf16",
    "train.seed",
}


@dataclass(frozen=True)
class ReferenceSignals:
    """K reference models' signals on the pool.

    ``logits: (K, n_pool, n_aug, n_classes)``, ``keep: (K, n_pool)`` bool.
    """

    logits: np.ndarray
    keep: np.ndarray
    test_acc: np.ndarray  # (K,)


def recipe(cfg: TrialConfig, *, adaptive: bool) -> TrialConfig:
    """The config references are trained with: the trial's, undefended unless ``adaptive``."""
    if adaptive:
        return cfg.replace(**{"attack.adaptive": True})
    return TrialConfig(
        data=cfg.data,
        model=cfg.model,
        train=cfg.train,
        protect=ProtectConfig(),
        defense=DefenseConfig(),
        attack=AttackConfig(query_augment=cfg.attack.query_augment),
    )


def recipe_key(cfg: TrialConfig, *, adaptive: bool) -> tuple[str, dict[str, Any]]:
    """The entry's key (16 hex digits) and the flat dict it hashes."""
    flat = recipe(cfg, adaptive=adaptive).to_flat()
    determining = {
        k: v
        for k, v in flat.items()
        if k not in _NOT_IN_KEY
        and (
            k.startswith(("data.", "model.", "train."))
            or k in {"attack.query_augment"}
            or (adaptive and k.startswith(("protect.", "defense.")))
        )
    }
    text = json.dumps(determining, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16], determining


class ReferenceBank:
    """A folder of reference entries. Safe to share between processes (atomic renames)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry_dir(self, cfg: TrialConfig, *, adaptive: bool = False) -> Path:
        key, _ = recipe_key(cfg, adaptive=adaptive)
        return self.root / key

    def missing(self, cfg: TrialConfig, n_refs: int, *, adaptive: bool = False) -> list[int]:
        """Indices in ``range(n_refs)`` without a valid stored reference (corrupt ones deleted)."""
        folder = self.entry_dir(cfg, adaptive=adaptive)
        return [i for i in range(n_refs) if self._read(folder, i) is None]

    def train_one(self, cfg: TrialConfig, index: int, *, adaptive: bool = False) -> Path:
        """Train reference ``index`` for ``cfg``'s recipe and store it; returns its ``.json``.

        Picklable and self-contained, so ``search/`` can run it as a Ray task.
        """
        key, determining = recipe_key(cfg, adaptive=adaptive)
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "recipe.json").exists():
            _atomic_write(folder / "recipe.json", json.dumps(determining, indent=1).encode())
        rcfg = recipe(cfg, adaptive=adaptive)
        pool = build_pool(rcfg.data, device=resolve_device(rcfg.train.device))
        seed = reference_seed(key, index)
        members = np.flatnonzero(keep_row(len(pool.y), rcfg.data.seed, index + 1))
        start = time.perf_counter()
        model = build_model(rcfg.model, pool, seed=seed)
        result = train(
            model,
            pool,
            members,
            dataclasses.replace(rcfg.train, seed=seed),
            protect=rcfg.protect,
            defense=rcfg.defense,
        )
        signals = compute_signals(
            model, pool.x, pool.y, augment=rcfg.attack.query_augment, flip=pool.flip
        )
        keep = np.zeros(len(pool.y), dtype=bool)
        keep[members] = True
        npz = folder / f"ref-{index:04d}.npz"
        _atomic_write(npz, _npz_bytes(logits=signals.logits, keep=keep))
        meta = {
            "index": index,
            "seed": seed,
            "sha256": _sha256(npz),
            "shape": list(signals.logits.shape),
            "test_acc": result.test_acc,
            "train_acc": result.train_acc,
            "seconds": time.perf_counter() - start,
        }
        marker = folder / f"ref-{index:04d}.json"
        _atomic_write(marker, json.dumps(meta, indent=1).encode())
        logger.info(
            "reference %d of %s: test_acc %.4f, %.1fs", index, key, result.test_acc, meta["seconds"]
        )
        return marker

    def load(
        self, cfg: TrialConfig, n_refs: int, *, pool: Pool | None = None, adaptive: bool = False
    ) -> ReferenceSignals:
        """The first ``n_refs`` references; raises if any is missing (see :meth:`ensure`).

        With ``pool`` given, each stored keep row is checked against the pool's.
        """
        folder = self.entry_dir(cfg, adaptive=adaptive)
        logits, keeps, accs = [], [], []
        for i in range(n_refs):
            entry = self._read(folder, i)
            if entry is None:
                raise FileNotFoundError(f"reference {i} is missing from {folder}; call ensure()")
            ref_logits, keep, meta = entry
            if pool is not None and not np.array_equal(
                keep, keep_row(len(pool.y), cfg.data.seed, i + 1)
            ):
                raise ValueError(f"{folder}: reference {i}'s keep row does not match the pool")
            logits.append(ref_logits)
            keeps.append(keep)
            accs.append(meta["test_acc"])
        if not logits:
            return ReferenceSignals(np.zeros((0,)), np.zeros((0,), dtype=bool), np.zeros((0,)))
        return ReferenceSignals(np.stack(logits), np.stack(keeps), np.asarray(accs))

    def ensure(
        self,
        cfg: TrialConfig,
        n_refs: int,
        *,
        adaptive: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[int]:
        """Train (here, one after another) every missing reference; returns what was trained."""
        todo = self.missing(cfg, n_refs, adaptive=adaptive)
        for done, i in enumerate(todo):
            logger.info("training reference %d (%d of %d missing)", i, done + 1, len(todo))
            self.train_one(cfg, i, adaptive=adaptive)
            if progress is not None:
                progress(done + 1, len(todo))
        return todo

    def _read(
        self, folder: Path, index: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
        marker, npz = folder / f"ref-{index:04d}.json", folder / f"ref-{index:04d}.npz"
        if not marker.exists():
            return None
        try:
            meta = json.loads(marker.read_text())
            if not isinstance(meta, dict) or meta.get("sha256") != _sha256(npz):
                raise ValueError("checksum mismatch")
            with np.load(npz, allow_pickle=False) as data:
                logits, keep = data["logits"], data["keep"]
            if list(logits.shape) != meta["shape"] or keep.shape != logits.shape[:1]:
                raise ValueError("shape mismatch")
            if keep.dtype != bool or logits.dtype != np.float32 or not np.isfinite(logits).all():
                raise ValueError("bad dtype or values")
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "bank entry %s is corrupt (%s): deleting it, it will be retrained", marker, error
            )
            for path in (marker, npz):
                path.unlink(missing_ok=True)
            return None
        return logits, keep, meta


def reference_seed(key: str, index: int) -> int:
    """The training seed of reference ``index`` of entry ``key`` (independent of the target's)."""
    return int(np.random.SeedSequence([int(key, 16), index]).generate_state(1)[0] % 2**31)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
