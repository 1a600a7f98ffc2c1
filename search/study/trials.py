"""A finished trial, as every command sees it: one record from what Optuna stored.

The driver stores what a trial did and measured on its Optuna trial (user attributes: the
treatment, :mod:`pptp.treatment`; the catalogue's recorded metrics, :mod:`pptp.metric_catalogue`;
their spread over training seeds; the MLflow run id) and the objective values. :func:`finished`
reads that back as a :class:`FinishedTrial`, which the Pareto table and its CSV, the run names and
descriptions, the report page, ``pick`` and ``compare`` all read: a trial's name, kind and values
are derived here once, never parsed back from a label.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pptp.metric_catalogue import as_number
from pptp.treatment import Kind, Treatment, run_name, treatment_from_record, trial_digits
from search.space import Objective

#: Optuna user attribute: ``{metric: [value per training seed]}`` (``study.repeats`` > 1)
PER_SEED = "per_seed"
SD_SUFFIX = "_sd"

#: user attributes that are not values (``seconds`` and ``repeats`` are: numbers to show)
_FACTS = ("mlflow_run_id", "fail_reason", "duplicate_of")


@dataclass(frozen=True)
class FinishedTrial:
    """One finished trial (complete, stopped early by the scheduler, or failed) of a study.

    ``values``: every finite number it recorded by metric name (the objectives' values from
    ``trial.values``, the recorded metrics and their ``<metric>_sd`` from its user attributes);
    ``per_seed``: a metric's value per training seed, in seed order (one value when the trial
    trained one seed); ``params``: what the sampler chose; ``attrs``: every user attribute as
    stored. ``pareto``: on the study's Pareto front (``study.best_trials``); ``feasible``: meets
    the study's constraints. ``digits``: of the trial number in :attr:`name`.
    """

    study: str
    number: int
    state: str
    treatment: Treatment
    values: Mapping[str, float]
    per_seed: Mapping[str, tuple[float, ...]]
    params: Mapping[str, Any]
    attrs: Mapping[str, Any] = field(repr=False)
    pareto: bool = False
    feasible: bool = True
    digits: int = 2

    @property
    def kind(self) -> Kind:
        return self.treatment.kind

    @property
    def label(self) -> str:
        """What it trained with: ``noise s=0.46 block3-head`` (:meth:`Treatment.label`)."""
        return self.treatment.label()

    @property
    def name(self) -> str:
        """Its name everywhere: ``t07 noise s=0.46 block3-head`` (``run_name``)."""
        return run_name(self.number, self.treatment, digits=self.digits)

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE"

    @property
    def run_id(self) -> str | None:
        value = self.attrs.get("mlflow_run_id")
        return str(value) if value else None

    @property
    def pruned(self) -> bool:
        """Stopped early by the multi-fidelity scheduler (Optuna PRUNED): its values are those
        of its last rung (:mod:`search.running.scheduler`), not of a finished training."""
        return self.state == "PRUNED"

    @property
    def repeat(self) -> bool:
        """Whether it reused a finished trial's results (a repeated proposal, not a training)."""
        return self.attrs.get("duplicate_of") is not None

    @property
    def fail_reason(self) -> str:
        if self.pruned:
            epoch = self.attrs.get("stopped_at_epoch", "?")
            return f"stopped early at epoch {epoch}: dominated at that rung (study.fidelity)"
        return str(self.attrs.get("fail_reason") or "no reason recorded")

    def value(self, metric: str) -> float:
        """The metric's value (the mean over seeds), NaN when the trial did not record it."""
        return self.values.get(metric, math.nan)

    def seeds(self, metric: str) -> tuple[float, ...]:
        """The metric per training seed (its one value with one seed; empty when not recorded)."""
        if metric in self.per_seed:
            return self.per_seed[metric]
        value = self.value(metric)
        return (value,) if math.isfinite(value) else ()

    def mean(self, metric: str) -> float:
        seeds = self.seeds(metric)
        return float(sum(seeds) / len(seeds)) if seeds else math.nan

    def sd(self, metric: str) -> float:
        """Sample standard deviation over seeds; 0 with one seed, NaN when not recorded."""
        seeds = self.seeds(metric)
        if not seeds:
            return math.nan
        if len(seeds) == 1:
            return 0.0
        m = sum(seeds) / len(seeds)
        return math.sqrt(sum((v - m) ** 2 for v in seeds) / (len(seeds) - 1))

    @property
    def n_seeds(self) -> int:
        return max((len(v) for v in self.per_seed.values()), default=1)

    def row(self) -> dict[str, Any]:
        """A flat row for CSV files: trial, state, pareto, run id, name, kind, what it trained
        with, every recorded value, and the sampled parameters as ``param.<key>``."""
        out: dict[str, Any] = {
            "trial": self.number,
            "state": self.state,
            "pareto": self.pareto,
            "run_id": self.run_id,
            "name": self.name,
            "kind": self.kind,
            **self.treatment.flat(),
        }
        if not self.complete:
            out["fail_reason"] = self.fail_reason
        out.update(self.values)
        out.update({f"param.{k}": v for k, v in self.params.items()})
        return out


