"""The reference bank: hashing (recipe, queries, format, code), reuse, growth, one read per
entry, corruption recovery, foreign files."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pptp.bank
import pptp.bank_key
from pptp.bank import ReferenceBank, check_bank_root
from pptp.bank_key import _code_only, fingerprinted_files, recipe_key
from pptp.config import TrialConfig
from pptp.data import build_pool, keep_row
from pptp.errors import ConfigError

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
        {"attack.attacks": ["loss"]},
        {"train.bf16": False},
    ]
    for change in same:
        assert recipe_key(TINY.replace(**change), adaptive=False)[0] == key, change
    other = [
        {"data.seed": 1},
        {"model.width": 32},
        {"train.epochs": 2},
        {"train.lr": 0.2},
        {"attack.query_augment": True},
        {"data.canaries": 20},  # mislabeled examples change every model's training data
    ]
    for change in other:
        assert recipe_key(TINY.replace(**change), adaptive=False)[0] != key, change
    defended = TINY.replace(**{"defense.name": "relaxloss"})
    assert recipe_key(defended, adaptive=True)[0] != key
    assert recipe_key(defended, adaptive=True)[0] != recipe_key(TINY, adaptive=True)[0]


def test_key_carries_the_resolved_queries() -> None:
    # TINY trains with 1-pixel crops on digits: following training means clean + 3 shifts,
    # the same queries that forcing them gives, so both share one entry.
    follow = TINY.replace(**{"attack.query_augment": None})
    forced = TINY.replace(**{"attack.query_augment": True})
    clean = TINY  # query_augment: false
    assert recipe_key(follow, adaptive=False)[0] == recipe_key(forced, adaptive=False)[0]
    assert recipe_key(follow, adaptive=False)[0] != recipe_key(clean, adaptive=False)[0]
    key, fields = recipe_key(clean, adaptive=False, queries=("clean", "shift+x"))
    assert fields["attack.queries"] == ["clean", "shift+x"]
    assert key != recipe_key(clean, adaptive=False)[0]
    assert recipe_key(clean, adaptive=False)[1]["attack.queries"] == ["clean"]


def test_key_changes_with_the_code_and_the_format(monkeypatch: pytest.MonkeyPatch) -> None:
    key, fields = recipe_key(TINY, adaptive=False)
    assert fields["bank.code"] == pptp.bank_key.code_fingerprint()
    assert fields["bank.format"] == pptp.bank_key.BANK_FORMAT
    monkeypatch.setattr(pptp.bank_key, "code_fingerprint", lambda: "0123456789abcdef")
    changed_code = recipe_key(TINY, adaptive=False)[0]
    assert changed_code != key
    monkeypatch.setattr(pptp.bank_key, "BANK_FORMAT", pptp.bank_key.BANK_FORMAT + 1)
    assert recipe_key(TINY, adaptive=False)[0] not in (key, changed_code)


def test_fingerprint_covers_training_code_not_attacks() -> None:
    root = Path(pptp.bank.__file__).parent
    names = {str(p.relative_to(root)) for p in fingerprinted_files()}
    for training in (
        "train.py",
        "datasets.py",
        "data.py",
        "batches.py",
        "models.py",
        "layers.py",
        "selection.py",
        "operators.py",
        "defenses.py",
        "hooks.py",
        "signals.py",
        "config.py",
        "bank.py",
    ):
        assert training in names, training
    for reader in ("metrics.py", "trial.py", "chance.py", "attacks/lira.py"):
        assert reader not in names, reader
    assert not any(name.startswith(("localize", "attacks")) for name in names)  # packages too


def test_fingerprint_ignores_comments_and_docstrings_not_code() -> None:
    source = textwrap.dedent('''
        """Module docstring."""
        def f(x):
            """Doubles."""
            return 2 * x  # a comment
    ''')
    reworded = textwrap.dedent('''
        """Another module docstring."""

        def f(x):
            """Twice x, reworded."""
            # why: a new comment
            return 2 * x
    ''')
    changed = source.replace("2 * x", "3 * x")
    assert _code_only(source) == _code_only(reworded)
    assert _code_only(source) != _code_only(changed)
    assert _code_only('"""Only a docstring."""\ndef g():\n    """Doc."""\n') == _code_only(
        "def g():\n    pass\n"
    )


def test_new_code_retrains_the_same_models_in_a_new_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank = ReferenceBank(tmp_path)
    bank.ensure(TINY, 1)
    old_folder = bank.entry_dir(TINY)
    monkeypatch.setattr(pptp.bank_key, "code_fingerprint", lambda: "0123456789abcdef")
    assert bank.missing(TINY, 1) == [0]  # never silently reused
    bank.ensure(TINY, 1)
    new_folder = bank.entry_dir(TINY)
    assert new_folder != old_folder
    seeds = [
        json.loads((f / "ref-0000.json").read_text())["seed"] for f in (old_folder, new_folder)
    ]
    assert seeds[0] == seeds[1]  # the seed depends on the recipe, not on the code version
    with np.load(old_folder / "ref-0000.npz") as a, np.load(new_folder / "ref-0000.npz") as b:
        np.testing.assert_array_equal(a["logits"], b["logits"])


def test_load_reads_and_checksums_each_entry_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank = ReferenceBank(tmp_path)
    pool = build_pool(TINY.data)
    refs = bank.load(TINY, 2, pool=pool, train_missing=True)  # cold: trains both
    assert refs.logits.shape == (2, 200, 1, 10)
    calls: list[Path] = []
    real = pptp.bank._sha256

    def counted(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(pptp.bank, "_sha256", counted)
    monkeypatch.setattr(ReferenceBank, "train_one", lambda *a, **k: pytest.fail("warm: trains"))
    again = bank.load(TINY, 2, pool=pool, train_missing=True)
    assert len(calls) == 2  # one checksum per entry
    np.testing.assert_array_equal(again.logits, refs.logits)


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


def test_bank_root_refuses_a_folder_that_is_not_a_bank(tmp_path: Path) -> None:
    check_bank_root(tmp_path / "new")  # a new bank
    (tmp_path / "empty").mkdir()
    check_bank_root(tmp_path / "empty")
    (tmp_path / "bank" / "abc123").mkdir(parents=True)
    (tmp_path / "bank" / "abc123" / "recipe.json").write_text("{}")
    check_bank_root(tmp_path / "bank")  # an existing bank
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    for bad, says in (("home", "neither empty nor a reference bank"), ("file", "is a file")):
        with pytest.raises(ConfigError, match=says) as info:
            check_bank_root(tmp_path / bad)
        assert info.value.key == "attack.bank_dir"
