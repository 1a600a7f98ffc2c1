"""The metric catalogue: every number a trial reports, declared once.

A metric is made in :mod:`pptp` (:meth:`pptp.result.TrialResult.metrics`) and read by every table,
tracker and command above it: the space validator (which names may be objectives or constraints),
the searcher (which values reach Optuna's user attributes), the Pareto table and its CSV, the
one-line run descriptions, ``compare`` and ``pick``. Each of them asks this module, so showing a
new metric in the Pareto table is its computation plus one :func:`register_metric` call.

A :class:`Metric` is one key (``attack_auc``) or a family keyed by attack (``auc/{attack}``,
expanded with the attack names of a config by :func:`metric_names`). The catalogue is ordered:
tables show columns in the order metrics were registered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from pptp.errors import ConfigError
from pptp.tables import MISSING

Direction = Literal["maximize", "minimize"]
#: when a trial reports the metric: always, with canaries planted, or for DP-SGD only
Condition = Literal["always", "canaries", "dpsgd"]

ATTACK = "{attack}"
"""The placeholder of a per-attack family: ``auc/{attack}`` -> ``auc/lira_online``."""


#: how a bound of 0 reads: the audit found nothing, which does not make the model private
NONE_DETECTED = "none detected"

@dataclass(frozen=True)
class Metric:
    """One metric (or per-attack family) and how everything above :mod:`pptp` treats it.

    ``key``: as :meth:`~pptp.result.TrialResult.metrics` names it (families contain
    :data:`ATTACK`). ``title``: a table column's header. ``short``: its name in one-line
    summaries (the MLflow runs table cuts descriptions at 50 characters). ``direction``: which way
    is better, or None for a fact that is neither (a resolution, a count, seconds); only metrics
    with a direction can be objectives. ``digits``: decimals in every table (one format per
    column). ``recorded``: copied to the Optuna trial's user attributes, so tables built from the
    Optuna storage alone can show it and a duplicate trial can report it. ``shown``: a column of
    the Pareto table and ``pareto_front.csv`` (left out of the table when no front trial has a
    finite value). ``resolution``: the metric that says whether this one is resolved (a TPR at an
    FPR below ``1 / non-members`` is NaN); the table says why such a column is missing.
    ``when``: which trials report it. ``zero``: how a value of exactly 0 reads (``eps_lb`` = 0
    means the audit found nothing, not that the model is private); such a metric's positive
    values too small for ``digits`` read ``<0.01``, never a rounded 0.
    """

    key: str
    title: str
    short: str
    direction: Direction | None
    description: str
    digits: int = 4
    recorded: bool = False
    shown: bool = False
    resolution: str | None = None
    when: Condition = "always"
    zero: str | None = None

    @property
    def per_attack(self) -> bool:
        return ATTACK in self.key

    @property
    def objective(self) -> bool:
        """Whether a space may optimise or constrain it."""
        return self.direction is not None

    def format(self, value: object, *, spread: bool = False) -> str:
        """The one spelling of a value in tables: ``digits`` decimals, ``-`` when missing,
        ``zero`` for 0 unless the value is a ``spread`` (a standard deviation, a half-width)."""
        number = as_number(value)
        if self.zero is not None and not spread:
            if number == 0:
                return self.zero
            if 0 < number < 0.5 * 10**-self.digits:  # never a rounded 0 beside the zero text
                return f"<{10**-self.digits:.{self.digits}f}"
        return f"{number:.{self.digits}f}" if math.isfinite(number) else MISSING


_CATALOGUE: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the catalogue (after those registered before it); returns it."""
    if metric.key in _CATALOGUE:
        raise ValueError(f"metric {metric.key!r} is registered twice")
    _CATALOGUE[metric.key] = metric
    return metric


def unregister_metric(key: str) -> None:
    """Remove a metric (for tests that register their own)."""
    del _CATALOGUE[key]


def catalogue() -> Iterator[Metric]:
    """Every registered metric, in registration order."""
    return iter(tuple(_CATALOGUE.values()))


