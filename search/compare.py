"""``python search/compare.py --run RUN``: did PPTP beat the baselines on this study?

Reads one finished run directory (a study that searched PPTP and enqueued the baselines, as
``spaces/fashion.yaml`` does) or several (say a PPTP-only study and a baselines-only one, each
given with ``--run``) and sorts every completed trial into one of four kinds by what it trained
with:

=================  =====================================================================
``undefended``     no protection (strength 0 or operator ``none``) and defense ``none``
``baseline``       a classic defense (``defense.name``) and no protection
``pptp``           a protection operator at strength > 0 and defense ``none``
``combined``       both: drawn, but in neither front
=================  =====================================================================

It draws them on the study's two objectives (attack metric across, accuracy up): every PPTP trial
and the PPTP front, each baseline trial with its seed standard deviation as error bars (when the
study trained several seeds per trial, ``study.repeats``), the undefended model, and the
baselines' front. The undefended model belongs to both fronts (each family can choose not to
defend). For each front it reports the **hypervolume**: the area the front dominates up to a
reference point shared by both fronts (the worst accuracy and the worst attack value among all
trials shown, so the number compares the two fronts on this study and means nothing across
studies). A **bootstrap over training seeds** gives each hypervolume and their difference an
interval: each of ``--bootstrap`` resamples draws, for every trial, its seeds with replacement
(accuracy and attack values of a seed stay paired) and recomputes means and hypervolumes. A
difference whose interval excludes 0 is beyond seed noise; trials with one seed add no spread, so
the interval is then too narrow and the output says so.

Writes ``comparison.png``, ``comparison.csv`` (one row per trial) and ``comparison.md`` (the table
and the hypervolumes) to ``--output`` (default: the first run directory) and, when the tracking
store answers, to each study's parent MLflow run under ``comparison/``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python search/compare.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

from pptp.errors import ConfigError
from search.cli import quiet_environment, run_command

quiet_environment()

logger = logging.getLogger("search.compare")

KINDS = ("undefended", "baseline", "pptp", "combined")
PER_SEED = "per_seed"  # trial user attribute: {metric: [value per training seed]}
TABLE_METRICS = (
    "test_acc",
    "attack_auc",
    "attack_tpr@1%fpr",
    "canary_auc",
    "canary_tpr@5%fpr",
)
"""Metrics the table shows when the trials recorded them (mean +- sd over seeds)."""


@dataclasses.dataclass(frozen=True)
class Objective2:
    """One axis of the comparison: a metric and whether larger is better."""

    metric: str
    maximize: bool

    @property
    def sign(self) -> float:
        """+1 for a maximised metric, -1 for a minimised one (larger signed value = better)."""
        return 1.0 if self.maximize else -1.0


@dataclasses.dataclass(frozen=True)
class Point:
    """One completed trial. ``seeds[metric]`` holds the metric per training seed, in seed order
    (one value when the trial trained one seed); seed ``i`` of every metric is the same model."""

    study: str
    trial: int
    kind: str
    label: str
    seeds: dict[str, tuple[float, ...]]

    def mean(self, metric: str) -> float:
        values = self.seeds.get(metric)
        return float(np.mean(values)) if values else math.nan

    def sd(self, metric: str) -> float:
        """Sample standard deviation over seeds; 0 with one seed, NaN when not recorded."""
        values = self.seeds.get(metric)
        if not values:
            return math.nan
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    @property
    def n_seeds(self) -> int:
        return max((len(v) for v in self.seeds.values()), default=0)


def classify(attrs: dict[str, Any], params: dict[str, Any]) -> tuple[str, str]:
    """``(kind, label)`` of a trial from what it recorded (operator, strength, defense, groups)."""
    operator = str(attrs.get("operator", params.get("protect.operator", "none")))
    strength = float(attrs.get("strength", params.get("protect.strength", 0.0)) or 0.0)
    defense = str(attrs.get("defense", params.get("defense.name", "none")))
    defense_strength = attrs.get("defense_strength", params.get("defense.strength"))
    knob = f" {float(defense_strength):.2f}" if defense_strength is not None else ""
    protected = operator != "none" and strength > 0
    pptp = f"{operator} {strength:.2f} [{attrs.get('protected_groups', '-')}]"
    if not protected and defense == "none":
        return "undefended", "undefended"
    if not protected:
        return "baseline", f"{defense}{knob}"
    if defense == "none":
        return "pptp", pptp
    return "combined", f"{pptp} + {defense}{knob}"


def points_from_trials(
    trials: Sequence[Any], objective_names: Sequence[str], study: str
) -> list[Point]:
    """:class:`Point` per completed Optuna trial (``FrozenTrial``), from its values and attrs."""
    out = []
    for t in trials:
        if t.values is None:
            continue
        attrs = dict(t.user_attrs)
        recorded = {m: v for m, v in attrs.items() if isinstance(v, int | float)}
        recorded.update(dict(zip(objective_names, t.values, strict=True)))
        per_seed = attrs.get(PER_SEED) or {}
        seeds: dict[str, tuple[float, ...]] = {}
        for metric, value in recorded.items():
            listed = per_seed.get(metric)
            seeds[metric] = tuple(float(v) for v in listed) if listed else (float(value),)
        kind, label = classify(attrs, dict(t.params))
        out.append(Point(study, t.number, kind, label, seeds))
    return out


def load_points(run_dirs: Sequence[Path]) -> tuple[list[Point], tuple[Objective2, Objective2]]:
    """Every completed trial of the runs, and the two objectives (the first run's)."""
    from optuna.trial import TrialState

    from search.pick import open_run

    points: list[Point] = []
    axes: tuple[Objective2, Objective2] | None = None
    for run_dir in run_dirs:
        run = open_run(run_dir)
        objectives = tuple(Objective2(o.metric, o.direction == "maximize") for o in run.objectives)
        if len(objectives) != 2:
            raise ConfigError(
                f"--run {run_dir}: the study has {len(objectives)} objectives; the comparison "
                "draws two (accuracy and an attack metric)"
            )
        if axes is not None and objectives != axes:
            raise ConfigError(
                f"--run {run_dir}: objectives {[o.metric for o in objectives]} differ from the "
                f"first run's {[o.metric for o in axes]}; compare studies with the same objectives"
            )
        axes = (objectives[0], objectives[1])
        trials = run.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        points += points_from_trials(trials, [o.metric for o in objectives], run.state.study_name)
    if axes is None:
        raise ConfigError("give at least one --run")
    return points, axes


# ---------------------------------------------------------------------------------------------
# Fronts and hypervolumes


def _signed(values: np.ndarray, axes: tuple[Objective2, Objective2]) -> np.ndarray:
    """``(n, 2)`` objective values -> values where larger is better on both axes."""
    return values * np.array([a.sign for a in axes])


def hypervolume(
    values: np.ndarray, reference: np.ndarray, axes: tuple[Objective2, Objective2]
) -> float:
    """Area dominated by ``values (n, 2)`` up to ``reference (2,)``, both in objective units.

    Points no better than the reference on both axes add nothing. Optuna's
    ``compute_hypervolume`` (its WFG implementation, used by its own samplers) does the
    geometry, on values turned into losses.
    """
    from optuna._hypervolume import compute_hypervolume

    if len(values) == 0:
        return 0.0
    losses = -_signed(np.asarray(values, dtype=float), axes)
    ref = -_signed(np.asarray(reference, dtype=float)[None, :], axes)[0]
    inside = losses[(losses < ref).all(axis=1)]
    return float(compute_hypervolume(inside, ref)) if len(inside) else 0.0


def front(points: Sequence[Point], axes: tuple[Objective2, Objective2]) -> list[Point]:
    """The non-dominated points (Optuna's ``best_trials`` of an in-memory study of them)."""
    import optuna

    if not points:
        return []
    study = optuna.create_study(directions=["maximize" if a.maximize else "minimize" for a in axes])
    for i, p in enumerate(points):
        study.add_trial(
            optuna.trial.create_trial(
                values=[p.mean(a.metric) for a in axes], user_attrs={"index": i}
            )
        )
    best = [points[t.user_attrs["index"]] for t in study.best_trials]
    return sorted(best, key=lambda p: -axes[0].sign * p.mean(axes[0].metric))


@dataclasses.dataclass(frozen=True)
class Interval:
    value: float  # on the trials' mean values
    low: float  # 2.5th percentile of the bootstrap
    high: float  # 97.5th percentile

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclasses.dataclass(frozen=True)
class Comparison:
    axes: tuple[Objective2, Objective2]
    points: tuple[Point, ...]
    reference: tuple[float, float]
    pptp: Interval
    baselines: Interval
    difference: Interval  # pptp - baselines, paired over resamples
    share_pptp_better: float  # fraction of resamples where the PPTP hypervolume is larger
    n_bootstrap: int

    def family(self, name: str) -> list[Point]:
        """The points of a front's family: PPTP or baseline trials, plus the undefended."""
        kind = "pptp" if name == "pptp" else "baseline"
        return [p for p in self.points if p.kind in (kind, "undefended")]

    @property
    def verdict(self) -> str:
        """The plain-words answer, from the paired interval of the hypervolume difference."""
        if not self.family("pptp") or not self.family("baseline"):
            return "one family has no completed trial: nothing to compare"
        single = all(p.n_seeds <= 1 for p in self.points)
        caveat = (
            " (every trial trained one seed, so the interval shows no seed noise: rerun with "
            "study.repeats >= 2 before trusting it)"
            if single
            else ""
        )
        if self.difference.low > 0:
            return (
                f"yes: the PPTP front dominates more than the baselines' beyond seed noise{caveat}"
            )
        if self.difference.high < 0:
            return f"no: the baselines' front dominates more than PPTP's beyond seed noise{caveat}"
        return f"no clear winner: the hypervolume difference is within seed noise{caveat}"


def _paired(point: Point, metrics: Sequence[str]) -> np.ndarray:
    """``(n_seeds, len(metrics))``: a metric recorded only as a mean is repeated for each seed."""
    n = point.n_seeds
    columns = [
        point.seeds[m] if len(point.seeds[m]) == n else (point.mean(m),) * n for m in metrics
    ]
    return np.array(columns, dtype=float).T


def compare(
    points: Sequence[Point],
    axes: tuple[Objective2, Objective2],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Hypervolumes of the PPTP and baseline families, with bootstrap intervals over seeds."""
    metrics = [a.metric for a in axes]
    usable = [p for p in points if all(math.isfinite(p.mean(m)) for m in metrics)]
    if not usable:
        raise ConfigError("no completed trial has both objectives; nothing to compare")
    means = np.array([[p.mean(m) for m in metrics] for p in usable])
    worst = _signed(means, axes).min(axis=0) * np.array([a.sign for a in axes])
    reference = (float(worst[0]), float(worst[1]))
    masks = {
        name: np.array([p.kind in (kind, "undefended") for p in usable])
        for name, kind in (("pptp", "pptp"), ("baseline", "baseline"))
    }

    def volumes(values: np.ndarray) -> tuple[float, float]:
        return (
            hypervolume(values[masks["pptp"]], np.array(reference), axes),
            hypervolume(values[masks["baseline"]], np.array(reference), axes),
        )

    observed = volumes(means)
    rng = np.random.default_rng(seed)
    samples = np.empty((n_bootstrap, 2))
    seeds = [_paired(p, metrics) for p in usable]  # (n_seeds, 2) each
    for b in range(n_bootstrap):
        resampled = np.array([s[rng.integers(0, len(s), len(s))].mean(axis=0) for s in seeds])
        samples[b] = volumes(resampled)
    diff = samples[:, 0] - samples[:, 1]

    def interval(value: float, draws: np.ndarray) -> Interval:
        low, high = np.percentile(draws, [2.5, 97.5])
        return Interval(value, float(low), float(high))

    return Comparison(
        axes=axes,
        points=tuple(usable),
        reference=reference,
        pptp=interval(observed[0], samples[:, 0]),
        baselines=interval(observed[1], samples[:, 1]),
        difference=interval(observed[0] - observed[1], diff),
        share_pptp_better=float((diff > 0).mean()),
        n_bootstrap=n_bootstrap,
    )


# ---------------------------------------------------------------------------------------------
# Output: table, CSV, figure


def _cell(point: Point, metric: str) -> str:
    mean, sd = point.mean(metric), point.sd(metric)
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.4f} ± {sd:.4f}" if point.n_seeds > 1 else f"{mean:.4f}"


def shown_points(result: Comparison) -> list[Point]:
    """Table rows: the undefended model, every baseline trial, then the PPTP front."""
    axes = result.axes
    first = axes[0]
    order = sorted(result.points, key=lambda p: -first.sign * p.mean(first.metric))
    undefended = [p for p in order if p.kind == "undefended"]
    baselines = sorted((p for p in order if p.kind == "baseline"), key=lambda p: p.label)
    return undefended + baselines + front([p for p in order if p.kind == "pptp"], axes)


def table_markdown(result: Comparison, metrics: Sequence[str]) -> str:
    """The comparison table (mean ± sd over seeds) and the hypervolumes, as Markdown."""
    present = [m for m in metrics if any(math.isfinite(p.mean(m)) for p in result.points)]
    header = ["kind", "trial", "config", "seeds", *present]
    rows = [
        [p.kind, f"{p.study}#{p.trial}", p.label, str(p.n_seeds), *[_cell(p, m) for m in present]]
        for p in shown_points(result)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    ref = ", ".join(
        f"{a.metric} {v:.4f}" for a, v in zip(result.axes, result.reference, strict=True)
    )
    lines += [
        "",
        f"Hypervolume (reference point: {ref}; 95% bootstrap interval over training seeds, "
        f"{result.n_bootstrap} resamples):",
        "",
        f"- PPTP front: {result.pptp}",
        f"- baselines' front: {result.baselines}",
        f"- PPTP minus baselines: {result.difference} (PPTP larger in "
        f"{100 * result.share_pptp_better:.0f}% of resamples)",
        "",
        f"Did PPTP beat the baselines here? {result.verdict}.",
    ]
    return "\n".join(lines)


def write_csv(result: Comparison, path: Path, metrics: Sequence[str]) -> Path:
    fronts = {
        id(p) for name in ("pptp", "baseline") for p in front(result.family(name), result.axes)
    }
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "study",
                "trial",
                "kind",
                "label",
                "seeds",
                "on_front",
                *[f"{m}{s}" for m in metrics for s in ("", "_sd")],
            ]
        )
        for p in result.points:
            writer.writerow(
                [
                    p.study,
                    p.trial,
                    p.kind,
                    p.label,
                    p.n_seeds,
                    id(p) in fronts,
                    *[v for m in metrics for v in (p.mean(m), p.sd(m))],
                ]
            )
    return path


_BASELINE_MARKERS = "sD^vP<>Xh"


def plot(result: Comparison, path: Path, *, title: str = "") -> Path:
    """Attack metric across, accuracy up: PPTP trials and front, baselines with seed error bars,
    the undefended model, the baselines' front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc, attack = result.axes[0], result.axes[1]
    if not acc.maximize:  # draw the maximised objective upward, whichever order the study has
        acc, attack = attack, acc
    fig, ax = plt.subplots(figsize=(7.5, 5.5))

    def xy(points: Sequence[Point]) -> tuple[list[float], list[float]]:
        return [p.mean(attack.metric) for p in points], [p.mean(acc.metric) for p in points]

    try:
        pptp = [p for p in result.points if p.kind == "pptp"]
        ax.scatter(*xy(pptp), s=14, color="tab:blue", alpha=0.35, label="PPTP trials")
        combined = [p for p in result.points if p.kind == "combined"]
        if combined:
            ax.scatter(*xy(combined), s=14, color="tab:gray", alpha=0.35, label="PPTP + a defense")
        for name, color, label in (
            ("pptp", "tab:blue", f"PPTP front (HV {result.pptp.value:.4f})"),
            ("baseline", "tab:orange", f"baselines' front (HV {result.baselines.value:.4f})"),
        ):
            line = front(result.family(name), result.axes)
            xs, ys = xy(line)
            ax.step(xs, ys, where="post", color=color, linewidth=1.5, label=label)
        defenses = sorted({p.label.split()[0] for p in result.points if p.kind == "baseline"})
        for i, defense in enumerate(defenses):
            group = [
                p for p in result.points if p.kind == "baseline" and p.label.split()[0] == defense
            ]
            xs, ys = xy(group)
            ax.errorbar(
                xs,
                ys,
                xerr=[p.sd(attack.metric) for p in group],
                yerr=[p.sd(acc.metric) for p in group],
                fmt=_BASELINE_MARKERS[i % len(_BASELINE_MARKERS)],
                markersize=6,
                capsize=2,
                color=plt.get_cmap("tab10")(i + 2),
                label=defense,
            )
        undefended = [p for p in result.points if p.kind == "undefended"]
        if undefended:
            xs, ys = xy(undefended)
            ax.errorbar(
                xs,
                ys,
                xerr=[p.sd(attack.metric) for p in undefended],
                yerr=[p.sd(acc.metric) for p in undefended],
                fmt="*",
                markersize=13,
                color="black",
                capsize=2,
                label="undefended",
            )
        ax.set(
            xlabel=f"{attack.metric} ({'lower' if not attack.maximize else 'higher'} is better)",
            ylabel=acc.metric,
            title=title,
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
        fig.savefig(path, dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# The command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="search/compare.py",
        description="Draw PPTP's front against the classic defenses of finished studies, with "
        "hypervolumes and bootstrap intervals over training seeds.",
    )
    p.add_argument(
        "--run",
        action="append",
        required=True,
        help="a run directory of search/run.py (repeat for a second study)",
    )
    p.add_argument("--output", help="where to write the files (default: the first run directory)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument(
        "--metrics",
        default=",".join(TABLE_METRICS),
        help="table columns, comma-separated (those the trials recorded are shown)",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log the files to MLflow")
    return p.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Plan:
    args: argparse.Namespace
    runs: tuple[Path, ...]
    output: Path


def prepare(args: argparse.Namespace) -> Plan:
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap = {args.bootstrap} must be >= 1")
    runs = tuple(Path(r) for r in args.run)
    for run in runs:
        if not (run / "study.db").is_file():
            raise ConfigError(
                f"--run {run}: no study.db here; give a run directory of search/run.py"
            )
    output = Path(args.output) if args.output else runs[0]
    output.mkdir(parents=True, exist_ok=True)
    return Plan(args, runs, output)


def execute(plan: Plan) -> int:
    points, axes = load_points(plan.runs)
    result = compare(points, axes, n_bootstrap=plan.args.bootstrap, seed=plan.args.seed)
    metrics = [m for m in plan.args.metrics.split(",") if m]
    names = ", ".join(sorted({p.study for p in points}))
    files = [
        plot(result, plan.output / "comparison.png", title=f"PPTP against the baselines: {names}"),
        write_csv(result, plan.output / "comparison.csv", metrics),
    ]
    text = table_markdown(result, metrics)
    (plan.output / "comparison.md").write_text(text + "\n")
    files.append(plan.output / "comparison.md")
    print(text)
    print("\nwrote " + ", ".join(str(f) for f in files))
    if not plan.args.no_mlflow:
        log_to_mlflow(plan.runs, files)
    return 0


def log_to_mlflow(runs: Sequence[Path], files: Sequence[Path]) -> None:
    """Attach the files to each study's parent run; a tracking store that does not answer is a
    warning (the files are in the output folder either way)."""
    from search import rundir

    for run in runs:
        state = rundir.read_state(run)
        if not state.parent_run_id:
            continue
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(state.tracking_uri)
            for f in files:
                client.log_artifact(state.parent_run_id, str(f), artifact_path="comparison")
            print(f"logged to MLflow run {state.parent_run_id} (artifacts comparison/)")
        except Exception as error:  # the store may be gone; the files are on disk
            logger.warning(
                "could not log the comparison to MLflow (%s): %s", state.tracking_uri, error
            )


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv), prepare, execute)


if __name__ == "__main__":
    sys.exit(main())
