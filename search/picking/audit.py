"""Re-auditing a picked config: re-training on new seeds, and the adaptive attack
(docs/design.md#screening-and-adaptive-audit).

Screening scored every trial against references trained with the space's base recipe
(undefended). :func:`retrain` repeats that setting on new seeds; :func:`adaptive_audit` re-audits
with references trained under the pick's own protect/defense config, as an attacker who knows the
defense would (it can reveal several times more leakage). :class:`Comparison` shows the three side
by side and states the gap adaptive - screening of every attack metric, never hiding it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pptp.metric_catalogue import shown_metrics
from pptp.tables import format_cell, format_table

if TYPE_CHECKING:  # annotations only: pick's --help must not import torch
    from pptp.config import TrialConfig
    from pptp.exposure import Exposure
    from search.space import Objective

#: rows of the side-by-side table: the catalogue's shown metrics (objectives not among them are
#: appended; a row no number resolves is left out)
TABLE_METRICS = tuple(m.key for m in shown_metrics())
#: metrics whose adaptive - screening gap is reported: the shown ones that measure leakage
ATTACK_METRICS = tuple(m.key for m in shown_metrics() if m.direction == "minimize")


@dataclass(frozen=True)
class Audit:
    """Metrics of one config re-trained on several seeds (``runs[i]`` belongs to ``seeds[i]``;
    a seed whose model was at chance has an empty dict there and its reason in ``failures``)."""

    label: str
    seeds: tuple[int, ...]
    runs: tuple[dict[str, float], ...]
    failures: dict[int, str] = field(default_factory=dict)  # seed -> reason
    exposure: Exposure | None = None  # who leaks in the first seed that trained (pptp.exposure)

    def values(self, metric: str) -> list[float]:
        return [r[metric] for r in self.runs if metric in r]

    def mean(self, metric: str) -> float:
        values = self.values(metric)
        return statistics.fmean(values) if values else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation (n - 1); NaN with fewer than 2 seeds."""
        values = self.values(metric)
        return statistics.stdev(values) if len(values) >= 2 else math.nan

    def cell(self, metric: str) -> str:
        mean, std = self.mean(metric), self.std(metric)
        if not math.isfinite(mean):
            return "-"
        return f"{mean:.4f}" + (f" ± {std:.4f}" if math.isfinite(std) else "")


def ensure_references(cfg: TrialConfig, *, adaptive: bool, label: str) -> None:
    """Train the references ``cfg`` needs that the bank lacks, printing progress."""
    from pptp.bank import ReferenceBank
    from pptp.trial import references_needed

    n = references_needed(cfg)
    if not n:
        return
    bank = ReferenceBank(cfg.attack.bank_dir)
    missing = bank.missing(cfg, n, adaptive=adaptive)
    print(
        f"{label:<11} {n} reference models needed, {n - len(missing)} in the bank "
        f"({bank.entry_dir(cfg, adaptive=adaptive)})",
        flush=True,
    )
    if not missing:
        return
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(
            f"{label:<11} reference {done}/{total} trained ({time.perf_counter() - start:.0f}s)",
            flush=True,
        )

    bank.ensure(cfg, n, adaptive=adaptive, progress=progress)