def _family_pattern(key: str) -> re.Pattern[str]:
    return re.compile(re.escape(key).replace(re.escape(ATTACK), r"[A-Za-z0-9_]+"))


def find_metric(name: str) -> Metric | None:
    """The catalogue entry of ``name`` (a key, or a member of a per-attack family), or None."""
    if name in _CATALOGUE:
        return _CATALOGUE[name]
    for metric in _CATALOGUE.values():
        if metric.per_attack and _family_pattern(metric.key).fullmatch(name):
            return metric
    return None


def lookup(name: str) -> Metric:
    """:func:`find_metric`, or :class:`~pptp.errors.ConfigError` listing the known keys."""
    metric = find_metric(name)
    if metric is None:
        known = ", ".join(m.key for m in _CATALOGUE.values())
        raise ConfigError(f"unknown metric {name!r}; known: {known}")
    return metric


def metric_names(
    attacks: Iterable[str], *, canaries: bool, dpsgd: bool = True, objectives_only: bool = False
) -> list[str]:
    """Every metric name a trial with these attacks reports, families expanded, in catalogue
    order. ``canaries``/``dpsgd``: include the metrics that need them (``dpsgd=True`` also lists
    ``epsilon`` for a space that may search the defense). ``objectives_only``: only names a
    space may optimise or constrain."""
    attacks = list(attacks)
    present = {"always": True, "canaries": canaries, "dpsgd": dpsgd}
    out: list[str] = []
    for metric in _CATALOGUE.values():
        if not present[metric.when] or (objectives_only and not metric.objective):
            continue
        if metric.per_attack:
            out += [metric.key.replace(ATTACK, a) for a in attacks]
        else:
            out.append(metric.key)
    return out


def shown_metrics() -> list[Metric]:
    """The Pareto table's metric columns, in order."""
    return [m for m in _CATALOGUE.values() if m.shown]


def recorded_keys() -> list[str]:
    """Metrics copied to the Optuna trial's user attributes (families are never recorded)."""
    return [m.key for m in _CATALOGUE.values() if m.recorded and not m.per_attack]


def title(name: str) -> str:
    """A column header for ``name``: its catalogue title, else the name itself."""
    metric = find_metric(name)
    if metric is None:
        return name
    if metric.per_attack:
        attack = name.rsplit("/", 1)[-1]
        return f"{metric.title} ({attack})"
    return metric.title


def short(name: str) -> str:
    """``name`` in one-line summaries (``acc``, ``AUC``), else the name itself."""
    metric = find_metric(name)
    return metric.short if metric is not None and not metric.per_attack else name


def format_value(name: str, value: object, *, spread: bool = False) -> str:
    """``value`` of metric ``name`` as every table spells it (4 decimals for unknown names);
    ``spread``: the value is a spread of the metric (``± 0.00``, never its ``zero`` text)."""
    metric = find_metric(name)
    if metric is not None:
        return metric.format(value, spread=spread)
    number = as_number(value)
    return f"{number:.4f}" if math.isfinite(number) else MISSING


