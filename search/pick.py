"""``python search/pick.py --run runs/<study>/<timestamp> --rule knee``: choose a Pareto config
for production, re-audit it, export it, register its model (DESIGN.md §3 and §5).

Order of work, so that bad input stops before anything trains:

1. open the run directory that ``search/run.py`` wrote (``state.json``, ``study.db``,
   ``space.yaml``); the candidates are Optuna's Pareto front (``study.best_trials``: feasible,
   non-dominated trials), or every feasible completed trial with ``--among all``;
2. drop the candidates that break a ``--max metric=t`` / ``--min metric=t`` bound, then let the
   rule (:data:`RULES`) choose one, and say why;
3. optionally re-train the pick over ``--seeds N`` seeds against the screening references (the
   base recipe's, from the bank), and re-audit it with references trained under its own
   protect/defense config (``--adaptive``: an attacker who knows the defense, DESIGN.md §3);
4. print the trial's screening numbers, the re-trained and the adaptive ones side by side, with
   the gap adaptive - screening of every attack metric stated;
5. export the trial's full config as a space-like YAML (``--export``, default
   ``<run dir>/picked.yaml``);
6. optionally (``--register NAME``) train the final model once, log it in an MLflow run nested
   under the study's parent run, register it and point ``--alias`` (default ``production``) at
   the new version. Model stages are deprecated in MLflow: aliases only.

Paths: ``data.data_dir`` and ``attack.bank_dir`` in a space are relative to the directory
``search/run.py`` ran in, which ``state.json`` records (``cwd``); ``pick.py`` resolves them against
it, so it finds the same bank and data from any working directory.

Rules (:data:`RULES`, ``--rule``; bounds filter the candidates first, for either rule):

- ``max-acc``: the highest value of the study's first maximised objective (``test_acc`` when no
  objective is maximised); ties go to the better values of the other objectives in order, then to
  the lower trial number.
- ``knee`` (default): every objective is scaled to [0, 1] over the candidates, 1 = best of them
  (direction aware; an objective with no spread scales to 1); the pick is the candidate closest
  (Euclidean) to the ideal corner (1, ..., 1). Closest-to-utopia rather than farthest from the
  chord between the extremes: it is defined for any number of objectives and for fronts of one or
  two points.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if __package__ in (None, ""):  # `python search/pick.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pptp.errors import ConfigError
from pptp.registry import Registry
from search import rundir
from search.cli import quiet_environment, run_command

quiet_environment()  # before anything imports ray or mlflow

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from pptp.config import TrialConfig
    from pptp.trial import TrialResult
    from search.space import Objective, Space

logger = logging.getLogger("search.pick")

#: rows of the side-by-side table (objectives not listed here are appended)
TABLE_METRICS = ("test_acc", "attack_auc", "attack_tpr@0.1%fpr", "attack_tpr@1%fpr")
#: metrics whose adaptive - screening gap is reported (higher = more leakage)
ATTACK_METRICS = ("attack_auc", "attack_tpr@0.1%fpr", "attack_tpr@1%fpr")
#: the metric ``max-acc`` maximises when no objective is maximised
DEFAULT_ACCURACY = "test_acc"
#: tag set on the picked trial's child run, and the kind of the pick run
TAG_PICKED = "picked"
KIND_PICK = "pick"
DEFAULT_ALIAS = "production"
#: how many near-misses an infeasible-bound error lists
CLOSEST_SHOWN = 3
#: |final - recorded| test accuracy above which registration says the trial did not reproduce
REPRODUCE_TOLERANCE = 0.02


# ============================================================================================
# Candidates, bounds, rules


@dataclass(frozen=True)
class Candidate:
    """One finished trial as the rules see it.

    ``metrics``: the objective values (``trial.values``, by objective name) and every finite
    numeric user attribute the trial recorded (:data:`search.samplers.RECORDED`).
    """

    number: int
    params: dict[str, Any]
    metrics: dict[str, float]
    attrs: dict[str, Any]
    on_front: bool

    def value(self, metric: str) -> float:
        """The metric's value, NaN when the trial did not record it."""
        return self.metrics.get(metric, math.nan)


def candidate_from_trial(
    trial: optuna.trial.FrozenTrial, objectives: Sequence[Objective], *, on_front: bool
) -> Candidate:
    metrics: dict[str, float] = {}
    for key, value in trial.user_attrs.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            metrics[key] = float(value)
    for objective, value in zip(objectives, trial.values or (), strict=False):
        metrics[objective.metric] = float(value)
    return Candidate(
        number=trial.number,
        params=dict(trial.params),
        metrics=metrics,
        attrs=dict(trial.user_attrs),
        on_front=on_front,
    )


