"""What identifies a reference model in the bank (:mod:`pptp.bank`): its recipe and key.

The key hashes (:func:`recipe_key`): the recipe's config keys; a user's model file and data
(:func:`user_fingerprints`); the resolved queries
(:func:`pptp.signals.resolve_queries`, e.g. ``["clean"]``); :data:`BANK_FORMAT`, the version of
this layout; and :func:`code_fingerprint`, a hash of the code that determines how a reference is
trained and queried. A change to training therefore never silently reuses references trained by
older code: it makes a new entry. Reference ``i`` trains on keep row ``i + 1`` of the pool (row 0
is the target) with a seed derived from the recipe alone (not from the code, format or queries), so
a refactor that keeps training identical retrains identical models, and growing the bank from
K = 4 to K = 16 trains only references 4..15.

The training device, ``torch.compile`` and bf16 do not enter the key: they change no distribution,
only rounding (signals are always computed in float32, :mod:`pptp.signals`). Nor do the versions of
torch and numpy. ``train.seed`` does not either: it seeds the target, and references get their own.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pptp.config import AttackConfig, DefenseConfig, ProtectConfig, TrialConfig
from pptp.data import dataset_spec
from pptp.digests import config_digest
from pptp.imports import file_fingerprint, is_import_path, key_name, source_fingerprint
from pptp.own_data import is_own_data
from pptp.signals import resolve_queries

_NOT_IN_KEY = {
    "data.data_dir",
    "data.download",
    "train.device",
    "train.compile",
    "train.bf16",
    "train.seed",
}

#: version of the bank's layout and key; bump it when either changes
BANK_FORMAT = 2

#: modules and packages of ``pptp`` that cannot change how a reference is trained or queried
#: (they read signals or print): every other module, present or future, enters
#: :func:`code_fingerprint`
_NOT_TRAINING = (
    "attacks",
    "chance",
    "errors",
    "fidelity",
    "localize",
    "metric_catalogue",
    "metrics",
    "production",
    "result",
    "tables",
    "treatment",
    "trial",
)


@functools.cache
def code_fingerprint() -> str:
    """A hash (16 hex digits) of the ``pptp`` code that determines a reference's signals.

    The files of :func:`fingerprinted_files`, by relative path and syntax tree: comments,
    docstrings and formatting do not count, any change to code does (so does the Python version's
    AST format, which a Ray cluster shares anyway). Computed once per process.
    """
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in fingerprinted_files():
        rel = str(path.relative_to(root))
        digest.update(rel.encode() + b"\0" + _code_only(path.read_text()).encode() + b"\0")
    return digest.hexdigest()[:16]


def fingerprinted_files() -> list[Path]:
    """Every ``.py`` file under ``pptp/`` except those of :data:`_NOT_TRAINING` (attacks and
    metrics read signals, they do not make them), sorted: a new module counts unless it is
    listed there."""
    root = Path(__file__).resolve().parent
    return [
        path
        for path in sorted(root.rglob("*.py"))
        if path.relative_to(root).parts[0].removesuffix(".py") not in _NOT_TRAINING
    ]


def _code_only(source: str) -> str:
    """The syntax tree of ``source`` without docstrings, dumped (no comments, no positions)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


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


def recipe_key(
    cfg: TrialConfig, *, adaptive: bool, queries: Sequence[str] | None = None
) -> tuple[str, dict[str, Any]]:
    """The entry's key (16 hex digits) and the flat dict it hashes.

    ``queries`` default to :func:`~pptp.signals.resolve_queries` of ``cfg``; a trial passes its
    target's, so references are queried as the target is.
    """
    determining = _recipe_fields(cfg, adaptive=adaptive)
    determining["bank.format"] = BANK_FORMAT
    determining["bank.code"] = code_fingerprint()
    determining.update(user_fingerprints(cfg))
    determining["attack.queries"] = list(resolve_queries(cfg) if queries is None else queries)
    return config_digest(determining), determining


def user_fingerprints(cfg: TrialConfig) -> dict[str, str]:
    """What a user brings, hashed: ``data.fingerprint`` (a user's files or a loader's arrays,
    :mod:`pptp.own_data`), ``model.fingerprint`` (the source file of a user's model factory,
    :func:`pptp.imports.source_fingerprint`) and ``model.init_fingerprint`` (the ``model.init``
    checkpoint's bytes); empty for pptp's own datasets and models, whose
    code :func:`code_fingerprint` covers. A changed model file or re-exported data makes a new
    bank entry, never a reuse of stale references."""
    out = {}
    if is_own_data(cfg.data.name):
        out["data.fingerprint"] = dataset_spec(cfg.data).fingerprint
    if is_import_path(cfg.model.name):
        out["model.fingerprint"] = source_fingerprint(cfg.model.name, key="model.name")
    if cfg.model.init is not None:
        out["model.init_fingerprint"] = file_fingerprint(Path(cfg.model.init).expanduser())
    return out


def _recipe_fields(cfg: TrialConfig, *, adaptive: bool) -> dict[str, Any]:
    """The config keys that determine how a reference trains (the seed depends on these only).
    A user's file is keyed by its name, not its folder (:func:`pptp.imports.key_name`), so a
    project that moves keeps its bank."""
    flat = recipe(cfg, adaptive=adaptive).to_flat()
    for name in ("data.name", "model.name"):
        flat[name] = key_name(flat[name])
    if flat.get("model.init"):  # the checkpoint by its name; its content is fingerprinted
        flat["model.init"] = Path(flat["model.init"]).name
    return {
        k: v
        for k, v in flat.items()
        if k not in _NOT_IN_KEY
        and (
            k.startswith(("data.", "model.", "train."))
            or (adaptive and k.startswith(("protect.", "defense.")))
        )
    }


def seed_key(cfg: TrialConfig, *, adaptive: bool) -> str:
    """The hash reference seeds derive from: the recipe's config keys only (not the code, the
    format or the queries, so that a refactor retrains identical models)."""
    return config_digest(_recipe_fields(cfg, adaptive=adaptive))


def reference_seed(key: str, index: int) -> int:
    """The training seed of reference ``index`` of a recipe whose config fields hash to ``key``
    (16 hex digits; independent of the target's seed, the code version and the queries)."""
    return int(np.random.SeedSequence([int(key, 16), index]).generate_state(1)[0] % 2**31)