def as_number(value: object) -> float:
    """``value`` as a float; NaN for None, text and booleans."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------------------------------------
# The metrics pptp reports, in the order tables show them.

_TPR = "TPR at {fpr} false-positive rate of the strongest attack, either score direction"
for _metric in (
    Metric(
        "test_acc", "accuracy", "acc", "maximize",
        "accuracy on the held-out test set (disjoint from every member set)",
        recorded=True, shown=True,
    ),
    Metric(
        "attack_auc", "attack AUC", "AUC", "minimize",
        "ROC AUC of the strongest attack, two-sided: max over attacks of max(auc, 1 - auc)",
        recorded=True, shown=True,
    ),
    Metric(
        "attack_tpr@1%fpr", "TPR@1%FPR", "TPR@1%", "minimize", _TPR.format(fpr="1%"),
        recorded=True, shown=True, resolution="fpr_resolution",
    ),
    Metric(
        "attack_tpr@0.1%fpr", "TPR@0.1%FPR", "TPR@0.1%", "minimize", _TPR.format(fpr="0.1%"),
        recorded=True, shown=True, resolution="fpr_resolution",
    ),
    Metric(
        "canary_tpr@5%fpr", "canary TPR@5%FPR", "canary TPR@5%", "minimize",
        "TPR at 5% FPR of the strongest attack on the planted canaries alone",
        recorded=True, shown=True, resolution="canary_fpr_resolution", when="canaries",
    ),
    Metric(
        "canary_tpr@1%fpr", "canary TPR@1%FPR", "canary TPR@1%", "minimize",
        "TPR at 1% FPR of the strongest attack on the planted canaries alone",
        recorded=True, resolution="canary_fpr_resolution", when="canaries",
    ),
    Metric(
        "canary_auc", "canary AUC", "canary AUC", "minimize",
        "ROC AUC of the strongest attack on the planted canaries alone, two-sided",
        recorded=True, when="canaries",
    ),
    Metric(
        "eps_lb", "eps_lb", "eps_lb", "minimize",
        "epsilon lower bound of the one-run canary audit (Steinke et al. 2023) at "
        "attack.audit_confidence; 0 reads 'none detected': nothing found, not a proof of privacy",
        digits=2, recorded=True, shown=True, when="canaries", zero=NONE_DETECTED,
    ),
    Metric(
        "epsilon", "epsilon", "eps", "minimize",
        "DP-SGD's epsilon from Opacus' accountant (an upper bound, at the space's delta); "
        "shown beside eps_lb, which may not exceed it",
        digits=2, recorded=True, shown=True, when="dpsgd",
    ),
    Metric(
        "dp_contradicted", "audit contradicts epsilon", "eps contradicted", None,
        "1 when the canary audit's eps_lb exceeds DP-SGD's claimed epsilon (a broken DP "
        "claim: the MLflow tag dp_claim says by how much), else 0; needs canaries",
        digits=0, recorded=True, when="dpsgd",
    ),
    Metric("train_acc", "train accuracy", "train acc", "maximize", "accuracy on the members"),
    Metric(
        "generalization_gap", "generalization gap", "gap", "minimize",
        "train accuracy minus test accuracy",
    ),
    Metric(
        "fpr_resolution", "FPR resolution", "FPR res.", None,
        "1 / (non-members scored): the lowest FPR at which a TPR is resolved",
        digits=5,
    ),
    Metric(
        "canary_fpr_resolution", "canary FPR resolution", "canary FPR res.", None,
        "1 / (non-member canaries scored)", digits=5, when="canaries",
    ),
    Metric(
        "canary_count", "canaries", "canaries", None, "canaries planted in the pool",
        digits=0, when="canaries",
    ),
    Metric("auc/{attack}", "AUC", "AUC", "minimize", "ROC AUC of one attack, its own direction"),
    Metric(
        "tpr@1%fpr/{attack}", "TPR@1%FPR", "TPR@1%", "minimize", "TPR at 1% FPR of one attack",
        resolution="fpr_resolution",
    ),
    Metric(
        "tpr@0.1%fpr/{attack}", "TPR@0.1%FPR", "TPR@0.1%", "minimize",
        "TPR at 0.1% FPR of one attack", resolution="fpr_resolution",
    ),
    Metric(
        "balanced_acc/{attack}", "balanced accuracy", "bal. acc", "minimize",
        "balanced accuracy of one attack at its best threshold",
    ),
    Metric(
        "canary_auc/{attack}", "canary AUC", "canary AUC", "minimize",
        "ROC AUC of one attack on the canaries", when="canaries",
    ),
    Metric(
        "fpr_resolution/{attack}", "FPR resolution", "FPR res.", None,
        "1 / (non-members) of one attack, when attacks were scored on different sets", digits=5,
    ),
):  # fmt: skip
    register_metric(_metric)
