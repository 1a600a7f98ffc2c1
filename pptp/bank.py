"""The reference-model bank: reference models trained once, stored with their signals.

Strong attacks (LiRA, RMIA) need reference models trained on random halves of the pool. They do
not depend on the trial being scored, so they are trained once per *recipe* (dataset, pool seed and
sizes, model, training recipe; plus protect and defense for adaptive audits) and reused by every
trial, run and study (docs/design.md#reference-bank), queried the same way as the target.

Layout, one folder per entry, keyed by a hash of everything that determines it::

    <root>/<key>/recipe.json        the flat dict the key was computed from
    <root>/<key>/ref-0003.npz       logits (n_pool, n_queries, n_classes) float32, keep (n_pool,)
    <root>/<key>/ref-0003.json      index, sha256 of the .npz, accuracy, seconds (the commit marker)

A reference trained for a multi-fidelity study also holds its logits at the **rungs**, epochs of
the same training on the full run's schedule (:func:`pptp.train.training`), as
``logits_e0003`` ... in its ``.npz``, and lists them in its ``.json`` (``rungs: [3, 10]``). A
reference without the rungs a study asks for (trained before, or for other rungs) counts as
missing for that study and is trained again with them: an entry's rung signals are never
guessed, and the final ``logits`` stay the same array every study reads.

The key (:mod:`pptp.bank_key`) hashes everything that determines a reference: the recipe's
config keys, a user's model file and data, the queries, the layout's version and the code that
trains and queries references.

Every file is written to a temporary name and renamed into place, the ``.json`` last, so a killed
writer leaves no entry that looks finished. On load the checksum, shapes and keep row are
verified; an entry that fails is deleted and counted as missing (retrained, never used). Only
``.json`` (parsed as JSON) and ``.npz`` (``allow_pickle=False``) files of the bank's own names are
read: a foreign file is never unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pptp.bank_key import recipe, recipe_key, reference_seed, seed_key
from pptp.chance import chance_level
from pptp.config import TrialConfig
from pptp.data import Pool, build_pool
from pptp.device import resolve_device
from pptp.errors import ConfigError
from pptp.fileio import atomic_write
from pptp.models import build_model
from pptp.signals import compute_signals, resolve_queries
from pptp.train import TrainResult, training

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ReferenceSignals:
    """K reference models' signals on the pool.

    ``logits: (K, n_pool, n_aug, n_classes)``, ``keep: (K, n_pool)`` bool. ``queries`` names the
    ``n_aug`` queries and ``entry`` the bank entry (its key) they came from, so that signals
    shipped to a trial (``pptp.trial.run_trial(reference_signals=...)``) are checked against what
    the trial needs (empty for signals built by hand).
    """

    logits: np.ndarray
    keep: np.ndarray
    test_acc: np.ndarray  # (K,)
    queries: tuple[str, ...] = ()
    entry: str = ""
    rungs: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # epoch -> logits

    def at(self, epoch: int | None) -> ReferenceSignals:
        """The references' signals at rung ``epoch`` (their logits at that epoch of training),
        or these (the end of training) for None; ``KeyError`` for a rung they do not hold."""
        if epoch is None:
            return self
        if epoch not in self.rungs:
            raise KeyError(
                f"the reference signals hold rungs {sorted(self.rungs)}, not epoch {epoch}"
            )
        return dataclasses.replace(self, logits=self.rungs[epoch], rungs={})


@dataclass(frozen=True)
class ReferenceEntry:
    """One trained reference as it travels between processes: what a Ray task on any node returns
    to the driver, which writes it into its own bank (:meth:`ReferenceBank.store`), so that no
    node ever writes into a bank folder of its own disk by mistake.

    ``npz``: the ``ref-NNNN.npz`` file's bytes (``logits (n_pool, n_queries, n_classes)`` float32,
    ``keep (n_pool,)`` bool); ``meta``: the ``ref-NNNN.json`` content (its ``sha256`` is the
    checksum of ``npz``; ``host`` names the machine that trained it); ``recipe``: the flat dict
    ``key`` hashes (:func:`pptp.bank_key.recipe_key`).
    """

    key: str
    recipe: dict[str, Any]
    index: int
    npz: bytes
    meta: dict[str, Any]


def train_entry(
    cfg: TrialConfig,
    index: int,
    *,
    adaptive: bool = False,
    queries: Sequence[str] | None = None,
    rungs: Sequence[int] = (),
) -> ReferenceEntry:
    """Train reference ``index`` of ``cfg``'s recipe and return it, writing nothing; with
    ``rungs`` (epochs), its logits at each of them too (module docstring).

    Picklable and self-contained, so ``search/`` runs it as a Ray task on any node; reads only the
    dataset (``data.data_dir``). Reference ``i`` trains on keep row ``i + 1`` with
    :func:`pptp.bank_key.reference_seed`.
    """
    key, determining = recipe_key(cfg, adaptive=adaptive, queries=queries)
    rcfg = recipe(cfg, adaptive=adaptive)
    pool = build_pool(rcfg.data, device=resolve_device(rcfg.train.device))
    seed = reference_seed(seed_key(cfg, adaptive=adaptive), index)
    members = np.flatnonzero(pool.keep_row(index + 1))
    start = time.perf_counter()
    model = build_model(rcfg.model, pool, seed=seed)
    steps = training(
        model,
        pool,
        members,
        dataclasses.replace(rcfg.train, seed=seed),
        protect=rcfg.protect,
        defense=rcfg.defense,
        rungs=set(rungs),
    )
    at_rungs: dict[str, np.ndarray] = {}
    while True:
        try:
            epoch = next(steps)
        except StopIteration as done:
            result: TrainResult = done.value
            break
        logits = compute_signals(model, pool.x, pool.y, queries=determining["attack.queries"])
        at_rungs[rung_name(epoch)] = logits.logits
    signals = compute_signals(model, pool.x, pool.y, queries=determining["attack.queries"])
    keep = np.zeros(len(pool.y), dtype=bool)
    keep[members] = True
    npz = _npz_bytes(logits=signals.logits, keep=keep, **at_rungs)
    meta = {
        "index": index,
        "seed": seed,
        "sha256": hashlib.sha256(npz).hexdigest(),
        "shape": list(signals.logits.shape),
        "test_acc": result.test_acc,
        "train_acc": result.train_acc,
        "seconds": time.perf_counter() - start,
        "host": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),  # what it trained with (pptp/threads.py)
        "rungs": sorted(int(name.removeprefix("logits_e")) for name in at_rungs),
    }
    logger.info(
        "reference %d of %s: test_acc %.4f, %.1fs", index, key, result.test_acc, meta["seconds"]
    )
    if len(pool.y_test):
        level = chance_level(pool.y_test.cpu().numpy())
        if not result.test_acc > level.threshold:
            logger.warning(
                "reference %d of %s is at chance level (test accuracy %.4f, must exceed "
                "%.4f): trials that use it will fail",
                index,
                key,
                result.test_acc,
                level.threshold,
            )
    return ReferenceEntry(key=key, recipe=determining, index=index, npz=npz, meta=meta)


def rung_name(epoch: int) -> str:
    """The ``.npz`` array of a reference's logits at rung ``epoch``: ``logits_e0003``."""
    return f"logits_e{epoch:04d}"


