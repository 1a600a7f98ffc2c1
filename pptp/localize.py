"""Localisation: where in a network privacy risk and generalization sit, per layer group.

DESIGN.md §2.1. The paper (Fang & Kim 2026, arXiv 2602.02296) *states* that generalization and
membership-privacy risk live in different regions of a network; how to measure that is this
project's *interpretation*, and which region is risky is measured here, never assumed.

The measurement, per seed ``s`` (``train.seed = s``; the base recipe, no protection, no defense):

- ``D`` = the target's members (``pool.keep(1)[0]``), ``D1`` = a seeded half of ``D``,
  ``D2 = D \\ D1``, ``H`` = the pool's held-out test set; at most ``max_examples`` of each (a
  seeded sample) are scored.
- Model **A** trains on ``D``, model **B** on ``D1``: same recipe and seed, so the same initial
  weights. On ``D1`` (members of both) and ``H`` (members of neither) the two models agree on each
  example's membership; on ``D2`` only A has seen it.
- **Distance** (:func:`normalised_distance`): ``d = ||f - f'|| / (||f|| + ||f'||)`` between two
  feature vectors (flattened per example, eval mode), in [0, 1] and scale-free, so groups of any
  width and activation scale compare; unlike 1 - cosine it sees a change of norm.
- **Privacy risk of g** = ``log(mean_D2 d_g / ((mean_D1 d_g + mean_H d_g) / 2))``
  (:func:`log_ratio`), with ``d_g`` the distance between A's output at g and the output at g of
  A with **g's weights swapped for B's** (:func:`swapped_group`): how much more g's own weights
  differ in what they compute where A and B differ in membership than where they do not. 0 = no
  membership-specific difference; a log-ratio, so it is symmetric and needs no other scale.
- ``risk_at_output`` (reported, not ranked): the same ratio for A's and B's outputs at g as they
  are, the literal reading of DESIGN.md §2.1. Each group's output depends on every group before
  it, so this measure *accumulates*: a difference planted in one group shows at every later
  group, growing toward the logits (tests/test_localize.py plants one). Swapping one group into
  an otherwise identical forward pass measures what that group's weights add, which is what PPTP
  protects; groups that A and B share exactly score exactly 0.
- **Generalization of g**: A's test-accuracy drop when g's parameters and buffers are reset to
  A's weights at the end of warm-up (``train.warmup_epochs``; the initial weights when it is 0),
  every other group kept: the re-initialisation robustness test of Zhang, Bengio & Singer 2019
  ("Are All Layers Created Equal?", arXiv 1902.01996) at the warm-up checkpoint. Chosen because
  it costs no training (one evaluation per group) and asks what PPTP's operators ask: what breaks
  when this group is held at its warm-up weights (``damp`` at s = 1 freezes it there, ``anchor``
  pulls it there, ``rewind`` resets it). It overstates the cost of protecting a group, since in
  protected training the free groups adapt around it. A linear probe would measure how separable
  the group's features are, which a later group need not use; not implemented.

Limits: the risk is relative to how much g differs between A and B overall, so a group that
drifts a lot everywhere and memorises a little scores low; on data a model fits without much
memorisation (digits) every score is close to 0 and within its seed spread.

Over seeds: mean and sample standard deviation (ddof=1; 0 for one seed). Cost: two trainings
per seed (A on |D|, B on |D|/2 examples), then per group four forward passes (up to the group)
over the scored examples and one test-set evaluation: seconds next to the trainings.

Layering: :func:`localize` trains and calls :func:`privacy_risk` and :func:`generalization`, which
take any trained models (the tests plant a memorising group through them). Results are
:class:`LocalizationResult`, saved as JSON only (never pickle) with the identity of the data and
model they belong to, which :func:`check_matches` compares with a study's config.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pptp.config import DefenseConfig, ProtectConfig, TrialConfig
from pptp.data import Pool
from pptp.device import channels_last, resolve_device
from pptp.errors import ConfigError
from pptp.layers import LayerGroup, group_output_modules, layer_groups
from pptp.train import EpochLog, build_model, build_pool, evaluate, train

logger = logging.getLogger(__name__)

FORMAT = "pptp.localization"
VERSION = 1

#: fewest members: each half needs at least 2 examples for a mean distance to mean anything
MIN_MEMBERS = 4

#: config keys that say which data and which model a localisation belongs to
IDENTITY_KEYS = (
    "data.name",
    "data.seed",
    "data.pool_size",
    "data.test_size",
    "data.val_size",
    "data.image_size",
    "model.name",
    "model.width",
    "model.norm",
)

#: train keys left out of the recipe digest: the seed is set per localisation seed, the rest only
#: says where and how fast the recipe runs
_NOT_RECIPE = ("seed", "device", "compile")

_SPLIT_SALT = 0x6C6F63  # "loc": keeps the D1/D2 split apart from the pool and keep draws
_SAMPLE_SALT = 0x736D70  # "smp": the subsample of each scored set
_EPS = 1e-8  # keeps the log-ratio finite when both distances vanish (identical groups)
_PROGRESS_EVERY_S = 10.0  # epoch progress lines during long trainings, at most this often

Progress = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class GroupScore:
    """One layer group's scores over seeds (``per_seed_*`` in the order of the result's seeds).

    ``privacy_risk``: the swapped-group log-ratio (module docstring), the ranked score;
    ``risk_at_output``: the log-ratio of A's and B's outputs at the group (cumulative, context);
    ``generalization``: test-accuracy drop (a fraction: 0.12 = 12 points) when the group is reset
    to its warm-up weights. ``distance_d1/d2/held_out``: per seed, the mean swapped-group
    distances on D1, D2 and held-out behind the risk.
    """

    group: str
    privacy_risk_mean: float
    privacy_risk_std: float
    generalization_mean: float
    generalization_std: float
    risk_at_output_mean: float
    risk_at_output_std: float
    per_seed_privacy_risk: tuple[float, ...]
    per_seed_generalization: tuple[float, ...]
    per_seed_risk_at_output: tuple[float, ...]
    distance_d1: tuple[float, ...]
    distance_d2: tuple[float, ...]
    distance_held_out: tuple[float, ...]


@dataclass(frozen=True)
class LocalizationResult:
    """Per-group privacy risk and generalization of one model on one dataset.

    ``groups`` are in model (forward) order. ``config`` is the flat base config the models were
    trained with (``train.seed`` as given; each seed overrides it). ``test_acc_a``/``_b`` per
    seed; ``sizes``: number of examples in ``D``, ``D1``, ``D2`` and ``H`` and how many of each
    were scored.
    """

    model: str
    dataset: str
    config: dict[str, Any] = field(compare=True, hash=False)
    recipe_digest: str
    seeds: tuple[int, ...]
    groups: tuple[GroupScore, ...]
    test_acc_a: tuple[float, ...]
    test_acc_b: tuple[float, ...]
    sizes: dict[str, int] = field(compare=True, hash=False)
    seconds: float = 0.0
    distance: str = "l2 / (|fA| + |fB|)"
    generalization_method: str = "warmup_reset"

    @property
    def identity(self) -> dict[str, Any]:
        """The :data:`IDENTITY_KEYS` of :attr:`config`."""
        return {k: self.config.get(k) for k in IDENTITY_KEYS}

    def ranked(self, k: int | None = None) -> tuple[GroupScore, ...]:
        """Groups by privacy risk, highest first (ties keep model order); the first ``k``."""
        order = sorted(self.groups, key=lambda g: -g.privacy_risk_mean)
        return tuple(order if k is None else order[:k])

    def rank(self, group: str) -> int:
        """1 for the riskiest group."""
        names = [g.group for g in self.ranked()]
        if group not in names:
            raise ConfigError(f"no layer group {group!r}; groups: {', '.join(names)}")
        return names.index(group) + 1

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per group, in model order (the CSV's rows)."""
        rows = []
        for g in self.groups:
            rows.append(
                {
                    "group": g.group,
                    "rank": self.rank(g.group),
                    "privacy_risk_mean": g.privacy_risk_mean,
                    "privacy_risk_std": g.privacy_risk_std,
                    "generalization_mean": g.generalization_mean,
                    "generalization_std": g.generalization_std,
                    "risk_at_output_mean": g.risk_at_output_mean,
                    "risk_at_output_std": g.risk_at_output_std,
                    "distance_d1": float(np.mean(g.distance_d1)),
                    "distance_d2": float(np.mean(g.distance_d2)),
                    "distance_held_out": float(np.mean(g.distance_held_out)),
                }
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {"format": FORMAT, "version": VERSION, **_lists(data)}

    def save(self, path: str | Path) -> Path:
        """Write JSON to ``path`` (atomically: a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], *, source: str = "localization"
    ) -> LocalizationResult:
        """Inverse of :meth:`to_json`; anything else is a ConfigError naming ``source``."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ConfigError(
                f'{source} is not a localisation result (no "format": "{FORMAT}"); give the '
                "localization.json that search/localize.py wrote"
            )
        if data.get("version") != VERSION:
            raise ConfigError(
                f"{source} has localisation format version {data.get('version')!r}; this code "
                f"reads version {VERSION}: re-run search/localize.py"
            )
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            body = {k: v for k, v in data.items() if k in fields}
            body["groups"] = tuple(
                GroupScore(**{k: _tuples(v) for k, v in g.items()}) for g in data["groups"]
            )
            body["seeds"] = tuple(int(s) for s in data["seeds"])
            for key in ("test_acc_a", "test_acc_b"):
                body[key] = tuple(float(v) for v in data[key])
            return cls(**body)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{source} is not a valid localisation result ({err})") from None

    @classmethod
    def load(cls, path: str | Path) -> LocalizationResult:
        """Read what :meth:`save` wrote; a missing or malformed file is a ConfigError."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"no localisation result at {path.absolute()}; run `python search/localize.py "
                "--space <space>` first and point study.localization.run at its localization.json"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ConfigError(f"cannot read localisation result {path} ({err})") from None
        return cls.from_json(data, source=str(path))


def _lists(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def recipe_digest(cfg: TrialConfig) -> str:
    """Hash of the training recipe, without the seed and where it runs (:data:`_NOT_RECIPE`)."""
    recipe = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in _NOT_RECIPE}
    return _digest(recipe)


def _digest(payload: Mapping[str, Any]) -> str:
    import hashlib

    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_matches(
    result: LocalizationResult, cfg: TrialConfig, *, source: str = "localization"
) -> None:
    """Raise :class:`ConfigError` naming every identity key where ``result`` and ``cfg`` differ.

    Identity = :data:`IDENTITY_KEYS` (dataset, pool seed and sizes, image size, model name,
    width and norm). A different training recipe only logs a warning: the localisation still
    describes the same model on the same data, trained a little differently.
    """
    flat = cfg.to_flat()
    diffs = [
        f"{k} = {result.config.get(k)!r} there, {flat[k]!r} here"
        for k in IDENTITY_KEYS
        if _normal(result.config.get(k)) != _normal(flat[k])
    ]
    if diffs:
        raise ConfigError(
            f"{source} belongs to another model or dataset: {'; '.join(diffs)}. Run "
            "search/localize.py with this space to localise this model"
        )
    if result.recipe_digest != recipe_digest(cfg):
        changed = [
            k
            for k, v in flat.items()
            if k.startswith("train.")
            and k.partition(".")[2] not in _NOT_RECIPE
            and _normal(result.config.get(k)) != _normal(v)
        ]
        logger.warning(
            "%s was measured with another training recipe (%s differ); using it anyway",
            source,
            ", ".join(changed) or "digest",
        )


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------------------------
# Privacy risk: distances between two models' outputs at each group


def _check_groups(model: nn.Module) -> tuple[LayerGroup, ...]:
    groups = layer_groups(model)
    if len(groups) < 2:
        raise ConfigError(
            f"{type(model).__name__} has a single layer group ({groups[0].name}); localisation "
            "compares groups, so it needs a model with at least two (see pptp/models.py)"
        )
    return groups


class _Captured(Exception):
    """Raised by a capture hook once it has the output it waits for: the rest of the forward
    pass is not needed."""


@torch.no_grad()
def _output_at(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s output ``(n, features)`` when ``model`` runs on ``x``; stops the pass there."""
    store: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        tensor = out[0] if isinstance(out, tuple | list) else out
        store.append(tensor.detach().flatten(1).float())
        raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        model(channels_last(x))
    except _Captured:
        pass
    finally:
        handle.remove()
    if not store:
        raise ConfigError(
            f"{type(model).__name__}.forward never ran the group output module {module}; the "
            "layer groups do not match the forward pass"
        )
    return store[0]