@dataclass(frozen=True)
class Bound:
    """``metric <= limit`` (``kind="max"``) or ``metric >= limit`` (``kind="min"``)."""

    metric: str
    kind: Literal["max", "min"]
    limit: float

    def violation(self, candidate: Candidate) -> float:
        """0 when satisfied, else how far off (``inf`` when the trial lacks the metric)."""
        v = candidate.value(self.metric)
        if not math.isfinite(v):
            return math.inf
        return max(0.0, v - self.limit if self.kind == "max" else self.limit - v)

    def __str__(self) -> str:
        return f"{self.metric} {'<=' if self.kind == 'max' else '>='} {self.limit:g}"


def parse_bound(text: str, kind: Literal["max", "min"]) -> Bound:
    """``"attack_tpr@0.1%fpr=0.01"`` -> ``Bound("attack_tpr@0.1%fpr", kind, 0.01)``."""
    metric, sep, raw = text.partition("=")
    metric = metric.strip()
    try:
        limit = float(raw)
    except ValueError:
        limit = math.nan
    if not sep or not metric or not math.isfinite(limit):
        raise ConfigError(
            f"--{kind} {text!r}: write METRIC=NUMBER, e.g. --{kind} attack_tpr@0.1%fpr=0.01"
        )
    return Bound(metric, kind, limit)


@dataclass(frozen=True)
class Pick:
    """What a rule chose, and a sentence saying why."""

    candidate: Candidate
    reason: str


Rule = Callable[[Sequence[Candidate], Sequence["Objective"]], Pick]
RULES: Registry[Rule] = Registry("rule")


def _sign(direction: str) -> float:
    return 1.0 if direction == "maximize" else -1.0


@RULES.register("max-acc")
def max_acc(candidates: Sequence[Candidate], objectives: Sequence[Objective]) -> Pick:
    """The best value of the first maximised objective (``test_acc`` if none is maximised)."""
    metric = next((o.metric for o in objectives if o.direction == "maximize"), DEFAULT_ACCURACY)
    usable = [c for c in candidates if math.isfinite(c.value(metric))]
    if not usable:
        raise ConfigError(f"rule max-acc: no candidate trial recorded {metric}")
    others = [o for o in objectives if o.metric != metric]

    def key(c: Candidate) -> tuple[float, ...]:
        rest = [-_sign(o.direction) * c.value(o.metric) for o in others]
        return (-c.value(metric), *[r if math.isfinite(r) else math.inf for r in rest], c.number)

    best = min(usable, key=key)
    return Pick(
        best, f"the highest {metric} ({best.value(metric):.4f}) of {len(usable)} candidates"
    )


def knee_scores(
    candidates: Sequence[Candidate], objectives: Sequence[Objective]
) -> dict[int, float]:
    """Distance of each candidate (by trial number) to the ideal corner of the scaled front.

    Each objective is scaled to [0, 1] over ``candidates`` with 1 = the best value among them
    (for a minimised objective, the lowest); an objective without spread scales to 1. The score is
    the Euclidean distance to (1, ..., 1): 0 for a candidate that is best in everything,
    ``sqrt(n_objectives)`` at most.
    """
    scaled: dict[int, list[float]] = {c.number: [] for c in candidates}
    for o in objectives:
        values = [c.value(o.metric) for c in candidates]
        low, high = min(values), max(values)
        for c, v in zip(candidates, values, strict=True):
            if high == low:
                goodness = 1.0
            elif o.direction == "maximize":
                goodness = (v - low) / (high - low)
            else:
                goodness = (high - v) / (high - low)
            scaled[c.number].append(goodness)
    return {n: math.sqrt(sum((1.0 - g) ** 2 for g in gs)) for n, gs in scaled.items()}


@RULES.register("knee")
def knee(candidates: Sequence[Candidate], objectives: Sequence[Objective]) -> Pick:
    """The candidate closest to the ideal corner after scaling each objective (see module doc)."""
    if len(objectives) < 2:
        raise ConfigError("rule knee needs a study with at least 2 objectives; use max-acc")
    usable = [c for c in candidates if all(math.isfinite(c.value(o.metric)) for o in objectives)]
    if not usable:
        raise ConfigError("rule knee: no candidate trial recorded every objective")
    scores = knee_scores(usable, objectives)
    best = min(usable, key=lambda c: (scores[c.number], c.number))
    shown = ", ".join(f"{o.metric} {best.value(o.metric):.4f}" for o in objectives)
    return Pick(
        best,
        f"the knee: closest to the ideal corner of {len(usable)} candidates with each objective "
        f"scaled to [0, 1] (distance {scores[best.number]:.3f}; {shown})",
    )


