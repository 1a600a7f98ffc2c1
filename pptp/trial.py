"""``run_trial(config) -> TrialResult``: the unit the search calls, as its stages in order.

1. **data**: build the pool (raw datasets are cached in-process).
2. **train**: train the target on keep row 0 with the trial's protection and defense; a target
   whose test accuracy is not clearly above chance fails the trial (:mod:`pptp.chance`).
3. **signals**: query the target on every pool example, in float32, with the queries that follow
   its training (:func:`pptp.signals.resolve_queries`).
4. **references**: load the K reference models' signals (same queries) from the bank, training
   what is missing, or take the signals the caller loaded once (``reference_signals``: a search
   driver trains missing references as parallel Ray tasks before the trials start and ships the
   signals to every trial through Ray, so no trial opens a bank folder); a reference at chance
   level fails the trial too.
5. **attack**: every attack of :func:`pptp.attacks.attack_names` scores every pool example; the
   target's keep row is the ground truth; ROC, AUC and TPR at 0.1% / 1% FPR per attack, and the
   two-sided worst case over attacks (:meth:`TrialResult.metrics`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from torch import nn

from pptp.attacks import ATTACKS, AttackInput, attack_names, check_attacks
from pptp.audit import audit_canaries, claim_check, contradicts
from pptp.bank import ReferenceBank, ReferenceSignals
from pptp.bank_key import recipe_key
from pptp.canaries import CANARY_TPR_METRICS, split_scores
from pptp.chance import require_above_chance
from pptp.config import DataConfig, TrialConfig
from pptp.data import Pool, build_pool, dataset_spec
from pptp.device import resolve_device
from pptp.errors import ConfigError
from pptp.exposure import Exposure, most_exposed
from pptp.metrics import TPR_METRICS, AttackMetrics, resolvable
from pptp.models import build_model
from pptp.result import TrialResult
from pptp.signals import Signals, compute_signals, resolve_queries
from pptp.train import EpochLog, TrainResult, train

logger = logging.getLogger(__name__)

def run_trial(
    cfg: TrialConfig,
    *,
    bank: ReferenceBank | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    references: TrialConfig | None = None,
    reference_signals: ReferenceSignals | None = None,
    keep_model: bool = False,
) -> TrialResult:
    """Train the target of ``cfg``, attack it, and return what was measured.

    ``bank`` defaults to ``ReferenceBank(cfg.attack.bank_dir)``. ``on_epoch`` is called with each
    epoch's log as it is measured (the search streams per-epoch curves through it).
    ``references`` is the config whose recipe the reference models follow (default ``cfg``): a
    search that varies training hyperparameters scores every trial against the references of its
    base recipe, so they are trained once (screening); ``search/pick.py`` re-audits finalists with
    references trained under their own config. ``keep_model`` returns the trained target (on the
    CPU) in ``TrialResult.model``, for export and registration.

    ``reference_signals``: the references' signals, loaded once by the caller (a search driver
    ships them to its trials through Ray's object store): the trial then scores against them and
    never opens the bank, so it depends on no folder of the driver's disk (``bank`` and
    ``attack.bank_dir`` are not used). They must follow ``references`` (or ``cfg``) with the
    target's queries and hold at least ``attack.n_references`` models; see
    :func:`attack_scores`.

    Raises :class:`~pptp.errors.ModelAtChance` when the target or a reference model is not clearly
    above chance on the held-out test set (:mod:`pptp.chance`).
    """
    check_attacks(cfg.attack)
    resolve_queries(cfg)  # a query setting that cannot work fails before training
    if reference_signals is None:
        bank = bank or ReferenceBank(Path(cfg.attack.bank_dir))
    timings: dict[str, float] = {}
    device = resolve_device(cfg.train.device)

    with _timed(timings, "data"):
        pool = build_pool(cfg.data, device=device)
        members = np.flatnonzero(pool.keep(1)[0])
    with _timed(timings, "train"):
        model = build_model(cfg.model, pool, seed=cfg.train.seed)
        trained = train(
            model,
            pool,
            members,
            cfg.train,
            protect=cfg.protect,
            defense=cfg.defense,
            device=device,
            on_epoch=on_epoch,
        )
    return measure_target(
        cfg,
        pool,
        model,
        trained,
        bank=bank,
        timings=timings,
        references=references,
        reference_signals=reference_signals,
        keep_model=keep_model,
    )


def measure_target(
    cfg: TrialConfig,
    pool: Pool,
    model: nn.Module,
    trained: TrainResult,
    *,
    bank: ReferenceBank | None,
    timings: dict[str, float],
    references: TrialConfig | None = None,
    reference_signals: ReferenceSignals | None = None,
    keep_model: bool = False,
) -> TrialResult:
    """Stages 3 to 5 of :func:`run_trial` on a trained target: chance check, signals, attacks,
    canaries; ``trained`` is what :func:`pptp.train.train` returned (arguments as there)."""
    queries = resolve_queries(cfg)
    _check_chance(trained.test_acc, pool, what="target model")
    with _timed(timings, "signals"):
        signals = compute_signals(model, pool.x, pool.y, queries=queries)
    scores = attack_scores(
        cfg,
        pool,
        signals,
        bank=bank,
        timings=timings,
        references=references,
        queries=queries,
        reference_signals=reference_signals,
    )
    with _timed(timings, "attack"):
        results, canaries = split_scores(scores, pool.keep(1)[0], pool.canary)
        audit = None
        if pool.canary is not None:
            audit = audit_canaries(
                scores,
                pool.keep(1)[0],
                pool.canary,
                confidence=cfg.attack.audit_confidence,
                delta=audit_delta(cfg),
            )
        exposure = _exposure(scores, results, pool)
    extras = dict(trained.extras)
    epsilon = extras.pop("epsilon", None)
    if audit is not None and epsilon is not None and contradicts(audit.eps_lb, epsilon):
        logger.warning("DP-SGD %s", claim_check(audit, epsilon))
    logger.info(
        "trial done: test_acc %.4f, %s%s; queries %s; %s",
        trained.test_acc,
        ", ".join(f"{k} auc {m.auc:.3f}" for k, m in results.items()),
        "" if audit is None else f"; {audit.describe()}",
        ",".join(queries),
        ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
    )
    return TrialResult(
        config=cfg,
        test_acc=trained.test_acc,
        train_acc=trained.train_acc,
        attacks=results,
        history=trained.history,
        timings=timings,
        protected_groups=trained.protected_groups,
        mask=trained.mask,
        epsilon=epsilon,
        extras=extras,
        queries=queries,
        canaries=canaries,
        n_canaries=pool.n_canaries,
        audit=audit,
        exposure=exposure,
        model=model.cpu() if keep_model else None,
    )


def attack_target(
    cfg: TrialConfig,
    pool: Pool,
    signals: Signals,
    *,
    bank: ReferenceBank,
    timings: dict[str, float] | None = None,
    references: TrialConfig | None = None,
    queries: Sequence[str] | None = None,
) -> dict[str, AttackMetrics]:
    """Every attack's metrics on the population (the pool without its canaries): see
    :func:`attack_scores`, whose arguments it takes."""
    scores = attack_scores(
        cfg, pool, signals, bank=bank, timings=timings, references=references, queries=queries
    )
    return split_scores(scores, pool.keep(1)[0], pool.canary)[0]


def attack_scores(
    cfg: TrialConfig,
    pool: Pool,
    signals: Signals,
    *,
    bank: ReferenceBank | None,
    timings: dict[str, float] | None = None,
    references: TrialConfig | None = None,
    queries: Sequence[str] | None = None,
    reference_signals: ReferenceSignals | None = None,
) -> dict[str, np.ndarray]:
    """Run every attack of ``cfg`` on a target's signals: ``{attack: scores (n_pool,)}``, higher
    = member; the ground truth is keep row 0.

    ``queries`` name the signals' queries (default: resolved from ``cfg``); the references are
    loaded (trained if missing) with the same queries. With ``cfg.attack.adaptive`` the references
    are trained under the target's own protect/defense config: the audit of an attacker who knows
    the defense. A reference model at chance level raises :class:`~pptp.errors.ModelAtChance`.
    """
    timings = timings if timings is not None else {}
    queries = tuple(resolve_queries(cfg) if queries is None else queries)
    n, n_queries, n_classes = signals.logits.shape
    if n_queries != len(queries):
        raise ValueError(
            f"the signals hold {n_queries} queries per example but queries names {len(queries)}: "
            f"{', '.join(queries)}"
        )
    adaptive = cfg.attack.adaptive
    ref_cfg = cfg if adaptive else references or cfg
    if (ref_cfg.data, ref_cfg.model) != (cfg.data, cfg.model):
        raise ConfigError("reference models must share the trial's data and model sections")
    n_refs = references_needed(cfg)
    ref_logits = np.zeros((0, n, n_queries, n_classes), np.float32)
    ref_keep = np.zeros((0, n), dtype=bool)
    with _timed(timings, "references"):
        if n_refs and reference_signals is not None:
            refs = _shipped_references(
                reference_signals, ref_cfg, pool, n_refs, adaptive=adaptive, queries=queries
            )
            for i, acc in enumerate(refs.test_acc):
                name = f"reference model {i} of bank entry {refs.entry or '(shipped)'}"
                _check_chance(float(acc), pool, what=name)
            ref_logits, ref_keep = refs.logits, refs.keep
        elif n_refs:
            if bank is None:
                raise ValueError("attack_scores needs a bank or reference_signals")
            refs = bank.load(
                ref_cfg, n_refs, pool=pool, adaptive=adaptive, queries=queries, train_missing=True
            )
            folder = bank.entry_dir(ref_cfg, adaptive=adaptive, queries=queries)
            for i, acc in enumerate(refs.test_acc):
                _check_chance(float(acc), pool, what=_reference_name(ref_cfg, i, folder, adaptive))
            ref_logits, ref_keep = refs.logits, refs.keep
    with _timed(timings, "attack"):
        inputs = AttackInput(
            target_logits=signals.logits,
            labels=signals.labels,
            ref_logits=ref_logits,
            ref_keep=ref_keep,
        )
        return {name: ATTACKS[name](inputs) for name in attack_names(cfg.attack)}


def _shipped_references(
    shipped: ReferenceSignals,
    ref_cfg: TrialConfig,
    pool: Pool,
    n_refs: int,
    *,
    adaptive: bool,
    queries: Sequence[str],
) -> ReferenceSignals:
    """The first ``n_refs`` of ``shipped``, checked against what the trial needs."""
    if adaptive:
        raise ConfigError(
            "attack.adaptive: an adaptive audit trains references under the trial's own config; "
            "signals loaded for another recipe (reference_signals) cannot serve it"
        )
    want = (n_refs, len(pool.y), len(queries))
    if shipped.queries and tuple(shipped.queries) != tuple(queries):
        raise ConfigError(
            f"the reference signals were queried with {', '.join(shipped.queries)}, this trial "
            f"queries {', '.join(queries)}; its references must come from the bank"
        )
    if shipped.entry and shipped.entry != recipe_key(ref_cfg, adaptive=False, queries=queries)[0]:
        raise ConfigError(
            f"the reference signals come from bank entry {shipped.entry}, which is not the "
            "recipe this trial's references follow"
        )
    if (
        shipped.logits.ndim != 4
        or shipped.logits.shape[0] < n_refs
        or (shipped.logits.shape[1:3] != want[1:])
    ):
        raise ConfigError(
            f"the reference signals have shape {tuple(shipped.logits.shape)}; this trial needs "
            f"at least {n_refs} references x {want[1]} pool examples x {want[2]} queries"
        )
    keep = shipped.keep[:n_refs]
    for i in range(n_refs):
        if not np.array_equal(keep[i], pool.keep_row(i + 1)):
            raise ConfigError(f"reference {i}'s keep row does not match this trial's pool")
    return ReferenceSignals(
        shipped.logits[:n_refs], keep, shipped.test_acc[:n_refs], shipped.queries, shipped.entry
    )


def _exposure(
    scores: dict[str, np.ndarray], results: dict[str, AttackMetrics], pool: Pool
) -> Exposure | None:
    """Who leaks (:func:`pptp.exposure.most_exposed`) for the attack and direction of the
    worst-case AUC on the population; None without attacks."""
    if not results:
        return None
    candidates = [
        (m.value("auc", inverted=inv), name, inv)
        for name, m in results.items()
        for inv in (False, True)
    ]
    _, attack, inverted = max(candidates, key=lambda c: c[0])  # first of ties: one-sided
    return most_exposed(
        scores[attack],
        pool.keep(1)[0],
        pool.y.cpu().numpy(),
        pool.pool_index,
        population=None if pool.canary is None else ~pool.canary,
        attack=attack,
        inverted=inverted,
        images=None if pool.table else pool.x,
        normalisation=pool.normalisation,
    )


def audit_delta(cfg: TrialConfig) -> float:
    """The delta of the canary audit: ``attack.audit_delta``, else ``defense.delta`` (the delta
    DP-SGD's accountant states its epsilon at, so the two epsilons compare)."""
    return cfg.defense.delta if cfg.attack.audit_delta is None else cfg.attack.audit_delta


def references_needed(cfg: TrialConfig) -> int:
    """How many reference models the trial's attacks need (0 for threshold attacks only)."""
    needs = max((ATTACKS[a].min_refs for a in attack_names(cfg.attack)), default=0)
    return cfg.attack.n_references if needs > 0 else 0


def expected_non_members(data: DataConfig) -> int:
    """The target's non-members in the pool ``data`` names, before anything is loaded.

    The pool holds ``data.pool_size`` examples, or all of the dataset's
    (``DatasetSpec.n_examples``, train and test pooled) left after the test and validation sets;
    the target trains on ``n_pool // 2`` of them (:func:`pptp.data.keep_row`).
    """
    spec = dataset_spec(data)
    n_pool = data.pool_size
    if n_pool is None:
        test = spec.n_test or data.test_size  # a dataset's own test split replaces test_size
        n_pool = spec.n_examples - test - data.val_size
    if n_pool < 2:
        raise ConfigError(
            f"data: a pool of {n_pool} examples ({data.name!r}, {spec.n_examples} examples, "
            f"test_size {data.test_size}, val_size {data.val_size}) cannot hold members and "
            "non-members; make test_size or val_size smaller"
        )
    return n_pool - n_pool // 2


def unresolvable_metrics(cfg: TrialConfig, metrics: Iterable[str]) -> dict[str, str]:
    """Which of the named metrics the trial's pool cannot resolve, each with the reason.

    A TPR at FPR ``f`` (``attack_tpr@0.1%fpr``, ``tpr@0.1%fpr/<attack>``, ...) needs at least
    ``1 / f`` non-members, or it is always NaN (:func:`pptp.metrics.resolvable`). A canary TPR
    (``canary_tpr@5%fpr``) needs as many non-member canaries: about half of ``data.canaries`` (the
    estimate used here; the target's own draw decides), and any canary metric needs canaries.
    Other metrics are always resolved. Pure: the space validator calls it before anything runs.
    """
    n_population = expected_non_members(cfg.data) - cfg.data.canaries // 2
    n_canary = cfg.data.canaries // 2
    out: dict[str, str] = {}
    for name in metrics:
        canary = name.startswith("canary_")
        if canary and cfg.data.canaries == 0:
            out[name] = f"{name} needs canaries: set data.canaries (e.g. 200)"
            continue
        base = name.split("/", 1)[0].removeprefix("attack_").removeprefix("canary_")
        fpr = (CANARY_TPR_METRICS if canary else TPR_METRICS).get(base)
        n = n_canary if canary else n_population
        if fpr is None or (n > 0 and resolvable(fpr, n)):
            continue
        needed = math.ceil(1 / fpr - 1e-9)
        more = (
            f"about {2 * needed} canaries (data.canaries)"
            if canary
            else f"a pool of {2 * needed} examples"
        )
        what = "canaries" if canary else "examples"
        n = max(n, 1)
        out[name] = (
            f"{name} cannot be resolved: the target has about {n} non-member {what}, so the "
            f"smallest non-zero FPR is 1/{n} = {100 / n:.2g}% > {100 * fpr:g}% and the metric is "
            f"always NaN; it needs at least {needed} non-members ({more}), or use a TPR at a "
            "larger FPR"
        )
    return out


def _check_chance(accuracy: float, pool: Pool, *, what: str) -> None:
    if len(pool.y_test) == 0:
        logger.warning("no held-out test set: cannot check that the %s is above chance", what)
        return
    require_above_chance(accuracy, pool.y_test.cpu().numpy(), what=what)


def _reference_name(cfg: TrialConfig, index: int, folder: Path, adaptive: bool) -> str:
    t = cfg.train
    recipe = (
        f"{cfg.model.name} on {cfg.data.name}, {t.epochs} epochs, lr {t.lr:g}, batch "
        f"{t.batch_size}, augment {t.augment}"
    )
    if adaptive:
        recipe += f", protect {cfg.protect.operator}, defense {cfg.defense.name}"
    return f"reference model {index} of bank entry {folder} ({recipe}; recipe.json there)"


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
