"""The whole localisation: per seed, train A on the members and B on half of them, score every
group (:mod:`pptp.localize.measure`), then mean and sample standard deviation over seeds.

Per seed ``s`` (``train.seed = s``; the base recipe, no protection, no defense): ``D`` = the
target's members (``pool.keep(1)[0]``), ``D1`` = a seeded half of ``D`` (:func:`split_members`),
``D2 = D \\ D1``, ``H`` = the pool's held-out test set; at most ``max_examples`` of each (a seeded
sample) are scored. Cost: two trainings per seed (A on |D|, B on |D|/2 examples), then seconds of
evaluation.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from pptp.config import DefenseConfig, ProtectConfig, TrialConfig
from pptp.data import Pool, build_pool
from pptp.device import resolve_device
from pptp.errors import ConfigError
from pptp.localize.measure import PrivacyRisk, check_groups, generalization, privacy_risk
from pptp.localize.result import GroupScore, LocalizationResult, recipe_digest
from pptp.models import build_model
from pptp.train import EpochLog, train

logger = logging.getLogger(__name__)

#: fewest members: each half needs at least 2 examples for a mean distance to mean anything
MIN_MEMBERS = 4

_SPLIT_SALT = 0x6C6F63  # "loc": keeps the D1/D2 split apart from the pool and keep draws
_SAMPLE_SALT = 0x736D70  # "smp": the subsample of each scored set
_PROGRESS_EVERY_S = 10.0  # epoch progress lines during long trainings, at most this often

Progress = Callable[[str], None]
"""Receives one line of progress (``localize(..., progress=print)``)."""


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
    check_groups(build_model(cfg.model, pool, seed=cfg.train.seed))
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
    trainings = _Trainings(2 * len(seeds))
    per_seed: list[tuple[PrivacyRisk, dict[str, float], float, float]] = []
    sizes: dict[str, int] = {}
    for i, seed in enumerate(seeds, start=1):
        tag = f"seed {i}/{len(seeds)} (train.seed {seed})"
        seed_cfg = cfg.replace(**{"train.seed": seed})
        d1, d2 = split_members(members, seed)
        model_a, early, acc_a = _train_tracked(
            seed_cfg, pool, members, device, f"{tag}: A", say, note=trainings.note
        )
        model_b, _, acc_b = _train_tracked(
            seed_cfg, pool, d1, device, f"{tag}: B", say, note=trainings.note
        )
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
    *,
    note: Callable[[], str] = lambda: "",
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
    say(f"{tag}: done in {result.train_seconds:.1f}s, test_acc {result.test_acc:.3f}{note()}")
    return model, early, result.test_acc


class _Trainings:
    """Progress only: counts finished trainings and notes the time left on the line that ends
    each, `` (3/6 trainings, ~1m20s left)`` (elapsed / finished x remaining)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.perf_counter()

    def note(self) -> str:
        self.done += 1
        if self.done >= self.total:
            return f" ({self.done}/{self.total} trainings)"
        seconds = int((time.perf_counter() - self.start) / self.done * (self.total - self.done))
        left = f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
        return f" ({self.done}/{self.total} trainings, ~{left} left)"


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
