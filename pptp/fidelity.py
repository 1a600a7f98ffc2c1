"""A trial measured at rungs: snapshots of one training, attacked with references at the same rung.

Multi-fidelity search stops configs that are dominated early. Its unit here is a **rung**: an
epoch of the target's training on the full run's learning-rate schedule (a snapshot of the one
training, not a shorter training), e.g. epochs 3 and 10 of 30 for rungs at 1/9 and 1/3. At each
rung the target is measured like a finished one (test accuracy, every attack, canaries) but
against the reference models' logits **at the same epoch** of their own trainings
(:attr:`pptp.bank.ReferenceSignals.rungs`): a half-trained target compared with finished
references would look private only because it has not memorised yet.

:func:`run_trial_at_rungs` trains the target on each training seed in lock step (one
:func:`pptp.train.training` generator per seed), so that at every rung the caller gets the
measurements of all seeds (``on_rung``) and may stop the trial there by raising from it (the
generators are closed, the mechanisms detached). The last rung is the end of training, measured
exactly as :func:`pptp.trial.run_trial` measures it.

A mechanism that stops training early (early stopping) ends it before a later rung: that seed is
measured at the later rungs with the weights it ended with (its best epoch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from pptp.bank import ReferenceBank, ReferenceSignals
from pptp.canaries import split_scores
from pptp.config import TrialConfig
from pptp.data import Pool, build_pool
from pptp.device import resolve_device
from pptp.errors import ConfigError
from pptp.models import build_model
from pptp.result import TrialResult
from pptp.signals import compute_signals, resolve_queries
from pptp.train import EpochLog, TrainResult, evaluate, training
from pptp.trial import attack_scores, measure_target, references_needed


def run_trial_at_rungs(
    cfg: TrialConfig,
    seeds: Sequence[int],
    rungs: Sequence[int],
    *,
    on_rung: Callable[[int, list[TrialResult]], None],
    reference_signals: ReferenceSignals | None = None,
    references: TrialConfig | None = None,
    on_epoch: Callable[[int], Callable[[EpochLog], None] | None] | None = None,
) -> list[TrialResult]:
    """Train ``cfg``'s target once per seed (``train.seed``), in lock step, and measure every
    seed at each rung epoch; return the finished results, one per seed.

    ``on_rung(epoch, results)``: the seeds' measurements at that rung (``TrialResult`` without
    history or training extras; ``train_acc`` NaN); raising from it stops the trial.
    ``reference_signals``: the references with their rung logits (a search driver ships them);
    without, they are loaded from ``attack.bank_dir`` with the rungs, training what is missing.
    ``on_epoch(r)``: the epoch logger of seed ``r``.
    """
    if cfg.attack.adaptive:
        raise ConfigError(
            "attack.adaptive trains references under each trial's own config; multi-fidelity "
            "search scores against the base recipe's references at each rung",
            key="attack.adaptive",
        )
    queries = resolve_queries(cfg)
    device = resolve_device(cfg.train.device)
    pool = build_pool(cfg.data, device=device)
    members = np.flatnonzero(pool.keep(1)[0])
    refs = reference_signals
    if refs is None and references_needed(cfg):
        bank = ReferenceBank(Path(cfg.attack.bank_dir))
        refs = bank.load(
            references or cfg,
            references_needed(cfg),
            pool=pool,
            queries=queries,
            train_missing=True,
            rungs=rungs,
        )
    configs = [cfg.replace(**{"train.seed": seed}) for seed in seeds]
    models = [build_model(c.model, pool, seed=c.train.seed) for c in configs]
    steps = [
        training(
            model,
            pool,
            members,
            c.train,
            protect=c.protect,
            defense=c.defense,
            device=device,
            on_epoch=on_epoch(r) if on_epoch is not None else None,
            rungs=set(rungs),
        )
        for r, (c, model) in enumerate(zip(configs, models, strict=True))
    ]
    ended: list[TrainResult | None] = [None] * len(seeds)
    try:
        for epoch in rungs:
            at_rung = []
            for r, (c, model) in enumerate(zip(configs, models, strict=True)):
                if ended[r] is None:
                    ended[r] = _advance(steps[r], epoch)
                at_rung.append(_measure_rung(c, pool, model, refs, epoch, references, queries))
            on_rung(epoch, at_rung)
        results = []
        for r, (c, model) in enumerate(zip(configs, models, strict=True)):
            trained = ended[r] or _advance(steps[r], None)
            assert trained is not None
            timings: dict[str, float] = {}
            results.append(
                measure_target(
                    c,
                    pool,
                    model,
                    trained,
                    bank=None,
                    timings=timings,
                    references=references,
                    reference_signals=refs,
                )
            )
        return results
    finally:
        for step in steps:
            step.close()


def _advance(steps: Generator[int, None, TrainResult], epoch: int | None) -> TrainResult | None:
    """Run a :func:`~pptp.train.training` generator to rung ``epoch`` (None: to its end);
    the :class:`TrainResult` when training ended on the way, else None."""
    while True:
        try:
            reached = next(steps)
        except StopIteration as done:
            result: TrainResult = done.value
            return result
        if reached == epoch:
            return None


def _measure_rung(
    cfg: TrialConfig,
    pool: Pool,
    model: nn.Module,
    refs: ReferenceSignals | None,
    epoch: int,
    references: TrialConfig | None,
    queries: tuple[str, ...],
) -> TrialResult:
    """The target as it is at rung ``epoch``: accuracy and attacks against the references'
    logits at that epoch (:meth:`ReferenceSignals.at`)."""
    signals = compute_signals(model, pool.x, pool.y, queries=queries)
    scores = attack_scores(
        cfg,
        pool,
        signals,
        bank=None,
        references=references,
        queries=queries,
        reference_signals=refs.at(epoch) if refs is not None else None,
    )
    attacks, canaries = split_scores(scores, pool.keep(1)[0], pool.canary)
    return TrialResult(
        config=cfg,
        test_acc=evaluate(model, pool.x_test, pool.y_test),
        train_acc=math.nan,
        attacks=attacks,
        history=(),
        timings={},
        protected_groups=(),
        mask={},
        queries=queries,
        canaries=canaries,
        n_canaries=pool.n_canaries,
    )