def choose(
    candidates: Sequence[Candidate],
    objectives: Sequence[Objective],
    *,
    rule: str,
    bounds: Sequence[Bound] = (),
    where: str = "Pareto-front",
) -> Pick:
    """Apply ``bounds``, then ``RULES[rule]``; ConfigError when no candidate meets the bounds."""
    chosen = RULES[rule]
    check_metrics(candidates, objectives, [b.metric for b in bounds])
    kept = [c for c in candidates if all(b.violation(c) == 0.0 for b in bounds)]
    if not kept:
        raise ConfigError(_no_candidate_message(candidates, bounds, where=where))
    pick = chosen(kept, objectives)
    if bounds:
        limits = " and ".join(str(b) for b in bounds)
        reason = f"{pick.reason}; {len(kept)} of {len(candidates)} {where} trials have {limits}"
    else:
        reason = f"{pick.reason} ({where} trials)"
    return Pick(pick.candidate, reason)


def check_metrics(
    candidates: Sequence[Candidate], objectives: Sequence[Objective], metrics: Sequence[str]
) -> None:
    """ConfigError naming the valid metrics when one of ``metrics`` no candidate recorded."""
    known = {o.metric for o in objectives}.union(*(c.metrics for c in candidates))
    for metric in metrics:
        if metric not in known:
            raise ConfigError(
                f"unknown metric {metric!r}; the trials recorded: {', '.join(sorted(known))}"
            )


def _no_candidate_message(
    candidates: Sequence[Candidate], bounds: Sequence[Bound], *, where: str
) -> str:
    def miss(c: Candidate) -> float:
        return sum(b.violation(c) / (abs(b.limit) or 1.0) for b in bounds)

    closest = sorted(candidates, key=lambda c: (miss(c), c.number))[:CLOSEST_SHOWN]
    metrics = list(dict.fromkeys([*(b.metric for b in bounds), DEFAULT_ACCURACY]))
    shown = "; ".join(
        f"trial {c.number} ("
        + ", ".join(f"{m} {_fmt(c.value(m))}" for m in metrics if m in c.metrics)
        + ")"
        for c in closest
    )
    limits = " and ".join(str(b) for b in bounds)
    return (
        f"no {where} trial has {limits} ({len(candidates)} candidates); closest: {shown}. "
        "Loosen the bound, try --among all, or extend the study (search/run.py --resume "
        "--n-trials N)"
    )


# ============================================================================================
# The run directory


@dataclass(frozen=True)
class StudyRun:
    """A run directory of ``search/run.py``, opened read-only."""

    run_dir: Path
    state: rundir.RunState
    space: Space
    study: optuna.Study

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return self.space.study.objectives


def open_run(run_dir: str | Path) -> StudyRun:
    """Open a run directory; every problem is one ConfigError that says what to do."""
    import optuna

    from search.space import load_space

    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(
            f"--run {path}: no such directory (give a run directory written by search/run.py, "
            "e.g. runs/<study>/<timestamp>)"
        )
    if not (path / "study.db").is_file():
        raise ConfigError(f"--run {path}: no study.db here; is it a run directory of run.py?")
    state = rundir.read_state(path)
    space = load_space(path / "space.yaml")
    try:
        study = optuna.load_study(study_name=state.study_name, storage=rundir.storage(path))
    except KeyError:
        raise ConfigError(
            f"{path / 'study.db'} holds no study named {state.study_name!r} (state.json)"
        ) from None
    except Exception as error:  # a corrupt or foreign database: sqlalchemy's many errors
        raise ConfigError(f"cannot open {path / 'study.db'} ({error})") from None
    if len(study.directions) != len(space.study.objectives):
        raise ConfigError(
            f"{path}: the study has {len(study.directions)} objectives but space.yaml lists "
            f"{len(space.study.objectives)}; the run directory is inconsistent"
        )
    return StudyRun(path.resolve(), state, space, study)


