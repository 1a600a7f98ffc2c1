"""What one trial measured (:class:`TrialResult`): accuracy, every attack's metrics, the
canaries and their audit, who leaks, timings; and how that becomes the flat numbers and tags the
search records (:meth:`TrialResult.metrics`, :meth:`TrialResult.tags`). :func:`pptp.trial.run_trial`
makes one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from pptp.audit import CanaryAudit, claim_check, contradicts
from pptp.canaries import canary_metrics
from pptp.config import TrialConfig
from pptp.exposure import Exposure
from pptp.metrics import TPR_METRICS, AttackMetrics
from pptp.train import EpochLog

#: the headline metrics whose worst case over attacks a trial reports as ``attack_<metric>``
WORST_CASE_METRICS = ("auc", *TPR_METRICS)


@dataclass(frozen=True)
class WorstCase:
    """The strongest attack on one headline metric, in either score direction.

    ``value`` is NaN (``attack`` empty) when the metric is NaN for some attack (not resolved).
    ``inverted``: the attack's negated scores gave it (members scored LOWER than non-members).
    """

    metric: str
    value: float
    attack: str
    inverted: bool

    def describe(self) -> str:
        """``rmia_online``, ``lira_offline (inverted)`` or ``unresolved``."""
        if not self.attack:
            return "unresolved"
        return f"{self.attack} (inverted)" if self.inverted else self.attack


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured. Rates are fractions in [0, 1]; timings are seconds per stage.

    ``queries`` are the query names the target and its references were asked (``("clean",)``,
    or with ``flip`` and shifts; empty for results built by hand).
    """

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
    queries: tuple[str, ...] = ()
    canaries: dict[str, AttackMetrics] = field(default_factory=dict)  # per attack, on canaries
    n_canaries: int = 0
    audit: CanaryAudit | None = None  # the one-run epsilon audit on the canaries (pptp.audit)
    exposure: Exposure | None = None  # who leaks: the most exposed members (pptp.exposure)
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # keep_model=True

    def worst_case(self, metric: str) -> WorstCase:
        """The largest ``metric`` (``auc``, ``tpr@0.1%fpr``, ``tpr@1%fpr``) over attacks and both
        score directions; NaN if it is NaN for any attack."""
        if not self.attacks:
            raise ValueError("the trial ran no attack")
        candidates = [
            (m.value(metric, inverted=inverted), name, inverted)
            for name, m in self.attacks.items()
            for inverted in (False, True)
        ]
        if any(math.isnan(value) for value, _, _ in candidates):
            return WorstCase(metric, math.nan, "", False)
        value, name, inverted = max(candidates, key=lambda c: c[0])  # first of ties: one-sided
        return WorstCase(metric, value, name, inverted)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for trackers and samplers.

        Per attack, one-sided (the attack's own direction): ``auc/<attack>``,
        ``tpr@0.1%fpr/<attack>``, ``tpr@1%fpr/<attack>``, ``balanced_acc/<attack>``.

        The worst case over attacks, **two-sided**: ``attack_auc`` is ``max over attacks of
        max(auc, 1 - auc)``, and ``attack_tpr@0.1%fpr``, ``attack_tpr@1%fpr`` take the larger of
        the TPR of the scores and of the negated scores. An attack whose scores are inverted
        (RelaxLoss' gradient ascent on members can cause it) leaks as much as one that is not: the
        attacker who knows the direction flips it, and the defender must survive the strongest
        attack it was scored against. :meth:`tags` names the attack and direction that gave it.

        Resolution: a TPR at an FPR below ``fpr_resolution = 1 / (number of non-members)`` is NaN
        (a target FPR that only zero false positives can meet), per attack and in the worst case.
        ``fpr_resolution`` is reported once, or per attack as ``fpr_resolution/<attack>`` when the
        attacks were scored on different sets.

        Canaries (``data.canaries``): the attack metrics above are computed on the population (the
        pool without its canaries), and :func:`pptp.canaries.canary_metrics` adds ``canary_auc``,
        ``canary_tpr@1%fpr``, ``canary_tpr@5%fpr``, ``canary_fpr_resolution``, ``canary_count``,
        and the one-run audit (:mod:`pptp.audit`) ``eps_lb``: a lower bound on epsilon at
        ``attack.audit_confidence`` (0 when nothing was detected); for DP-SGD
        ``dp_contradicted`` is 1 when ``eps_lb`` exceeds the accountant's ``epsilon`` (the claim
        is broken), else 0.
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
            for metric in WORST_CASE_METRICS:
                out[f"attack_{metric}"] = self.worst_case(metric).value
            resolutions = {
                name: m.fpr_resolution
                for name, m in self.attacks.items()
                if math.isfinite(m.fpr_resolution)
            }
            if len(set(resolutions.values())) == 1:
                out["fpr_resolution"] = next(iter(resolutions.values()))
            else:
                out.update({f"fpr_resolution/{name}": r for name, r in resolutions.items()})
        out.update(canary_metrics(self.canaries, self.n_canaries))
        if self.audit is not None:
            out["eps_lb"] = self.audit.eps_lb
            if self.epsilon is not None:
                out["dp_contradicted"] = float(contradicts(self.audit.eps_lb, self.epsilon))
        if self.epsilon is not None:
            out["epsilon"] = self.epsilon
        for stage, seconds in self.timings.items():
            out[f"seconds/{stage}"] = seconds
        return out

    def tags(self) -> dict[str, str]:
        """Text facts for trackers: ``queries`` (comma separated) and, per worst-case metric,
        the attack and direction that gave it: ``attack_worst`` (AUC), ``attack_worst/<metric>``
        (TPRs); values like ``rmia_online``, ``lira_offline (inverted)`` or ``unresolved``; with
        canaries ``eps_lb`` says how the audit got its bound (:meth:`CanaryAudit.describe`), and
        for DP-SGD ``dp_claim`` whether it contradicts the accountant's epsilon
        (:func:`pptp.audit.claim_check`: ``contradicted: ...`` or ``consistent: ...``)."""
        out = {"queries": ",".join(self.queries)}
        if self.audit is not None:
            out["eps_lb"] = self.audit.describe()
            if self.epsilon is not None:
                out["dp_claim"] = claim_check(self.audit, self.epsilon)
        if self.attacks:
            for metric in WORST_CASE_METRICS:
                key = "attack_worst" if metric == "auc" else f"attack_worst/{metric}"
                out[key] = self.worst_case(metric).describe()
        return out
