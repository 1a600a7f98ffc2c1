"""``run_trial(config) -> TrialResult``: the unit the search calls, as its stages in order.

1. **data**: build the pool (raw datasets are cached in-process).
2. **train**: train the target on keep row 0 with the trial's protection and defense.
3. **signals**: query the target on every pool example (clean and augmented queries).
4. **references**: load the K reference models' signals from the bank, training what is missing
   (``search/`` trains missing references as parallel Ray tasks before the trials start).
5. **attack**: every configured attack scores every pool example; the target's keep row is the
   ground truth; ROC, AUC and TPR at 0.1% / 1% FPR per attack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from pptp.attacks import ATTACKS, AttackInput
from pptp.bank import ReferenceBank
from pptp.config import TrialConfig
from pptp.data import Pool
from pptp.device import resolve_device
from pptp.errors import ConfigError
from pptp.metrics import AttackMetrics, evaluate
from pptp.signals import Signals, compute_signals
from pptp.train import EpochLog, build_model, build_pool, train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured. Rates are fractions in [0, 1]; timings are seconds per stage."""

    config: TrialConfig
    test_acc: float
    train_acc: float
    attacks: dict[str, AttackMetrics]
    history: tuple[EpochLog, ...]
    timings: dict[str, float]
    protected_groups: tuple[str, ...]
    mask: dict[str, bool]
    epsilon: float | None = None
    extras: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # keep_model=True

    def metrics(self) -> dict[str, float]:
        """Flat numbers for trackers and samplers.

        ``auc/<attack>``, ``tpr@0.1%fpr/<attack>``, ``tpr@1%fpr/<attack>`` per attack, and the
        worst case over attacks as ``attack_auc``, ``attack_tpr@0.1%fpr``, ``attack_tpr@1%fpr``
        (the defender must survive the strongest attack it was scored against).
        """
        out: dict[str, float] = {
            "test_acc": self.test_acc,
            "train_acc": self.train_acc,
            "generalization_gap": self.train_acc - self.test_acc,
        }
        for name, m in self.attacks.items():
            out[f"auc/{name}"] = m.auc
            out[f"tpr@0.1%fpr/{name}"] = m.tpr_at_0_1pct_fpr
            out[f"tpr@1%fpr/{name}"] = m.tpr_at_1pct_fpr
            out[f"balanced_acc/{name}"] = m.balanced_accuracy
        if self.attacks:
            out["attack_auc"] = max(m.auc for m in self.attacks.values())
            out["attack_tpr@0.1%fpr"] = max(m.tpr_at_0_1pct_fpr for m in self.attacks.values())
            out["attack_tpr@1%fpr"] = max(m.tpr_at_1pct_fpr for m in self.attacks.values())
        if self.epsilon is not None:
            out["epsilon"] = self.epsilon
        for stage, seconds in self.timings.items():
            out[f"seconds/{stage}"] = seconds
        return out


def run_trial(
    cfg: TrialConfig,
    *,
    bank: ReferenceBank | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    references: TrialConfig | None = None,
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
    """
    _check_attacks(cfg)
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
    with _timed(timings, "signals"):
        signals = compute_signals(
            model, pool.x, pool.y, augment=cfg.attack.query_augment, flip=pool.flip
        )
    results = attack_target(cfg, pool, signals, bank=bank, timings=timings, references=references)
    extras = dict(trained.extras)
    epsilon = extras.pop("epsilon", None)
    logger.info(
        "trial done: test_acc %.4f, %s; %s",
        trained.test_acc,
        ", ".join(f"{k} auc {m.auc:.3f}" for k, m in results.items()),
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
) -> dict[str, AttackMetrics]:
    """Run every configured attack on a target's signals; ground truth is keep row 0.

    With ``cfg.attack.adaptive`` the references are trained under the target's own
    protect/defense config: the audit of an attacker who knows the defense.
    """
    timings = timings if timings is not None else {}
    adaptive = cfg.attack.adaptive
    ref_cfg = cfg if adaptive else references or cfg
    if (ref_cfg.data, ref_cfg.model) != (cfg.data, cfg.model):
        raise ConfigError("reference models must share the trial's data and model sections")
    n_refs = references_needed(cfg)
    with _timed(timings, "references"):
        if n_refs:
            bank.ensure(ref_cfg, n_refs, adaptive=adaptive)
        refs = bank.load(ref_cfg, n_refs, pool=pool, adaptive=adaptive)
    with _timed(timings, "attack"):
        n, n_aug, n_classes = signals.logits.shape
        inputs = AttackInput(
            target_logits=signals.logits,
            labels=signals.labels,
            ref_logits=refs.logits if n_refs else np.zeros((0, n, n_aug, n_classes), np.float32),
            ref_keep=refs.keep if n_refs else np.zeros((0, n), dtype=bool),
        )
        is_member = pool.keep(1)[0]
        return {name: evaluate(ATTACKS[name](inputs), is_member) for name in cfg.attack.attacks}


def references_needed(cfg: TrialConfig) -> int:
    """How many reference models the configured attacks need (0 for threshold attacks only)."""
    needs = max((ATTACKS[a].min_refs for a in cfg.attack.attacks), default=0)
    return cfg.attack.n_references if needs > 0 else 0


def _check_attacks(cfg: TrialConfig) -> None:
    if not cfg.attack.attacks:
        raise ConfigError("attack.attacks is empty; name at least one attack, e.g. loss")
    for name in cfg.attack.attacks:
        spec = ATTACKS[name]  # unknown names list the known ones
        if spec.min_refs > cfg.attack.n_references:
            raise ConfigError(
                f"attack {name!r} needs at least {spec.min_refs} reference models but "
                f"attack.n_references = {cfg.attack.n_references}"
            )


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
