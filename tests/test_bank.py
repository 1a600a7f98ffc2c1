"""The reference bank: hashing, reuse, growth, corruption recovery, foreign files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from pptp.bank import ReferenceBank, recipe_key
from pptp.config import TrialConfig
from pptp.data import keep_row
from pptp.train import build_pool

TINY = TrialConfig.from_flat(
    {
        "data.pool_size": 200,
        "data.test_size": 100,
        "data.val_size": 0,
        "model.name": "mlp",
        "model.width": 16,
        "train.epochs": 1,
        "train.batch_size": 50,
        "train.warmup_epochs": 0,
        "train.crop_pad": 1,
        "attack.query_augment": False,
    }
)


def test_key_depends_on_what_determines_the_references() -> None:
    key, _ = recipe_key(TINY, adaptive=False)
    same = [
        {"data.data_dir": "/elsewhere"},
        {"train.device": "cpu"},
        {"train.seed": 7},
        {"protect.operator": "damp", "protect.strength": 0.5, "protect.split": 1},
        {"defense.name": "relaxloss"},
        {"attack.n_references": 16},
    ]
    for change in same:
        assert recipe_key(TINY.replace(**change), adaptive=False)[0] == key, change
    other = [
        {"data.seed": 1},
        {"model.width": 32},
        {"train.epochs": 2},
        {"train.lr": 0.2},
        {"attack.query_augment": True},
    ]
    for change in other:
        assert recipe_key(TINY.replace(**change), adaptive=False)[0] != key, change
    defended = TINY.replace(**{"defense.name": "relaxloss"})
    assert recipe_key(defended, adaptive=True)[0] != key
    assert recipe_key(defended, adaptive=True)[0] != recipe_key(TINY, adaptive=True)[0]


def test_reuse_and_growth(tmp_path: Path) -> None:
    bank = ReferenceBank(tmp_path)
    assert bank.ensure(TINY, 2) == [0, 1]
    folder = bank.entry_dir(TINY)
    first = {p.name: p.read_bytes() for p in folder.glob("ref-*")}
    assert bank.ensure(TINY, 2) == []  # warm: nothing trained
    assert bank.ensure(TINY, 3) == [2]  # growth trains only the new one
    assert {p.name: p.read_bytes() for p in folder.glob("ref-000[01]*")} == first

    pool = build_pool(TINY.data)
    refs = bank.load(TINY, 3, pool=pool)
    assert refs.logits.shape == (3, 200, 1, 10)
    for i in range(3):
        assert np.array_equal(refs.keep[i], keep_row(200, TINY.data.seed, i + 1))
    assert not np.array_equal(refs.logits[0], refs.logits[1])  # own seeds, own members
    assert json.loads((folder / "recipe.json").read_text())["model.width"] == 16


def test_corrupt_or_partial_entries_are_retrained_never_used(tmp_path: Path) -> None:
    bank = ReferenceBank(tmp_path)
    bank.ensure(TINY, 3)
    folder = bank.entry_dir(TINY)
    npz0 = folder / "ref-0000.npz"
    data = bytearray(npz0.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz0.write_bytes(bytes(data))  # flipped byte
    (folder / "ref-0001.json").unlink()  # writer killed before its commit marker
    (folder / "ref-0002.json").write_text("{not json")  # truncated marker
    assert bank.missing(TINY, 3) == [0, 1, 2]
    assert not npz0.exists()  # the corrupt entry was removed
    assert bank.ensure(TINY, 3) == [0, 1, 2]
    assert bank.missing(TINY, 3) == []


class _Bomb:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(_SENTINEL),))


_SENTINEL = Path("/tmp/pptp-bank-bomb-was-unpickled")


def test_foreign_pickle_is_never_unpickled(tmp_path: Path) -> None:
    bank = ReferenceBank(tmp_path)
    folder = bank.entry_dir(TINY)
    folder.mkdir(parents=True)
    _SENTINEL.unlink(missing_ok=True)
    payload = folder / "ref-0000.npz"
    payload.write_bytes(pickle.dumps({"logits": _Bomb()}))
    import hashlib

    sha = hashlib.sha256(payload.read_bytes()).hexdigest()
    (folder / "ref-0000.json").write_text(json.dumps({"sha256": sha, "shape": [200, 1, 10]}))
    assert bank.missing(TINY, 1) == [0]
    assert not _SENTINEL.exists()


def test_load_refuses_missing_references(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="reference 0 is missing"):
        ReferenceBank(tmp_path).load(TINY, 1)