def normalised_distance(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """``||fa - fb|| / (||fa|| + ||fb||)`` per row of ``(n, features)``: (n,) in [0, 1].

    0 where both rows are zero. Scale-free per example, so groups of any width compare, and
    unlike 1 - cosine it sees a change of norm (e.g. more confident logits).
    """
    norm = fa.norm(dim=1) + fb.norm(dim=1)
    return (fa - fb).norm(dim=1) / norm.clamp_min(torch.finfo(torch.float32).tiny)


@torch.no_grad()
def output_distances(
    model_a: nn.Module,
    model_b: nn.Module,
    group: str,
    x: torch.Tensor,
    *,
    batch_size: int = 512,
) -> np.ndarray:
    """``d (n,)``: :func:`normalised_distance` of the two models' outputs at ``group``.

    ``x: (n, C, H, W)`` on the models' device; both models in eval mode, features flattened.
    """
    out_a = group_output_modules(model_a)[group]
    out_b = group_output_modules(model_b)[group]
    parts = []
    with _eval_mode(model_a, model_b):
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            d = normalised_distance(
                _output_at(model_a, out_a, batch), _output_at(model_b, out_b, batch)
            )
            parts.append(d.cpu().numpy().astype(np.float64))
    return np.concatenate(parts) if parts else np.zeros(0)


@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


@contextmanager
def swapped_group(
    model: nn.Module, donor: Mapping[str, torch.Tensor], group: str
) -> Iterator[nn.Module]:
    """``model`` with ``group``'s parameters and buffers taken from the ``state_dict`` ``donor``
    (another model's, or an earlier one of the same model), restored on exit."""
    keys = group_state_keys(model)[group]
    missing = [k for k in keys if k not in donor]
    if missing:
        raise ConfigError(
            f"the donor state lacks {len(missing)} entries of group {group!r}, "
            f"e.g. {missing[0]}: it belongs to another architecture"
        )
    state = model.state_dict()  # shares storage with the model: copy_ writes into it
    saved = {k: state[k].clone() for k in keys}
    with torch.no_grad():
        for k in keys:
            state[k].copy_(donor[k])
    try:
        yield model
    finally:
        with torch.no_grad():
            for k in keys:
                state[k].copy_(saved[k])


@dataclass(frozen=True)
class PrivacyRisk:
    """One seed's privacy scores per group, in model order (see the module docstring).

    ``distance_*``: mean swapped-group distances on D1, D2 and held-out (the risk's inputs).
    """

    groups: tuple[str, ...]
    risk: tuple[float, ...]
    risk_at_output: tuple[float, ...]
    distance_d1: tuple[float, ...]
    distance_d2: tuple[float, ...]
    distance_held_out: tuple[float, ...]


def log_ratio(d1: float, d2: float, held_out: float) -> float:
    """``log((d2 + eps) / ((d1 + held_out) / 2 + eps))``: 0 when D2 looks like the others."""
    return math.log((d2 + _EPS) / (0.5 * (d1 + held_out) + _EPS))


def privacy_risk(
    model_a: nn.Module,
    model_b: nn.Module,
    x_d1: torch.Tensor,
    x_d2: torch.Tensor,
    x_held_out: torch.Tensor,
    *,
    batch_size: int = 512,
) -> PrivacyRisk:
    """Score every group of A (trained on ``D1 ∪ D2``) against B (trained on ``D1`` only).

    ``x_d1``, ``x_d2``, ``x_held_out``: inputs ``(n, C, H, W)`` of the three sets, on the models'
    device, each non-empty. Per group g: the distance between A's output at g and the output at g
    of A with g's weights swapped for B's (:func:`swapped_group`), and :func:`log_ratio` of its
    means: the risk. ``risk_at_output`` is the same ratio for A against B as they are.
    """
    groups = [g.name for g in _check_groups(model_a)]
    other = [g.name for g in layer_groups(model_b)]
    if groups != other:
        raise ConfigError(f"models A and B have different layer groups: {groups} vs {other}")
    sets = {"d1": x_d1, "d2": x_d2, "h": x_held_out}
    for name, x in sets.items():
        if len(x) == 0:
            raise ConfigError(f"the {name} set is empty; localisation needs examples in each set")
    hybrid, donor = copy.deepcopy(model_a), model_b.state_dict()
    swapped: dict[str, dict[str, float]] = {k: {} for k in sets}
    plain: dict[str, dict[str, float]] = {k: {} for k in sets}
    for g in groups:
        for key, x in sets.items():
            plain[key][g] = float(
                output_distances(model_a, model_b, g, x, batch_size=batch_size).mean()
            )
        with swapped_group(hybrid, donor, g):
            for key, x in sets.items():
                swapped[key][g] = float(
                    output_distances(model_a, hybrid, g, x, batch_size=batch_size).mean()
                )
    return PrivacyRisk(
        groups=tuple(groups),
        risk=tuple(log_ratio(swapped["d1"][g], swapped["d2"][g], swapped["h"][g]) for g in groups),
        risk_at_output=tuple(
            log_ratio(plain["d1"][g], plain["d2"][g], plain["h"][g]) for g in groups
        ),
        distance_d1=tuple(swapped["d1"][g] for g in groups),
        distance_d2=tuple(swapped["d2"][g] for g in groups),
        distance_held_out=tuple(swapped["h"][g] for g in groups),
    )


# --------------------------------------------------------------------------------------------
# Generalization: reset one group to its early weights


def group_state_keys(model: nn.Module) -> dict[str, list[str]]:
    """``{group: [state_dict keys]}``: parameters and buffers (BatchNorm statistics) per group."""
    groups = layer_groups(model)
    out: dict[str, list[str]] = {g.name: [] for g in groups}
    for key in model.state_dict():
        for g in groups:
            if g.matches(key):
                out[g.name].append(key)
                break
    return out


@torch.no_grad()
def generalization(
    model: nn.Module,
    early_state: Mapping[str, torch.Tensor],
    x_test: torch.Tensor,
    y_test: torch.Tensor,
) -> dict[str, float]:
    """``{group: acc(model) - acc(model with the group reset to early_state)}`` on the test set.

    ``early_state``: a ``state_dict`` of the same model earlier in training (the end of warm-up).
    Only the group's entries are reset, one group at a time; the model is restored after each.
    """
    groups = [g.name for g in _check_groups(model)]
    base = evaluate(model, x_test, y_test)
    out: dict[str, float] = {}
    for group in groups:
        with swapped_group(model, early_state, group):
            out[group] = base - evaluate(model, x_test, y_test)
    return out


# --------------------------------------------------------------------------------------------
# The whole measurement


def split_members(members: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(D1, D2)``: a seeded half of ``members`` and the rest, both sorted pool indices."""
    members = np.asarray(members)
    if len(members) < MIN_MEMBERS:
        raise ConfigError(
            f"the member set has {len(members)} examples; localisation halves it and needs at "
            f"least {MIN_MEMBERS} (make data.pool_size larger)"
        )
    order = np.random.default_rng([seed, _SPLIT_SALT]).permutation(len(members))
    half = len(members) // 2
    return np.sort(members[order[:half]]), np.sort(members[order[half:]])


def _sample(n: int, k: int | None, seed: int, which: int) -> np.ndarray:
    if k is None or n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, _SAMPLE_SALT, which]).choice(n, k, replace=False))


def check_localizable(cfg: TrialConfig, pool: Pool | None = None) -> None:
    """The cheap checks :func:`localize` makes before training: raise ConfigError on bad input.

    Builds the pool (unless given) and the model: a model with a single layer group or a member
    set smaller than :data:`MIN_MEMBERS` is an error.
    """
    pool = pool if pool is not None else build_pool(cfg.data)
    _check_groups(build_model(cfg.model, pool, seed=cfg.train.seed))
    split_members(np.flatnonzero(pool.keep(1)[0]), 0)
    if len(pool.y_test) == 0:
        raise ConfigError("data.test_size is 0; localisation needs held-out examples")


def localize(
    cfg: TrialConfig,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    progress: Progress | None = None,
    max_examples: int | None = 2000,
    pool: Pool | None = None,
) -> LocalizationResult:
    """Measure per-group privacy risk and generalization of ``cfg``'s model on its data.

    For each seed: train A on the target's members and B on a seeded half of them with ``cfg``'s
    recipe (``train.seed`` = the seed; protection and defense off), then score every group (module
    docstring). ``progress`` receives one line when each training starts and ends (and epoch
    lines every ~10 s of a long training). ``max_examples`` caps each scored set (D1, D2,
    held-out; a seeded sample); None scores all. ``pool`` reuses a pool already built for
    ``cfg.data`` on the training device.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ConfigError("localize needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {list(seeds)} repeat a seed")
    say = progress or (lambda line: logger.info("%s", line))
    device = resolve_device(cfg.train.device)
    pool = pool if pool is not None else build_pool(cfg.data, device=device)
    check_localizable(cfg, pool)
    members = np.flatnonzero(pool.keep(1)[0])
    start = time.perf_counter()
    per_seed: list[tuple[PrivacyRisk, dict[str, float], float, float]] = []
    sizes: dict[str, int] = {}
    for i, seed in enumerate(seeds, start=1):
        tag = f"seed {i}/{len(seeds)} (train.seed {seed})"
        seed_cfg = cfg.replace(**{"train.seed": seed})
        d1, d2 = split_members(members, seed)
        model_a, early, acc_a = _train_tracked(seed_cfg, pool, members, device, f"{tag}: A", say)
        model_b, _, acc_b = _train_tracked(seed_cfg, pool, d1, device, f"{tag}: B", say)
        t0 = time.perf_counter()
        s1, s2, sh = (
            _sample(len(d1), max_examples, seed, 1),
            _sample(len(d2), max_examples, seed, 2),
            _sample(len(pool.y_test), max_examples, seed, 3),
        )
        risk = privacy_risk(
            model_a,
            model_b,
            pool.x[torch.as_tensor(d1[s1], device=pool.x.device)].to(device),
            pool.x[torch.as_tensor(d2[s2], device=pool.x.device)].to(device),
            pool.x_test[torch.as_tensor(sh, device=pool.x_test.device)].to(device),
        )
        gen = generalization(model_a, early, pool.x_test.to(device), pool.y_test.to(device))
        say(f"{tag}: scored {len(risk.groups)} groups in {time.perf_counter() - t0:.1f}s")
        per_seed.append((risk, gen, acc_a, acc_b))
        sizes = {
            "members": len(members),
            "d1": len(d1),
            "d2": len(d2),
            "held_out": len(pool.y_test),
            "scored_d1": len(s1),
            "scored_d2": len(s2),
            "scored_held_out": len(sh),
        }
    return LocalizationResult(
        model=cfg.model.name,
        dataset=cfg.data.name,
        config=cfg.to_flat(),
        recipe_digest=recipe_digest(cfg),
        seeds=seeds,
        groups=_aggregate(per_seed),
        test_acc_a=tuple(p[2] for p in per_seed),
        test_acc_b=tuple(p[3] for p in per_seed),
        sizes=sizes,
        seconds=time.perf_counter() - start,
    )


def _train_tracked(
    cfg: TrialConfig,
    pool: Pool,
    members: np.ndarray,
    device: torch.device,
    tag: str,
    say: Progress,
) -> tuple[nn.Module, dict[str, torch.Tensor], float]:
    """Train plainly; returns the model, its state at the end of warm-up, and its test accuracy."""
    model = build_model(cfg.model, pool, seed=cfg.train.seed)
    warmup = cfg.train.warmup_epochs
    early: dict[str, torch.Tensor] = {}
    if warmup == 0:
        early = copy.deepcopy(model.state_dict())
    say(f"{tag}: training on {len(members)} examples, {cfg.train.epochs} epochs ...")
    last = time.perf_counter()

    def on_epoch(log: EpochLog) -> None:
        nonlocal last
        if log.epoch == warmup:
            early.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        if time.perf_counter() - last >= _PROGRESS_EVERY_S:
            last = time.perf_counter()
            say(f"{tag}:   epoch {log.epoch}/{cfg.train.epochs}, test_acc {log.test_acc:.3f}")

    result = train(
        model,
        pool,
        members,
        cfg.train,
        protect=ProtectConfig(),
        defense=DefenseConfig(),
        device=device,
        on_epoch=on_epoch,
    )
    say(f"{tag}: done in {result.train_seconds:.1f}s, test_acc {result.test_acc:.3f}")
    return model, early, result.test_acc


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _aggregate(
    per_seed: Sequence[tuple[PrivacyRisk, dict[str, float], float, float]],
) -> tuple[GroupScore, ...]:
    groups = per_seed[0][0].groups
    out = []
    for j, g in enumerate(groups):
        risk = tuple(p[0].risk[j] for p in per_seed)
        at_out = tuple(p[0].risk_at_output[j] for p in per_seed)
        gen = tuple(p[1][g] for p in per_seed)
        r_mean, r_std = _mean_std(risk)
        g_mean, g_std = _mean_std(gen)
        o_mean, o_std = _mean_std(at_out)
        out.append(
            GroupScore(
                group=g,
                privacy_risk_mean=r_mean,
                privacy_risk_std=r_std,
                generalization_mean=g_mean,
                generalization_std=g_std,
                risk_at_output_mean=o_mean,
                risk_at_output_std=o_std,
                per_seed_privacy_risk=risk,
                per_seed_generalization=gen,
                per_seed_risk_at_output=at_out,
                distance_d1=tuple(p[0].distance_d1[j] for p in per_seed),
                distance_d2=tuple(p[0].distance_d2[j] for p in per_seed),
                distance_held_out=tuple(p[0].distance_held_out[j] for p in per_seed),
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Presenting a result: table, CSV, chart

CSV_COLUMNS = (
    "group",
    "rank",
    "privacy_risk_mean",
    "privacy_risk_std",
    "generalization_mean",
    "generalization_std",
    "risk_at_output_mean",
    "risk_at_output_std",
    "distance_d1",
    "distance_d2",
    "distance_held_out",
)


def format_table(result: LocalizationResult) -> str:
    """Aligned columns, groups in model order: risk and generalization as mean ± std over seeds.

    Generalization is shown in accuracy points (the drop x 100).
    """
    n = len(result.seeds)
    head = ("group", "privacy risk", "generalization (pts)", "risk at output", "rank")
    rows = [
        (
            g.group,
            f"{g.privacy_risk_mean:+.4f} ± {g.privacy_risk_std:.4f}",
            f"{100 * g.generalization_mean:+.2f} ± {100 * g.generalization_std:.2f}",
            f"{g.risk_at_output_mean:+.4f} ± {g.risk_at_output_std:.4f}",
            str(result.rank(g.group)),
        )
        for g in result.groups
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    acc_a = ", ".join(f"{a:.3f}" for a in result.test_acc_a)
    acc_b = ", ".join(f"{b:.3f}" for b in result.test_acc_b)
    sizes = result.sizes
    return "\n".join(
        [
            f"{result.model} on {result.dataset}, {n} seed{'s' if n != 1 else ''} "
            f"{list(result.seeds)} (mean ± std); |D| {sizes.get('members')}, "
            f"|D1| {sizes.get('d1')}, |D2| {sizes.get('d2')}, held-out {sizes.get('held_out')}",
            line(head),
            *(line(r) for r in rows),
            f"test_acc A (on D): {acc_a}; B (on D1): {acc_b}",
            "privacy risk: log-ratio of the swapped-group distance on D2 to D1/held-out "
            "(0 = none); generalization: test-accuracy drop when the group is reset to its "
            "warm-up weights",
        ]
    )


def write_csv(result: LocalizationResult, path: str | Path) -> Path:
    """:meth:`LocalizationResult.to_rows` as CSV (:data:`CSV_COLUMNS`), groups in model order."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(result.to_rows())
    return path


def plot_localization(result: LocalizationResult, path: str | Path, *, title: str = "") -> Path:
    """PNG: privacy risk (y) against generalization (x, accuracy points), one labelled point per
    group with ±1 std error bars over seeds, groups coloured from shallow to deep.

    Dashed lines at the medians over groups split the plane; the upper-left quadrant (risk above
    the median, generalization below) is shaded and labelled "protect": groups there are the
    candidates PPTP protects at little cost in accuracy. The split is relative to this model's
    groups, a hint, not a threshold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    xs = np.array([100 * g.generalization_mean for g in result.groups])
    ys = np.array([g.privacy_risk_mean for g in result.groups])
    xerr = np.array([100 * g.generalization_std for g in result.groups])
    yerr = np.array([g.privacy_risk_std for g in result.groups])
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(result.groups)))
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    try:
        x_mid, y_mid = float(np.median(xs)), float(np.median(ys))
        pad_x = max(0.1 * float(np.ptp(xs + xerr) + np.ptp(xs - xerr)), 0.5)
        pad_y = max(0.1 * float(np.ptp(ys + yerr) + np.ptp(ys - yerr)), 1e-3)
        x_lo, x_hi = float((xs - xerr).min()) - pad_x, float((xs + xerr).max()) + pad_x
        y_lo, y_hi = float((ys - yerr).min()) - pad_y, float((ys + yerr).max()) + pad_y
        ax.axvspan(
            x_lo,
            x_mid,
            ymin=(y_mid - y_lo) / (y_hi - y_lo),
            ymax=1.0,
            color="tab:red",
            alpha=0.07,
            zorder=0,
        )
        ax.text(
            x_lo,
            y_hi,
            " protect: high risk, low generalization",
            va="top",
            ha="left",
            fontsize=8,
            color="tab:red",
        )
        ax.text(
            x_hi,
            y_lo,
            "keep free: low risk, high generalization ",
            va="bottom",
            ha="right",
            fontsize=8,
            color="tab:green",
        )
        ax.axvline(x_mid, color="0.6", linestyle="--", linewidth=0.8, zorder=1)
        ax.axhline(y_mid, color="0.6", linestyle="--", linewidth=0.8, zorder=1)
        ax.axhline(0.0, color="0.3", linewidth=0.6, zorder=1)
        for x, y, ex, ey, c in zip(xs, ys, xerr, yerr, colours, strict=True):
            ax.errorbar(
                x,
                y,
                xerr=ex,
                yerr=ey,
                fmt="o",
                color=c,
                ecolor=c,
                elinewidth=1,
                capsize=3,
                markersize=7,
                zorder=3,
            )
        for g, x, y, (dx, dy) in zip(
            result.groups, xs, ys, _label_offsets(xs, ys, (x_lo, x_hi), (y_lo, y_hi)), strict=True
        ):
            ax.annotate(
                g.group,
                (x, y),
                textcoords="offset points",
                xytext=(dx, dy),
                ha="left" if dx > 0 else "right",
                fontsize=9,
                zorder=4,
            )
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_xlabel("generalization: test-accuracy drop when reset to warm-up (points)")
        ax.set_ylabel("privacy risk: log(d on D2 / d on D1, held-out)")
        n = len(result.seeds)
        ax.set_title(
            title
            or f"{result.model} on {result.dataset}: layer groups "
            f"({n} seed{'s' if n != 1 else ''}, mean ± std)",
            fontsize=10,
        )
        ax.grid(True, alpha=0.25)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


# label offsets in points, tried in order: right-above, right-below, left-above, left-below
_OFFSETS = ((6, 5), (6, -13), (-6, 5), (-6, -13))


def _label_offsets(
    xs: np.ndarray, ys: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float]
) -> list[tuple[int, int]]:
    """One offset per point so that labels of nearby points do not overlap (greedy, in order)."""
    px = (xs - xlim[0]) / (xlim[1] - xlim[0]) * 370  # about the axes size in points
    py = (ys - ylim[0]) / (ylim[1] - ylim[0]) * 280
    placed: list[tuple[float, float]] = []
    out = []
    for x, y in zip(px, py, strict=True):
        choice = _OFFSETS[0]
        for dx, dy in _OFFSETS:
            cx, cy = x + dx + (20 if dx > 0 else -20), y + dy
            if all(abs(cx - ox) > 45 or abs(cy - oy) > 12 for ox, oy in placed):
                choice = (dx, dy)
                break
        placed.append((x + choice[0] + (20 if choice[0] > 0 else -20), y + choice[1]))
        out.append(choice)
    return out
