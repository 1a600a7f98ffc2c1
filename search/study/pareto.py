"""The Pareto front of a study as the table a person reads and the CSV files a run keeps.

The front is Optuna's own ``study.best_trials`` (non-dominated feasible trials), marked on each
:class:`~search.study.trials.FinishedTrial`; nothing here re-implements dominance. The metric
columns are the metric catalogue's shown metrics (:func:`pptp.metric_catalogue.shown_metrics`)
plus any objective that is not among them, each spelled with its catalogue format.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pptp.metric_catalogue import find_metric, format_value, shown_metrics, title
from pptp.tables import format_table
from pptp.treatment import FLAT_ATTRS
from search.space import Objective
from search.study.noise import pooled_noise
from search.study.trials import FinishedTrial


def metric_columns(objectives: Sequence[Objective]) -> list[str]:
    """The table's metric columns: the objectives first, then the catalogue's shown metrics."""
    keys = [o.metric for o in objectives] + [m.key for m in shown_metrics()]
    return list(dict.fromkeys(keys))


def best_first(
    trials: Iterable[FinishedTrial], objectives: Sequence[Objective]
) -> list[FinishedTrial]:
    """``trials`` sorted by the first objective, best first (missing values last)."""
    first = objectives[0]

    def key(t: FinishedTrial) -> tuple[bool, float, int]:
        v = t.value(first.metric)
        return (not math.isfinite(v), -first.sign * v if math.isfinite(v) else 0.0, t.number)

    return sorted(trials, key=key)


def format_front(trials: Sequence[FinishedTrial], objectives: Sequence[Objective]) -> str:
    """The Pareto front as aligned columns, best first by the first objective.

    A trial over several seeds (``study.repeats``) shows each metric with its spread over seeds,
    ``0.8310 ± 0.0040`` (mean ± sample standard deviation, from ``<metric>_sd``). A metric column
    that no front trial resolves (a TPR at an FPR below ``1 / non-members``, canaries the space
    does not plant) is left out, and a line under the table says why.
    """
    front = best_first([t for t in trials if t.pareto], objectives)
    if not front:
        return "no trial is on the Pareto front (no trial completed, or none is feasible)"
    columns = metric_columns(objectives)
    shown = [k for k in columns if any(math.isfinite(t.value(k)) for t in front)]
    body = [[str(t.number), t.label, *(_cell(t, k) for k in shown)] for t in front]
    table = format_table(body, ["trial", "tried", *(title(k) for k in shown)])
    unresolved = [
        title(k)
        for k in columns
        if k not in shown
        and (metric := find_metric(k)) is not None
        and metric.resolution is not None
        and any(k in t.attrs for t in front)
    ]
    if unresolved:
        table += (
            f"\n{', '.join(unresolved)}: not resolved by the pool's non-members "
            "(fpr_resolution), so not shown"
        )
    noise = noise_line(trials, [o.metric for o in objectives])
    return table + (f"\n{noise}" if noise else "")


def noise_line(trials: Sequence[FinishedTrial], metrics: Sequence[str]) -> str:
    """What difference is beyond seed noise, from the study's pooled seed spread
    (:mod:`search.study.noise`); empty when no trial trained two seeds."""
    parts, pooled = [], None
    for metric in metrics:
        noise = pooled_noise(trials, metric)
        if noise is None:
            continue
        pooled = pooled or noise
        seeds = max(2, round(noise.seeds / noise.trials))
        half = format_value(metric, noise.half_width(seeds, seeds), spread=True)
        parts.append(f"{title(metric)} ±{half}")
    if pooled is None:
        return ""
    seeds = max(2, round(pooled.seeds / pooled.trials))
    return (
        f"seed noise: two {seeds}-seed trials differ beyond it (95%) by more than "
        f"{', '.join(parts)} (the spread over seeds pooled over {pooled.trials} trials, "
        f"{pooled.df} degrees of freedom)"
    )


def _cell(trial: FinishedTrial, key: str) -> str:
    text = format_value(key, trial.value(key))
    sd = trial.value(f"{key}_sd")
    if math.isfinite(trial.value(key)) and math.isfinite(sd):
        return f"{text} ± {format_value(key, sd, spread=True)}"
    return text


def csv_columns(rows: Iterable[Mapping[str, Any]], objectives: Sequence[str]) -> list[str]:
    """Column order of ``trials.csv`` and ``pareto_front.csv``: trial, run id and pareto, the
    objectives (metric names), the trial's name, kind and treatment, the shown metrics, then every
    other key the rows hold, in the order first seen."""
    head = ["trial", "run_id", "pareto", *objectives, "name", "kind", *FLAT_ATTRS]
    seen = dict.fromkeys([*head, *(m.key for m in shown_metrics())])
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def rows_csv(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> str:
    """Rows (:meth:`FinishedTrial.row`) as CSV text in :func:`csv_columns` order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_columns(rows, objectives), restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def front_csv(trials: Sequence[FinishedTrial], objectives: Sequence[Objective]) -> str:
    """``pareto_front.csv``: the front, best first by the first objective."""
    front = best_first([t for t in trials if t.pareto], objectives)
    return rows_csv([t.row() for t in front], [o.metric for o in objectives])