def check_bank_root(root: str | Path) -> None:
    """Refuse (:class:`ConfigError`, key ``attack.bank_dir``) a ``root`` the bank must not write
    into: a file, or an existing folder that is not empty and holds no bank entry (no
    ``<key>/recipe.json``), such as ``/etc`` or a home folder. A missing or empty folder is a
    new bank."""
    path = Path(root)
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(
            f"attack.bank_dir = {root}: is a file, not a folder; give a folder for the "
            "reference bank (a new one, or an existing bank)",
            key="attack.bank_dir",
        )
    children = list(path.iterdir())
    if children and not any((child / "recipe.json").is_file() for child in children):
        raise ConfigError(
            f"attack.bank_dir = {root}: is a folder that is neither empty nor a reference bank "
            f"(none of its {len(children)} entries is a <key>/recipe.json); give a new or empty "
            "folder, or an existing bank",
            key="attack.bank_dir",
        )


class ReferenceBank:
    """A folder of reference entries. Safe to share between processes (atomic renames).

    Every method takes the config whose recipe the references follow, ``adaptive`` (references
    trained with its protect/defense sections too) and ``queries`` (default: resolved from the
    config; a trial passes its target's).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry_dir(
        self, cfg: TrialConfig, *, adaptive: bool = False, queries: Sequence[str] | None = None
    ) -> Path:
        key, _ = recipe_key(cfg, adaptive=adaptive, queries=queries)
        return self.root / key

    def missing(
        self,
        cfg: TrialConfig,
        n_refs: int,
        *,
        adaptive: bool = False,
        queries: Sequence[str] | None = None,
        rungs: Sequence[int] = (),
    ) -> list[int]:
        """Indices in ``range(n_refs)`` without a valid stored reference (corrupt ones deleted)
        holding every epoch of ``rungs``."""
        folder = self.entry_dir(cfg, adaptive=adaptive, queries=queries)
        return [i for i in range(n_refs) if self._read(folder, i, rungs) is None]

    def train_one(
        self,
        cfg: TrialConfig,
        index: int,
        *,
        adaptive: bool = False,
        queries: Sequence[str] | None = None,
        rungs: Sequence[int] = (),
    ) -> Path:
        """Train reference ``index`` for ``cfg``'s recipe and store it; returns its ``.json``.

        :func:`train_entry` then :meth:`store`. A reference at chance level is stored all the same
        (retraining would give the same model) with a warning; the trial that uses it fails
        (:func:`pptp.trial.attack_target`).
        """
        return self.store(
            train_entry(cfg, index, adaptive=adaptive, queries=queries, rungs=rungs)
        )

    def store(self, entry: ReferenceEntry) -> Path:
        """Write a trained reference (from :func:`train_entry`, possibly on another machine) into
        this bank, atomically, and return its ``.json`` (the commit marker, written last).

        The ``.npz`` bytes are checked against the entry's own checksum before anything is
        written, so an entry damaged on its way here is refused (``ValueError``), never stored.
        """
        if hashlib.sha256(entry.npz).hexdigest() != entry.meta.get("sha256"):
            raise ValueError(
                f"reference {entry.index} of {entry.key}: its bytes do not match its checksum"
            )
        folder = self.root / entry.key
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "recipe.json").exists():
            atomic_write(folder / "recipe.json", json.dumps(entry.recipe, indent=1).encode())
        atomic_write(folder / f"ref-{entry.index:04d}.npz", entry.npz)
        marker = folder / f"ref-{entry.index:04d}.json"
        atomic_write(marker, json.dumps(entry.meta, indent=1).encode())
        return marker

    def load(
        self,
        cfg: TrialConfig,
        n_refs: int,
        *,
        pool: Pool | None = None,
        adaptive: bool = False,
        queries: Sequence[str] | None = None,
        train_missing: bool = False,
        rungs: Sequence[int] = (),
    ) -> ReferenceSignals:
        """The first ``n_refs`` references, each read and verified once (with their logits at
        ``rungs``: :attr:`ReferenceSignals.rungs`).

        A missing (or corrupt) reference is trained here, one after another, with
        ``train_missing``, and raises ``FileNotFoundError`` without (see :meth:`ensure`). With
        ``pool`` given, each stored keep row is checked against the pool's.
        """
        folder = self.entry_dir(cfg, adaptive=adaptive, queries=queries)
        logits, keeps, accs = [], [], []
        at_rungs: dict[int, list[np.ndarray]] = {epoch: [] for epoch in rungs}
        for i in range(n_refs):
            entry = self._read(folder, i, rungs)
            if entry is None and train_missing:
                logger.info("training reference %d of %s", i, folder.name)
                self.train_one(cfg, i, adaptive=adaptive, queries=queries, rungs=rungs)
                entry = self._read(folder, i, rungs)
            if entry is None:
                raise FileNotFoundError(f"reference {i} is missing from {folder}; call ensure()")
            ref_logits, keep, meta = entry
            for epoch in rungs:
                at_rungs[epoch].append(meta["_rungs"][epoch])
            if pool is not None and not np.array_equal(keep, pool.keep_row(i + 1)):
                raise ValueError(f"{folder}: reference {i}'s keep row does not match the pool")
            logits.append(ref_logits)
            keeps.append(keep)
            accs.append(meta["test_acc"])
        names = tuple(resolve_queries(cfg) if queries is None else queries)
        if not logits:
            return ReferenceSignals(
                np.zeros((0,)), np.zeros((0,), dtype=bool), np.zeros((0,)), names, folder.name
            )
        return ReferenceSignals(
            np.stack(logits),
            np.stack(keeps),
            np.asarray(accs),
            names,
            folder.name,
            {epoch: np.stack(arrays) for epoch, arrays in at_rungs.items()},
        )

    def ensure(
        self,
        cfg: TrialConfig,
        n_refs: int,
        *,
        adaptive: bool = False,
        queries: Sequence[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
        rungs: Sequence[int] = (),
    ) -> list[int]:
        """Train (here, one after another) every missing reference; returns what was trained."""
        todo = self.missing(cfg, n_refs, adaptive=adaptive, queries=queries, rungs=rungs)
        for done, i in enumerate(todo):
            logger.info("training reference %d (%d of %d missing)", i, done + 1, len(todo))
            self.train_one(cfg, i, adaptive=adaptive, queries=queries, rungs=rungs)
            if progress is not None:
                progress(done + 1, len(todo))
        return todo

    def _read(
        self, folder: Path, index: int, rungs: Sequence[int] = ()
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
        """``(logits, keep, meta)`` of a stored reference, with ``meta["_rungs"]`` its logits
        at ``rungs``; None when it is missing, corrupt (deleted) or lacks one of ``rungs``."""
        marker, npz = folder / f"ref-{index:04d}.json", folder / f"ref-{index:04d}.npz"
        if not marker.exists():
            return None
        try:
            meta = json.loads(marker.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a mapping")
            if not set(rungs) <= set(meta.get("rungs") or ()):
                return None  # trained without these rungs: trained again with them
            if meta.get("sha256") != _sha256(npz):
                raise ValueError("checksum mismatch")
            with np.load(npz, allow_pickle=False) as data:
                logits, keep = data["logits"], data["keep"]
                meta["_rungs"] = {epoch: data[rung_name(epoch)] for epoch in rungs}
            if any(a.shape != logits.shape for a in meta["_rungs"].values()):
                raise ValueError("rung shape mismatch")
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
