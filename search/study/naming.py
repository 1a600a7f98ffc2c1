"""Names and descriptions that make a study's MLflow runs explain themselves.

A trial's name is :func:`pptp.treatment.run_name` of what it trained with (``t07 noise s=0.46
block3-head``, ``t02 baseline relaxloss strength=0.31``, ``t00 undefended``): the trial names
its run once, before it trains (:func:`planned_name`, with the groups its selection protects on
this model), and every table reads the same name back from the finished trial
(:attr:`search.study.trials.FinishedTrial.name`).

Descriptions go in the run's ``mlflow.note.content`` tag, which the MLflow UI renders as
Markdown on the run page and shows (first line, as plain text) in the runs table's
*Description* column: the first line therefore carries the objectives and their spread over
training seeds, with no Markdown in it.

Everything here is pure (values in, strings out); :mod:`search.reporting.publish` writes them to
MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pptp.config import TrialConfig
from pptp.errors import ConfigError
from pptp.metric_catalogue import catalogue, format_value, short
from pptp.treatment import Treatment, planned_groups, run_name, treatment_of, trial_digits
from search.space import Objective, Space
from search.study.trials import FinishedTrial

#: the tag the MLflow UI shows as a run's description (rendered as Markdown)
TAG_NOTE = "mlflow.note.content"


def planned_treatment(cfg: TrialConfig, space: Space) -> Treatment:
    """What a trial of ``space`` with config ``cfg`` trains with, its protected groups resolved
    on the model before training (:func:`pptp.treatment.planned_groups`; no groups when the
    model cannot be built without data, and the trial then names them once it has trained); a
    baseline shows the defense knobs the space searches."""
    try:
        groups = planned_groups(cfg)
    except ConfigError:
        groups = ()
    return treatment_of(cfg, groups, searched=tuple(space.params))


def planned_name(number: int, cfg: TrialConfig, space: Space) -> str:
    """The name of trial ``number`` of ``space`` (its run name, its progress lines), trial
    numbers as wide as the study needs."""
    digits = trial_digits(space.study.n_trials)
    return run_name(number, planned_treatment(cfg, space), digits=digits)


def objective_summary(trial: FinishedTrial, objectives: Sequence[str]) -> str:
    """``acc 0.987±0.004 · AUC 0.555±0.010 · 3 seeds``: one plain-text line.

    The MLflow runs table shows a description's first 50 characters, so the objectives take
    their catalogue's short names and 3 decimals (the metric columns have them all). The spread
    is the sample standard deviation over training seeds when the trial recorded its per-seed
    values; ``1 seed`` says there is none.
    """
    parts = []
    for metric in objectives:
        label, mean = short(metric), trial.value(metric)
        if not math.isfinite(mean):
            parts.append(f"{label} -")
        elif len(trial.seeds(metric)) > 1:
            parts.append(f"{label} {mean:.3f}±{trial.sd(metric):.3f}")
        else:
            parts.append(f"{label} {mean:.3f}")
    n_seeds = trial.n_seeds
    parts.append(f"{n_seeds} seeds" if n_seeds > 1 else "1 seed")
    return " · ".join(parts)


def trial_description(
    trial: FinishedTrial,
    objectives: Sequence[str],
    *,
    study_name: str,
    parent_link: str | None = None,
    known_front: bool = True,
) -> str:
    """The Markdown description of a trial's run (tag :data:`TAG_NOTE`).

    First line (the runs table's *Description* column): the objectives with their spread
    (:func:`objective_summary`), or ``FAILED: <reason>``. Then whether the trial is on the
    Pareto front (when ``known_front``), what it trained with, the other shown metrics, and a
    link back to the study's run (``parent_link``, a URL or a path relative to the MLflow UI
    such as ``#/experiments/1/runs/<id>``).
    """
    first = f"FAILED: {trial.fail_reason}" if not trial.complete else objective_summary(
        trial, objectives
    )
    lines = [first, ""]
    if trial.complete and known_front:
        lines += ["On the Pareto front." if trial.pareto else "Not on the Pareto front.", ""]
    lines.append(_what(trial.treatment))
    extras = [
        f"{m.title} {format_value(m.key, trial.value(m.key))}"
        for m in catalogue()
        if (m.shown or m.key == "epsilon")
        and m.key not in objectives
        and not m.per_attack
        and math.isfinite(trial.value(m.key))
    ]
    if extras and trial.complete:
        lines += ["", "Also: " + ", ".join(extras) + "."]
    study = f"Trial {trial.number} of study **{study_name}**"
    lines += ["", f"{study} ([study run]({parent_link}))." if parent_link else f"{study}."]
    return "\n".join(lines)


def _what(treatment: Treatment) -> str:
    if treatment.protected:
        groups = ", ".join(treatment.groups) or "-"
        what = f"**{treatment.operator}** at strength {treatment.strength:.4g} on {groups}"
    else:
        what = "No PPTP protection"
    if treatment.defense == "none":
        return what + "; no other defense."
    return what + f"; defense **{treatment.defense_label()}**."


def study_description(
    trials: Sequence[FinishedTrial],
    objectives: Sequence[Objective],
    *,
    study_name: str,
    links: Mapping[str, str],
) -> str:
    """The Markdown description of the study's parent run.

    ``links``: label -> URL or UI-relative path (``report``, ``trials``, ``pareto``,
    ``localization``); labels without a link are left out.
    """
    done = [t for t in trials if t.complete]
    failed = len(trials) - len(done)
    front = [t for t in done if t.pareto]
    first = f"{len(trials)} trials ({failed} failed), {len(front)} on the Pareto front"
    lines = [first, "", f"Study **{study_name}**:", ""]
    for objective in objectives:
        values = [(t, t.value(objective.metric)) for t in done]
        values = [(t, v) for t, v in values if math.isfinite(v)]
        if not values:
            continue
        best, value = max(values, key=lambda tv: objective.sign * tv[1])
        lines.append(
            f"- best {objective.metric} ({objective.direction}): "
            f"{format_value(objective.metric, value)}, `{best.name}`"
        )
    titles = {
        "trials": "every trial, objectives as columns",
        "pareto": "the Pareto front (filter `tags.pareto = 'true'`)",
        "report": "the report page (interactive front, ROC curves, layer risk)",
        "localization": "the localisation that steered this study",
    }
    for key, title in titles.items():
        if links.get(key):
            lines.append(f"- [{title}]({links[key]})")
    return "\n".join(lines)