def candidates(run: StudyRun, *, among: str = "front") -> list[Candidate]:
    """The trials the rule chooses from: the Pareto front, or every feasible completed trial."""
    from optuna.trial import TrialState

    trials = run.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        counts = ", ".join(
            f"{sum(t.state == s for t in trials)} {s.name.lower()}"
            for s in (TrialState.FAIL, TrialState.RUNNING, TrialState.PRUNED)
        )
        raise ConfigError(
            f"{run.run_dir}: the study has no completed trial ({len(trials)} trials: {counts}); "
            "run or resume the search first"
        )
    front = {t.number for t in run.study.best_trials}
    feasible = [t for t in complete if all(v <= 0.0 for v in t.constraints.values())]
    chosen = [t for t in feasible if t.number in front] if among == "front" else feasible
    if not chosen:
        raise ConfigError(
            f"{run.run_dir}: none of the {len(complete)} completed trials meets the study's "
            "constraints, so there is no Pareto front to pick from"
        )
    return [candidate_from_trial(t, run.objectives, on_front=t.number in front) for t in chosen]


def screening_references(run: StudyRun) -> TrialConfig | None:
    """The config the screening references followed: the base recipe (absolute paths), or None
    when the space searches data or model keys (each trial then had references of its own)."""
    if any(k.startswith(("data.", "model.")) for k in run.space.params):
        return None
    base = run.space.base_config()
    return base.replace(**rundir.absolute_paths(base, cwd=run.state.cwd))


# ============================================================================================
# Re-training and the adaptive audit


@dataclass(frozen=True)
class Audit:
    """Metrics of one config re-trained on several seeds (``runs[i]`` belongs to ``seeds[i]``)."""

    label: str
    seeds: tuple[int, ...]
    runs: tuple[dict[str, float], ...]

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