def from_frozen(
    trial: FrozenTrial,
    objectives: Sequence[Objective],
    *,
    study: str = "",
    pareto: bool = False,
    digits: int = 2,
) -> FinishedTrial:
    """The :class:`FinishedTrial` of one Optuna trial."""
    attrs = dict(trial.user_attrs)
    params = dict(trial.params)
    values: dict[str, float] = {}
    for key, raw in attrs.items():
        if key in _FACTS or isinstance(raw, bool):
            continue
        number = as_number(raw)
        if math.isfinite(number):
            values[key] = number
    for objective, raw in zip(objectives, trial.values or (), strict=False):
        values[objective.metric] = float(raw)
    listed = attrs.get(PER_SEED)
    per_seed = (
        {str(m): tuple(float(v) for v in vs) for m, vs in listed.items() if vs}
        if isinstance(listed, Mapping)
        else {}
    )
    return FinishedTrial(
        study=study,
        number=trial.number,
        state=trial.state.name,
        treatment=treatment_from_record(attrs, params),
        values=values,
        per_seed=per_seed,
        params=params,
        attrs=attrs,
        pareto=pareto,
        feasible=all(v <= 0.0 for v in (trial.constraints or {}).values()),
        digits=digits,
    )


def finished(
    study: optuna.Study,
    objectives: Sequence[Objective],
    *,
    states: Sequence[TrialState] = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL),
    name: str | None = None,
) -> list[FinishedTrial]:
    """Every trial of ``study`` in ``states``, in trial order, the front marked (Optuna's own
    ``best_trials``: non-dominated feasible trials; nothing here re-implements dominance)."""
    trials = study.get_trials(deepcopy=False, states=tuple(states))
    front = {t.number for t in study.best_trials} if trials else set()
    digits = trial_digits(max((t.number for t in study.get_trials(deepcopy=False)), default=0) + 1)
    return [
        from_frozen(
            t,
            objectives,
            study=name if name is not None else study.study_name,
            pareto=t.number in front,
            digits=digits,
        )
        for t in trials
    ]


def with_run_ids(trials: Sequence[FinishedTrial], held: Mapping[int, str]) -> list[FinishedTrial]:
    """``trials`` with the MLflow run ids of ``held`` (trial number -> run id: the run directory's
    records, where a run replayed into MLflow got a new id)."""
    return [
        replace(t, attrs={**t.attrs, "mlflow_run_id": held[t.number]}) if t.number in held else t
        for t in trials
    ]


def both_families(trials: Iterable[FinishedTrial]) -> bool:
    """Whether completed ``trials`` hold both a PPTP trial and a baseline trial (each family's
    front has a trial of its own beside the undefended model)."""
    kinds = {t.kind for t in trials if t.complete}
    return "pptp" in kinds and "baseline" in kinds
