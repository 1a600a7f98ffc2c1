"""The report's plotly figures, each a pure function of what :func:`search.reporting.inputs.gather`
read: the front by kind, the finalists' ROC curves, the layer risk, Optuna's slice plots."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna
import plotly.graph_objects as go

from pptp.metric_catalogue import format_value
from search.reporting.inputs import ReportInputs, first_line
from search.study.trials import FinishedTrial

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from pptp.localize import LocalizationResult
    from search.space import Objective


_KIND_STYLE = {  # kind -> (legend name, colour, marker symbol)
    "pptp": ("PPTP trials", "#1f77b4", "circle"),
    "combined": ("PPTP + a defense", "#7f7f7f", "circle-open"),
    "undefended": ("undefended", "#000000", "star"),
}


_BASELINE_SYMBOLS = ("square", "diamond", "triangle-up", "triangle-down", "cross", "x", "pentagon")


def axes(objectives: Sequence[Objective]) -> tuple[Objective, Objective | None]:
    """``(upward, across)``: the first maximised objective is drawn upward (accuracy), the first
    other one across (the attack metric); a single objective is drawn against trial numbers."""
    up = next((o for o in objectives if o.direction == "maximize"), objectives[0])
    across = next((o for o in objectives if o is not up), None)
    return up, across


def _hover(trial: FinishedTrial, metrics: Sequence[str]) -> str:
    t = trial.treatment
    lines = [
        f"<b>{html.escape(trial.name)}</b>",
        f"groups: {html.escape(', '.join(t.groups) or '-')}",
        f"operator: {html.escape(t.operator)}"
        + (f", strength {number_text(t.strength)}" if t.protected else ""),
        f"defense: {html.escape(t.defense_label() if t.defense != 'none' else 'none')}",
    ]
    n_seeds = trial.n_seeds
    for metric in metrics:
        text = format_value(metric, trial.value(metric))
        if n_seeds > 1:
            text += f" ± {format_value(metric, trial.sd(metric), spread=True)}"
        lines.append(f"{metric}: {text}")
    lines.append(f"seeds: {n_seeds}" + (" (no spread)" if n_seeds == 1 else ""))
    if trial.pareto:
        lines.append("on the Pareto front")
    return "<br>".join(lines)


def number_text(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{number:.4g}" if math.isfinite(number) else "-"


def front_figure(inputs: ReportInputs) -> go.Figure:
    """Every finished trial by kind, the study's front and the picked trial (module doc, 1)."""
    up, across = axes(inputs.objectives)
    metrics = [o.metric for o in inputs.objectives]
    done = [t for t in inputs.trials if t.complete]

    def xy(trials: Sequence[FinishedTrial]) -> tuple[list[float], list[float]]:
        xs = [t.value(across.metric) if across else float(t.number) for t in trials]
        return xs, [t.value(up.metric) for t in trials]

    def error_bars(
        trials: Sequence[FinishedTrial], metric: str | None, *, visible: bool, colour: str
    ) -> dict[str, Any]:
        """Plotly error bars: each trial's seed standard deviation of ``metric`` (0 without)."""
        sds = [t.sd(metric) if metric else 0.0 for t in trials]
        return {"type": "data", "array": sds, "visible": visible, "color": colour}

    def trace(trials: Sequence[FinishedTrial], **style: Any) -> go.Scatter:
        """A trace of ``trials``, each named by its run and described on hover."""
        xs, ys = xy(trials)
        return go.Scatter(
            x=xs,
            y=ys,
            customdata=[t.name for t in trials],
            hovertext=[_hover(t, metrics) for t in trials],
            hoverinfo="text",
            **style,
        )

    fig = go.Figure()
    groups: dict[str, list[FinishedTrial]] = {}
    for t in done:
        key = f"baseline:{t.treatment.defense}" if t.kind == "baseline" else t.kind
        groups.setdefault(key, []).append(t)
    order = ["pptp", "combined", *sorted(k for k in groups if k.startswith("baseline:"))]
    order.append("undefended")
    for i, key in enumerate(k for k in order if k in groups):
        members = groups[key]
        if key.startswith("baseline:"):
            defense = key.split(":", 1)[1]
            name, colour = f"baseline {defense}", _baseline_colour(i)
            symbol = _BASELINE_SYMBOLS[i % len(_BASELINE_SYMBOLS)]
        else:
            name, colour, symbol = _KIND_STYLE[key]
        fig.add_trace(
            trace(
                members,
                mode="markers",
                name=f"{name} ({len(members)})",
                marker={
                    "color": colour,
                    "symbol": symbol,
                    "size": 14 if key == "undefended" else 9,
                    "opacity": 0.85,
                },
                error_x=error_bars(
                    members,
                    across.metric if across else None,
                    visible=key != "pptp",
                    colour=colour,
                ),
                error_y=error_bars(members, up.metric, visible=key != "pptp", colour=colour),
            )
        )
    front = sorted((t for t in done if t.pareto), key=lambda t: xy([t])[0][0])
    fig.add_trace(
        trace(
            front,
            mode="lines+markers",
            name=f"Pareto front ({len(front)})",
            line={"color": "#d62728", "width": 2, "shape": "hv" if across else "linear"},
            marker={"color": "rgba(0,0,0,0)", "size": 16, "line": {"color": "#d62728", "width": 2}},
        )
    )
    picked = [t for t in done if t.number == inputs.picked_trial]
    if picked:
        xs, ys = xy(picked)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers+text",
                name="picked for production",
                text=[picked[0].name],
                textposition="top center",
                marker={
                    "symbol": "star-open",
                    "size": 22,
                    "color": "#2ca02c",
                    "line": {"width": 2},
                },
                hoverinfo="skip",
            )
        )
    across_title = (
        f"{across.metric} ({'lower' if across.direction == 'minimize' else 'higher'} is better)"
        if across
        else "trial"
    )
    fig.update_layout(
        title=f"{inputs.study_name}: {up.metric} against {across.metric if across else 'trial'}",
        xaxis_title=across_title,
        yaxis_title=f"{up.metric} (higher is better)",
        hoverlabel={"align": "left"},
        legend={"orientation": "v"},
        height=560,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        template="plotly_white",
    )
    return fig