def _ensure_references(cfg: TrialConfig, *, adaptive: bool, label: str) -> None:
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
    from pptp.trial import run_trial

    runs = []
    for i, seed in enumerate(seeds, start=1):
        start = time.perf_counter()
        result = run_trial(cfg.replace(**{"train.seed": seed}), references=references)
        metrics = result.metrics()
        runs.append(metrics)
        shown = ", ".join(f"{m} {_fmt(metrics.get(m, math.nan))}" for m in TABLE_METRICS)
        print(
            f"{label:<11} seed {seed} ({i}/{len(seeds)}): {shown} "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    return Audit(label, tuple(seeds), tuple(runs))


def retrain(cfg: TrialConfig, seeds: Sequence[int], *, references: TrialConfig | None) -> Audit:
    """The screening setting on new seeds: references of ``references``' recipe (the base
    recipe's, reused from the bank), the target re-trained with each ``train.seed``."""
    if references is not None:
        _ensure_references(references, adaptive=False, label="re-train")
    return _run_seeds(cfg, seeds, label="re-train", references=references)


def adaptive_audit(cfg: TrialConfig, seeds: Sequence[int]) -> Audit:
    """Re-audit with references trained under ``cfg``'s own protect/defense config.

    The K adaptive references are trained once (``train.seed`` does not enter the bank key) and
    kept in the bank; each seed then re-trains only the target.
    """
    adaptive = cfg.replace(**{"attack.adaptive": True})
    _ensure_references(adaptive, adaptive=True, label="adaptive")
    return _run_seeds(adaptive, seeds, label="adaptive", references=None)


def audit_seeds(first: int, n: int) -> tuple[int, ...]:
    """The ``n`` seeds after the trial's own: ``first + 1 .. first + n`` (1..n by default)."""
    return tuple(range(first + 1, first + n + 1))


# ============================================================================================
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
        return list(dict.fromkeys([*TABLE_METRICS, *(o.metric for o in objectives)]))

    def table(self, objectives: Sequence[Objective]) -> str:
        head = ["metric", f"screening (trial {self.trial}, seed {self.trial_seed})"]
        if self.retrained is not None:
            head.append(f"re-trained ({len(self.retrained.seeds)} seeds)")
        if self.adaptive is not None:
            head += [f"adaptive ({len(self.adaptive.seeds)} seeds)", "adaptive - screening"]
        rows = [head]
        for metric in self.metrics(objectives):
            row = [metric, _fmt(self.screening.get(metric, math.nan))]
            if self.retrained is not None:
                row.append(self.retrained.cell(metric))
            if self.adaptive is not None:
                gap = self.gap(metric) if metric in ATTACK_METRICS else math.nan
                row += [self.adaptive.cell(metric), _fmt(gap, signed=True)]
            rows.append(row)
        return _columns(rows)

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


def _fmt(value: float, *, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _columns(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def candidates_table(
    cands: Sequence[Candidate],
    objectives: Sequence[Objective],
    *,
    picked: int,
    bounds: Sequence[Bound] = (),
) -> str:
    """The candidates, best first by the first objective; the pick and bound misses marked."""
    first = objectives[0]
    ordered = sorted(
        cands, key=lambda c: (-_sign(first.direction) * c.value(first.metric), c.number)
    )
    metrics = list(dict.fromkeys([*(o.metric for o in objectives), *(b.metric for b in bounds)]))
    rows = [["trial", *metrics, "operator", "strength", "protected groups", ""]]
    for c in ordered:
        mark = (
            "<- picked"
            if c.number == picked
            else ("breaks a bound" if any(b.violation(c) > 0 for b in bounds) else "")
        )
        strength = c.attrs.get("strength")
        rows.append(
            [
                str(c.number),
                *(_fmt(c.value(m)) for m in metrics),
                str(c.attrs.get("operator", "-")),
                f"{strength:.3f}" if isinstance(strength, int | float) else "-",
                str(c.attrs.get("protected_groups", "-")),
                mark,
            ]
        )
    return _columns(rows)


# ============================================================================================
# Export


def picked_space(run: StudyRun, cfg: TrialConfig, pick: Pick) -> dict[str, Any]:
    """A space file that pins every key of ``cfg`` (``fixed``, no ``params``).

    ``TrialConfig.from_flat(doc["fixed"])`` gives ``cfg`` back; ``search.space.load_space``
    accepts the file (a one-config study: study name ``<study>-trial<N>``, random sampler).
    """
    study = run.space.resolved()["study"]
    study.update(
        name=f"{run.state.study_name}-trial{pick.candidate.number}",
        sampler="random",
        sampler_options={},
        n_trials=1,
        max_concurrent=1,
        enqueue=[],
    )
    return {"study": study, "fixed": cfg.to_flat()}


def export_header(run: StudyRun, pick: Pick, rule: str, comparison: Comparison) -> list[str]:
    c = pick.candidate
    lines = [
        f"Picked by search/pick.py on {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"study {run.state.study_name}, run directory {run.run_dir}",
        f"trial {c.number} (MLflow run {c.attrs.get('mlflow_run_id', '-')}), rule {rule}: "
        f"{pick.reason}",
        "screening: "
        + ", ".join(f"{m} {_fmt(comparison.screening.get(m, math.nan))}" for m in TABLE_METRICS),
    ]
    for audit in (comparison.retrained, comparison.adaptive):
        if audit is not None:
            lines.append(
                f"{audit.label} (seeds {', '.join(map(str, audit.seeds))}): "
                + ", ".join(f"{m} {audit.cell(m)}" for m in TABLE_METRICS)
            )
    if comparison.adaptive is not None:
        lines.append(
            "adaptive - screening: "
            + ", ".join(f"{m} {_fmt(comparison.gap(m), signed=True)}" for m in ATTACK_METRICS)
        )
    lines += [
        "",
        "Relative data.data_dir / attack.bank_dir are relative to the directory run.py ran in.",
        "Load:  TrialConfig.from_flat(yaml.safe_load(open(PATH))['fixed'])",
        "A valid space file (search.space.load_space); search/run.py needs a searched key",
        "to run it (Ray's OptunaSearch refuses an empty space): move e.g. train.seed from",
        "fixed to params.",
    ]
    return lines


def write_export(path: Path, doc: Mapping[str, Any], header: Sequence[str]) -> Path:
    import yaml

    text = "".join(f"# {line}".rstrip() + "\n" for line in header)
    text += yaml.safe_dump(dict(doc), sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ============================================================================================
# Registration


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    alias: str
    run_id: str
    experiment_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def check_registry_names(name: str, alias: str) -> None:
    """MLflow's own rules for registered model and alias names, checked before any training."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    try:
        validation._validate_model_name(name)
        validation._validate_model_alias_name(alias)
        validation._validate_model_alias_name_reserved(alias)
    except MlflowException as error:
        raise ConfigError(f"--register {name!r} --alias {alias!r}: {error.message}") from None


def input_example(cfg: TrialConfig, *, n: int = 2) -> Any:
    """``n`` held-out test images (never a member of any training set), float32 numpy
    ``(n, C, H, W)`` normalised like the pool: the model's input example and signature."""
    from pptp.train import build_pool

    pool = build_pool(cfg.data, device="cpu")
    return pool.x_test[:n].detach().cpu().numpy()


def log_model(model: nn.Module, example: Any, *, fmt: str) -> Any:
    """``mlflow.pytorch.log_model`` into the active run; returns its ``ModelInfo``.

    ``pt2`` (default; MLflow 3's safe format: ``torch.export``, loads without unpickling) needs
    the input example and a tensor signature; ``pickle`` loads only with
    ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``. Requirements are MLflow's pinned defaults
    (inference would start a subprocess that loads the model).
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    model = model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    try:
        return mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example,
            signature=infer_signature(example, logits),
            serialization_format=fmt,
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        )
    except Exception as error:
        if fmt != "pt2":
            raise
        raise RuntimeError(
            f"torch.export could not trace the model ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); pass --model-format pickle"
        ) from error


def register(
    run: StudyRun,
    cfg: TrialConfig,
    pick: Pick,
    comparison: Comparison,
    *,
    rule: str,
    references: TrialConfig | None,
    export_path: Path,
    tracking_uri: str,
    experiment_id: str,
    name: str,
    alias: str,
    model_format: str = "pt2",
) -> Registered:
    """Train the final model (the trial's config and seed), log it in an MLflow run nested under
    the study's parent run, register a new version of ``name`` and point ``alias`` at it."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pptp.trial import run_trial
    from search.tracking import (
        TAG_KIND,
        TAG_PARENT,
        TAG_STUDY,
        git_commit,
        metric_key,
        write_trial_artifacts,
    )

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    start = time.perf_counter()
    print(f"register    training the final model (seed {cfg.train.seed})", flush=True)
    result: TrialResult = run_trial(cfg, references=references, keep_model=True)
    assert result.model is not None
    c = pick.candidate
    print(
        f"register    trained: test_acc {result.test_acc:.4f}, attack_auc "
        f"{_fmt(result.metrics().get('attack_auc', math.nan))} "
        f"({time.perf_counter() - start:.0f}s)",
        flush=True,
    )
    recorded = c.value("test_acc")
    if math.isfinite(recorded) and abs(result.test_acc - recorded) > REPRODUCE_TOLERANCE:
        print(
            f"note        the trial recorded test_acc {recorded:.4f} with the same config and "
            "seed; training is not bit-for-bit reproducible across devices and thread counts",
            flush=True,
        )
    tags = {
        TAG_KIND: KIND_PICK,
        TAG_STUDY: run.state.study_name,
        "picked_trial": str(c.number),
        "rule": rule,
        "reason": pick.reason[:5000],
        "git_commit": git_commit(),
        "run_dir": str(run.run_dir),
    }
    if run.state.parent_run_id:
        tags[TAG_PARENT] = run.state.parent_run_id
    if c.attrs.get("mlflow_run_id"):
        tags["picked_run_id"] = str(c.attrs["mlflow_run_id"])
    metrics = {**result.metrics(), **comparison.summary_metrics()}
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"pick-trial-{c.number:04d}", tags=tags
    ) as active:
        run_id = active.info.run_id
        mlflow.log_params({metric_key(k): str(v)[:6000] for k, v in cfg.to_flat().items()})
        mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()})
        mlflow.log_artifact(str(export_path))
        with tempfile.TemporaryDirectory(prefix="pptp-pick-") as tmp:
            write_trial_artifacts(result, Path(tmp))
            mlflow.log_artifacts(tmp)
        info = log_model(result.model, input_example(cfg), fmt=model_format)
    version = mlflow.register_model(
        info.model_uri,
        name,
        tags={"study": run.state.study_name, "trial": str(c.number), "rule": rule},
    )
    client.update_model_version(
        name,
        version.version,
        description=f"study {run.state.study_name}, trial {c.number}, rule {rule}: "
        f"{pick.reason}. Input: float32 (N, C, H, W) normalised like pptp's pool of "
        f"data.name={cfg.data.name}; output: logits (N, n_classes).",
    )
    client.set_registered_model_alias(name, alias, str(version.version))
    client.set_tag(run_id, "registered_model", f"{name}/{version.version}")
    if c.attrs.get("mlflow_run_id"):
        try:
            client.set_tag(str(c.attrs["mlflow_run_id"]), TAG_PICKED, "true")
        except MlflowException as error:
            logger.warning(
                "could not tag trial run %s picked=true: %s",
                c.attrs["mlflow_run_id"],
                error.message,
            )
    return Registered(name, str(version.version), alias, run_id, experiment_id)


def study_experiment(tracking_uri: str, study_name: str) -> str:
    """The id of the study's MLflow experiment in ``tracking_uri``; ConfigError when absent."""
    from mlflow import MlflowClient

    experiment = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(study_name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"{tracking_uri} has no MLflow experiment {study_name!r}; give the tracking URI "
            "the study used (--tracking-uri, or the one in state.json)"
        )
    return str(experiment.experiment_id)


# ============================================================================================
# Entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="search/pick.py",
        description="Choose a Pareto config by a stated rule, re-audit it, export it and "
        "register its model.",
    )
    p.add_argument("--run", required=True, help="run directory of search/run.py")
    p.add_argument(
        "--rule", default="knee", help=f"how to choose: {', '.join(RULES)} (default knee)"
    )
    p.add_argument(
        "--max",
        action="append",
        default=[],
        metavar="METRIC=T",
        help="keep candidates with METRIC <= T (repeatable), e.g. attack_tpr@0.1%%fpr=0.01",
    )
    p.add_argument(
        "--min",
        action="append",
        default=[],
        metavar="METRIC=T",
        help="keep candidates with METRIC >= T (repeatable), e.g. test_acc=0.9",
    )
    p.add_argument(
        "--among",
        choices=("front", "all"),
        default="front",
        help="candidates: the Pareto front (default) or every feasible completed trial",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=0,
        help="re-train the pick on N new seeds (trial seed + 1 .. + N) with the screening "
        "references (default 0: no re-training)",
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="re-audit with references trained under the pick's own config (trains K "
        "reference models; on the --seeds seeds, or the trial's own seed)",
    )
    p.add_argument("--export", help="where to write the config (default <run>/picked.yaml)")
    p.add_argument("--register", metavar="NAME", help="register the model under this name")
    p.add_argument("--alias", help=f"alias of the new version (default {DEFAULT_ALIAS})")
    p.add_argument(
        "--model-format",
        choices=("pt2", "pickle"),
        default="pt2",
        help="MLflow serialization of the model (default pt2: torch.export, no unpickling)",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    return p.parse_args(argv)


@dataclasses.dataclass
class Plan:
    args: argparse.Namespace
    run: StudyRun
    rule: str
    bounds: list[Bound]
    candidates: list[Candidate]
    pick: Pick
    config: TrialConfig  # the trial's config as the space writes it (exported)
    seeds: tuple[int, ...]
    export: Path
    tracking_uri: str | None  # set when registering
    experiment_id: str | None  # the study's MLflow experiment, set when registering
    alias: str


def prepare(args: argparse.Namespace) -> Plan:
    """Every check that can fail on bad input; trains nothing."""
    from search.tracking import check_tracking, resolve_tracking_uri

    if args.seeds < 0:
        raise ConfigError(f"--seeds {args.seeds}: give 0 (no re-training) or more")
    if args.alias is not None and not args.register:
        raise ConfigError("--alias needs --register NAME")
    alias = args.alias or DEFAULT_ALIAS
    if args.register:
        check_registry_names(args.register, alias)
    rule = args.rule
    RULES[rule]  # unknown rule: ConfigError listing the known ones
    bounds = [parse_bound(t, "max") for t in args.max] + [parse_bound(t, "min") for t in args.min]
    run = open_run(args.run)
    cands = candidates(run, among=args.among)
    where = "Pareto-front" if args.among == "front" else "feasible completed"
    pick = choose(cands, run.objectives, rule=rule, bounds=bounds, where=where)
    config = run.space.trial_config(pick.candidate.params)
    uri = experiment_id = None
    if args.register:
        uri = resolve_tracking_uri(args.tracking_uri or run.state.tracking_uri)
        check_tracking(uri)
        experiment_id = study_experiment(uri, run.state.study_name)
    if args.seeds or args.adaptive or args.register:
        from pptp.train import check_data

        check_data(config.replace(**rundir.absolute_paths(config, cwd=run.state.cwd)).data)
    export = Path(args.export) if args.export else run.run_dir / "picked.yaml"
    return Plan(
        args=args,
        run=run,
        rule=rule,
        bounds=bounds,
        candidates=cands,
        pick=pick,
        config=config,
        seeds=audit_seeds(config.train.seed, args.seeds),
        export=export,
        tracking_uri=uri,
        experiment_id=experiment_id,
        alias=alias,
    )


def describe_pick(plan: Plan) -> str:
    run, c = plan.run, plan.pick.candidate
    trials = run.study.get_trials(deepcopy=False)
    states = {t.state.name.lower() for t in trials}
    counts = ", ".join(
        f"{sum(t.state.name.lower() == s for t in trials)} {s}" for s in sorted(states)
    )
    rule = plan.rule + (" with " + " and ".join(map(str, plan.bounds)) if plan.bounds else "")
    protect = (
        f"{c.attrs.get('operator', '-')} strength {c.attrs.get('strength', '-')} on "
        f"{c.attrs.get('protected_groups', '-')}, defense {c.attrs.get('defense', '-')}"
    )
    lines = [
        f"run         {run.run_dir} (study {run.state.study_name}; {counts})",
        f"rule        {rule}",
        f"picked      trial {c.number}: {plan.pick.reason}",
        f"            {protect}",
        "            " + ", ".join(f"{k}={v}" for k, v in c.params.items()),
        "",
        candidates_table(plan.candidates, run.objectives, picked=c.number, bounds=plan.bounds),
    ]
    note = _off_front_note(plan)
    if note:
        lines += ["", note]
    return "\n".join(lines)


def _off_front_note(plan: Plan) -> str:
    """A word when a trial off the front meets the bounds with a better accuracy metric."""
    if plan.args.among != "front" or not plan.bounds:
        return ""
    objectives = {o.metric for o in plan.run.objectives}
    if all(b.metric in objectives for b in plan.bounds):
        return ""  # bounds on objectives only: the front holds the best of each bounded slice
    try:
        every = candidates(plan.run, among="all")
    except ConfigError:
        return ""
    metric = next(
        (o.metric for o in plan.run.objectives if o.direction == "maximize"), DEFAULT_ACCURACY
    )
    picked = plan.pick.candidate.value(metric)
    better = [
        c
        for c in every
        if not c.on_front
        and all(b.violation(c) == 0 for b in plan.bounds)
        and c.value(metric) > picked
    ]
    if not better:
        return ""
    best = max(better, key=lambda c: c.value(metric))
    return (
        f"note        trial {best.number} is off the front but meets the bounds with {metric} "
        f"{best.value(metric):.4f} > {picked:.4f}; --among all considers it"
    )


def execute(plan: Plan) -> int:
    args, run, c = plan.args, plan.run, plan.pick.candidate
    print(describe_pick(plan), flush=True)
    cfg_run = plan.config.replace(**rundir.absolute_paths(plan.config, cwd=run.state.cwd))
    references = screening_references(run)
    comparison = Comparison(
        trial=c.number,
        trial_seed=plan.config.train.seed,
        screening={m: c.value(m) for m in {*TABLE_METRICS, *c.metrics}},
    )
    bank = Path(cfg_run.attack.bank_dir)
    print(f"\nbank        {bank}", flush=True)
    if (plan.seeds or args.adaptive or args.register) and not bank.is_dir():
        print(
            f"note        {bank} does not exist: the screening references will be trained "
            "again. The space's paths are relative to where search/run.py ran; run pick.py "
            "from there to reuse its bank",
            flush=True,
        )
    try:
        if plan.seeds:
            print(
                f"re-train    seeds {', '.join(map(str, plan.seeds))}: the screening setting "
                "(base-recipe references from the bank)",
                flush=True,
            )
            comparison = dataclasses.replace(
                comparison, retrained=retrain(cfg_run, plan.seeds, references=references)
            )
        if args.adaptive:
            seeds = plan.seeds or (plan.config.train.seed,)
            print(
                f"adaptive    seeds {', '.join(map(str, seeds))}: references trained under the "
                f"pick's own protect/defense config (costs {cfg_run.attack.n_references} "
                "reference trainings once, then one target per seed)",
                flush=True,
            )
            comparison = dataclasses.replace(comparison, adaptive=adaptive_audit(cfg_run, seeds))
        print()
        print(comparison.table(run.objectives))
        if comparison.adaptive is not None:
            print(comparison.gap_note())
        header = export_header(run, plan.pick, plan.rule, comparison)
        path = write_export(plan.export, picked_space(run, plan.config, plan.pick), header)
        registered = None
        if args.register:
            assert plan.tracking_uri is not None and plan.experiment_id is not None
            print()
            registered = register(
                run,
                cfg_run,
                plan.pick,
                comparison,
                rule=plan.rule,
                references=references,
                export_path=path,
                tracking_uri=plan.tracking_uri,
                experiment_id=plan.experiment_id,
                name=args.register,
                alias=plan.alias,
                model_format=args.model_format,
            )
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was exported or registered")
        return 130
    print("\nwhere things went:")
    print(f"  config      {path}  (TrialConfig.from_flat(yaml.safe_load(...)['fixed']))")
    if registered is not None:
        print(
            f"  MLflow run  {registered.run_id} (experiment {registered.experiment_id}, "
            f"nested under parent run {run.state.parent_run_id}; {plan.tracking_uri})"
        )
        print(
            f"  registry    {registered.name} version {registered.version}, alias "
            f"{registered.alias}: {registered.uri}"
        )
        load = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true; " if args.model_format == "pickle" else ""
        print(
            f"  load        {load}mlflow.pytorch.load_model({registered.uri!r})  "
            "# float32 (N, C, H, W) normalised like the pool -> logits"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv), prepare, execute)


if __name__ == "__main__":
    sys.exit(main())