def _run_seeds(
    cfg: TrialConfig,
    seeds: Sequence[int],
    *,
    label: str,
    references: TrialConfig | None,
) -> Audit:
    from pptp.errors import ModelAtChance
    from pptp.trial import run_trial

    runs: list[dict[str, float]] = []
    failures: dict[int, str] = {}
    exposure: Exposure | None = None
    for i, seed in enumerate(seeds, start=1):
        start = time.perf_counter()
        try:
            result = run_trial(cfg.replace(**{"train.seed": seed}), references=references)
        except ModelAtChance as error:  # that seed's failure, not the audit's
            failures[seed] = f"ModelAtChance: {str(error).splitlines()[0]}"
            runs.append({})
            print(f"{label:<11} seed {seed} ({i}/{len(seeds)}): FAILED: {failures[seed]}")
            continue
        metrics = result.metrics()
        runs.append(metrics)
        exposure = exposure or result.exposure
        shown = ", ".join(f"{m} {format_cell(metrics.get(m, math.nan))}" for m in TABLE_METRICS)
        print(
            f"{label:<11} seed {seed} ({i}/{len(seeds)}): {shown} "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    return Audit(label, tuple(seeds), tuple(runs), failures, exposure)


def retrain(cfg: TrialConfig, seeds: Sequence[int], *, references: TrialConfig | None) -> Audit:
    """The screening setting on new seeds: references of ``references``' recipe (the base
    recipe's, reused from the bank), the target re-trained with each ``train.seed``."""
    if references is not None:
        ensure_references(references, adaptive=False, label="re-train")
    return _run_seeds(cfg, seeds, label="re-train", references=references)


def adaptive_audit(cfg: TrialConfig, seeds: Sequence[int]) -> Audit:
    """Re-audit with references trained under ``cfg``'s own protect/defense config.

    The K adaptive references are trained once (``train.seed`` does not enter the bank key) and
    kept in the bank; each seed then re-trains only the target.
    """
    adaptive = cfg.replace(**{"attack.adaptive": True})
    ensure_references(adaptive, adaptive=True, label="adaptive")
    return _run_seeds(adaptive, seeds, label="adaptive", references=None)


def audit_seeds(first: int, n: int) -> tuple[int, ...]:
    """The ``n`` seeds after the trial's own: ``first + 1 .. first + n`` (1..n by default)."""
    return tuple(range(first + 1, first + n + 1))


# ---------------------------------------------------------------------------------------------
# The comparison table


@dataclass(frozen=True)
class Comparison:
    """The trial's screening numbers next to the re-trained and adaptive ones."""

    trial: int
    trial_seed: int
    screening: dict[str, float]
    retrained: Audit | None = None
    adaptive: Audit | None = None

    def gap(self, metric: str) -> float:
        """Adaptive minus screening: paired over seeds when the re-training used the adaptive
        audit's seeds, else against the trial's recorded screening number."""
        if self.adaptive is None:
            return math.nan
        if self.retrained is not None and self.retrained.seeds == self.adaptive.seeds:
            pairs = [
                a[metric] - s[metric]
                for a, s in zip(self.adaptive.runs, self.retrained.runs, strict=True)
                if metric in a and metric in s
            ]
            return statistics.fmean(pairs) if pairs else math.nan
        return self.adaptive.mean(metric) - self.screening.get(metric, math.nan)

    def gap_note(self) -> str:
        if self.adaptive is None:
            return ""
        seeds = ", ".join(map(str, self.adaptive.seeds))
        if self.retrained is not None and self.retrained.seeds == self.adaptive.seeds:
            how = f"adaptive minus re-trained screening on the same seeds ({seeds}), paired"
        else:
            how = f"adaptive (seeds {seeds}) minus the trial's recorded screening number"
        return (
            f"gap: {how}; positive = an attacker who knows the defense finds more leakage than "
            "the screening measured"
        )

    def metrics(self, objectives: Sequence[Objective]) -> list[str]:
        """The table's rows: :data:`TABLE_METRICS` and the objectives, those with a number."""
        audits = [a for a in (self.retrained, self.adaptive) if a is not None]

        def measured(metric: str) -> bool:
            values = [self.screening.get(metric, math.nan), *(a.mean(metric) for a in audits)]
            return any(math.isfinite(v) for v in values)

        keys = dict.fromkeys([*TABLE_METRICS, *(o.metric for o in objectives)])
        return [m for m in keys if measured(m)]

    def table(self, objectives: Sequence[Objective]) -> str:
        head = ["metric", f"screening (trial {self.trial}, seed {self.trial_seed})"]
        if self.retrained is not None:
            head.append(f"re-trained ({len(self.retrained.seeds)} seeds)")
        if self.adaptive is not None:
            head += [f"adaptive ({len(self.adaptive.seeds)} seeds)", "adaptive - screening"]
        rows = []
        for metric in self.metrics(objectives):
            row = [metric, format_cell(self.screening.get(metric, math.nan))]
            if self.retrained is not None:
                row.append(self.retrained.cell(metric))
            if self.adaptive is not None:
                gap = self.gap(metric) if metric in ATTACK_METRICS else math.nan
                row += [self.adaptive.cell(metric), format_cell(gap, signed=True)]
            rows.append(row)
        return format_table(rows, head, align="l" + "r" * (len(head) - 1))

    def summary_metrics(self) -> dict[str, float]:
        """Flat numbers for the MLflow pick run (names before :func:`metric_key`)."""
        out: dict[str, float] = {}
        for metric in TABLE_METRICS:
            out[f"screening/{metric}"] = self.screening.get(metric, math.nan)
            for audit in (self.retrained, self.adaptive):
                if audit is not None:
                    name = "retrained" if audit is self.retrained else "adaptive"
                    out[f"{name}/{metric}_mean"] = audit.mean(metric)
                    out[f"{name}/{metric}_std"] = audit.std(metric)
            if metric in ATTACK_METRICS and self.adaptive is not None:
                out[f"gap/{metric}"] = self.gap(metric)
        return {k: v for k, v in out.items() if math.isfinite(v)}