def _baseline_colour(i: int) -> str:
    palette = ("#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
    return palette[i % len(palette)]


def roc_figure(inputs: ReportInputs) -> go.Figure:
    """Log-log ROC of every attack on the finalists (solid) and undefended trials (dotted)."""
    fig = go.Figure()
    front = {t.number for t in inputs.trials if t.pareto}
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    attacks = sorted({c.attack for c in inputs.roc})
    trials = sorted({c.trial for c in inputs.roc})
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
    floor = 1.0
    for curve in inputs.roc:
        keep = (curve.fpr > 0) & (curve.tpr > 0)
        if keep.any():
            floor = min(floor, float(curve.fpr[keep].min()))
        name = inputs.name(curve.trial)
        on_front = curve.trial in front
        fig.add_trace(
            go.Scatter(
                x=curve.fpr[keep].tolist(),
                y=curve.tpr[keep].tolist(),
                mode="lines",
                name=f"{name} · {curve.attack}" + ("" if on_front else " (reference)"),
                legendgroup=str(curve.trial),
                line={
                    "dash": dashes[attacks.index(curve.attack) % len(dashes)],
                    "width": 2 if on_front else 1,
                    "color": "#555555"
                    if not on_front
                    else palette[trials.index(curve.trial) % len(palette)],
                },
                opacity=1.0 if on_front else 0.6,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[floor, 1.0],
            y=[floor, 1.0],
            mode="lines",
            name="chance",
            line={"color": "#999999", "dash": "dot"},
        )
    )
    fig.update_layout(
        title="ROC of each attack on the Pareto trials (log-log; the low-FPR corner matters)",
        xaxis={"type": "log", "title": "false positive rate"},
        yaxis={"type": "log", "title": "true positive rate"},
        height=520,
        template="plotly_white",
    )
    return fig


def localization_figure(result: LocalizationResult) -> go.Figure:
    """Privacy risk against generalization per layer group, with the seed spread as error bars
    (the chart of ``search/localize.py``)."""
    groups = result.groups
    fig = go.Figure(
        go.Scatter(
            x=[100 * g.generalization_mean for g in groups],
            y=[g.privacy_risk_mean for g in groups],
            error_x={"type": "data", "array": [100 * g.generalization_std for g in groups]},
            error_y={"type": "data", "array": [g.privacy_risk_std for g in groups]},
            mode="markers+text",
            text=[g.group for g in groups],
            textposition="top center",
            marker={"size": 11, "color": "#9467bd"},
            hovertext=[
                f"<b>{html.escape(g.group)}</b> (risk rank {result.rank(g.group)})<br>"
                f"privacy risk {g.privacy_risk_mean:+.4f} ± {g.privacy_risk_std:.4f}<br>"
                f"generalization {100 * g.generalization_mean:.1f} ± "
                f"{100 * g.generalization_std:.1f} points<br>"
                f"risk at output {g.risk_at_output_mean:+.4f}"
                for g in groups
            ],
            hoverinfo="text",
            name="layer groups",
        )
    )
    fig.add_hline(y=0.0, line={"color": "#999999", "dash": "dot"})
    fig.update_layout(
        title=f"Layer risk: {result.model} on {result.dataset}, seeds "
        f"{', '.join(map(str, result.seeds))}",
        xaxis_title="generalization: test-accuracy drop when the group is reset (points)",
        yaxis_title="privacy risk (log-ratio; 0 = nothing member-specific)",
        height=480,
        template="plotly_white",
    )
    return fig


#: which trials each parameter plot draws, and the searched keys it draws: a PPTP key is drawn
#: over the trials whose operator acted, a defense key over those with a defense, so the
#: undefended trial never shows up as "damp at strength 0"
_SLICES = (
    ("PPTP trials", ("pptp", "combined"), "protect."),
    ("baseline trials", ("baseline", "combined"), "defense."),
    ("all trials", ("undefended", "pptp", "baseline", "combined"), ""),
)


def optuna_figures(inputs: ReportInputs) -> tuple[list[tuple[str, go.Figure]], list[str]]:
    """Optuna's ``plot_slice`` of the searched parameters against each objective, per family
    (:data:`_SLICES`: protection keys over the PPTP trials, defense keys over the baselines, the
    rest over every trial); a figure Optuna cannot draw becomes a note instead."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory" lines
    figures: list[tuple[str, go.Figure]] = []
    notes: list[str] = []
    if inputs.study is None:
        return figures, notes
    kinds = {t.number: t.kind for t in inputs.trials}
    searched = sorted({k for t in inputs.trials for k in t.params})
    taken: set[str] = set()
    for family, members, prefix in _SLICES:
        params = [k for k in searched if k.startswith(prefix) and k not in taken]
        taken.update(params)
        trials = [
            t
            for t in inputs.study.get_trials(deepcopy=False)
            if kinds.get(t.number) in members and t.values is not None
        ]
        if not params or not trials:
            continue
        subset = optuna.create_study(directions=inputs.study.directions)
        subset.add_trials(trials)
        for i, objective in enumerate(inputs.objectives):
            try:
                fig = optuna.visualization.plot_slice(
                    subset,
                    params=params,
                    target=lambda t, i=i: t.values[i],  # type: ignore[misc]
                    target_name=objective.metric,
                )
            except Exception as error:  # Optuna refuses some studies: say so
                notes.append(
                    f"{objective.metric} ({family}): Optuna drew no slice plot "
                    f"({first_line(error)})"
                )
                continue
            fig.update_layout(
                height=380,
                title=f"Searched parameters of the {family} ({len(trials)}) "
                f"against {objective.metric}",
            )
            figures.append((f"{family.split()[0]}-{objective.metric}", fig))
    return figures, notes
