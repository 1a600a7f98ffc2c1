"""``pptp-search report --run RUN``: one self-contained HTML page per study (``report.html``).

The page a person opens first after a study, in any browser, offline (plotly's JavaScript is
inlined; no request leaves the file). Built with plotly (and Optuna's plotly-based
visualizations); this module writes no JavaScript of its own. In order:

1. **The front**: every finished trial on the study's first two objectives (the maximised one
   upward, the other across), by kind (:func:`search.comparing.points.classify`: PPTP, PPTP
   with a defense, each baseline defense with its seed spread as error bars, the undefended
   model), the study's Pareto front (Optuna's ``best_trials``, the trials tagged ``pareto=true``
   in MLflow) highlighted, and the picked trial when ``search/pick.py`` exported one. Hovering a
   point names its trial run, groups, operator, strength, defense and seeds. Failed trials are
   listed below the chart with their reasons.
2. **ROC curves of the finalists** (the front's trials), log-log, from each trial's ``roc.npz``
   artifact in MLflow, with the undefended trials' curves for reference.
3. **Layer risk** when a localisation steered the study: privacy risk against generalization per
   layer group (the ``localization.json`` the study recorded).
4. **The picked config**, when ``<run>/picked.yaml`` exists.
5. **Searched parameters against each objective** (Optuna's ``plot_slice``).
6. **Every trial** as a table.

The page says which parts are missing and why (an MLflow store that does not answer: no ROC
curves; a localisation file that moved: no layer-risk chart). :func:`search.publish.publish_study`
writes it into the run directory and onto the study's parent MLflow run.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import io
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # `python search/report.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

from pptp.errors import ConfigError
from search.cli import quiet_environment, run_command
from search.comparing.points import Point, classify, points_from_trials

quiet_environment()

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from pptp.localize import LocalizationResult
    from search.picking.study_run import StudyRun
    from search.space import Objective

REPORT_FILE = "report.html"
PICKED_FILE = "picked.yaml"
FRONT_DIV = "front"  # the first plotly figure on the page

_KIND_STYLE = {  # kind -> (legend name, colour, marker symbol)
    "pptp": ("PPTP trials", "#1f77b4", "circle"),
    "combined": ("PPTP + a defense", "#7f7f7f", "circle-open"),
    "undefended": ("undefended", "#000000", "star"),
}
_BASELINE_SYMBOLS = ("square", "diamond", "triangle-up", "triangle-down", "cross", "x", "pentagon")


@dataclass(frozen=True)
class RocCurve:
    """One attack's ROC on one trial: ``fpr``, ``tpr`` as in ``roc.npz`` (increasing FPR)."""

    trial: int
    attack: str
    fpr: np.ndarray
    tpr: np.ndarray


@dataclass(frozen=True)
class ReportInputs:
    """Everything the page shows, gathered once (:func:`gather`).

    ``rows``: :func:`search.pareto.trial_rows` (finished trials, ``pareto`` marking the front);
    ``names``: trial number -> run name (:mod:`search.naming`); ``missing``: the parts that could
    not be drawn, each with its reason.
    """

    study_name: str
    run_dir: Path
    objectives: tuple[Objective, ...]
    rows: tuple[dict[str, Any], ...]
    points: tuple[Point, ...]
    names: Mapping[int, str]
    tracking_uri: str
    parent_run_id: str | None
    roc: tuple[RocCurve, ...] = ()
    localization: LocalizationResult | None = None
    localization_path: Path | None = None
    picked: str | None = None
    picked_trial: int | None = None
    missing: tuple[str, ...] = ()
    study: Any = field(default=None, compare=False, repr=False)  # optuna.Study for plot_slice


# ---------------------------------------------------------------------------------------------
# gathering


def trial_names(run: StudyRun, rows: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Trial number -> its run name (:func:`search.naming.row_run_name`)."""
    from search.naming import row_run_name, trial_digits

    consecutive = run.space.base_config().protect.split is not None or "protect.split" in (
        run.space.params
    )
    digits = trial_digits(max((int(r["trial"]) for r in rows), default=0) + 1)
    return {int(r["trial"]): row_run_name(r, consecutive=consecutive, digits=digits) for r in rows}


def localization_file(run: StudyRun) -> Path | None:
    """The ``localization.json`` that steered the study (its path as the study recorded it,
    relative to the directory the search ran in), or None when none did."""
    recorded = run.study.user_attrs.get("localization")
    if not recorded:
        return None
    path = Path(str(recorded))
    if not path.is_absolute():
        path = Path(run.state.cwd or ".") / path
    return path


def read_picked(run_dir: Path) -> tuple[str | None, int | None]:
    """The text of ``<run>/picked.yaml`` and the trial it exported (its study name ends with
    ``-trial<N>``, :func:`search.picking.export.picked_space`)."""
    import yaml

    path = run_dir / PICKED_FILE
    if not path.is_file():
        return None, None
    text = path.read_text()
    trial = None
    try:
        name = str((yaml.safe_load(text) or {}).get("study", {}).get("name", ""))
        head, _, number = name.rpartition("-trial")
        trial = int(number) if head and number.isdigit() else None
    except (yaml.YAMLError, AttributeError):
        pass
    return text, trial


def fetch_roc(client: Any, rows: Sequence[Mapping[str, Any]]) -> tuple[list[RocCurve], list[str]]:
    """The ``roc.npz`` curves of the front's trials and of the undefended trials.

    Returns the curves and a note per trial whose file could not be read. ``roc.npz`` holds
    ``attacks`` (names) and ``fpr/<attack>``, ``tpr/<attack>`` float arrays; it is loaded with
    ``allow_pickle=False``.
    """
    wanted = [
        r
        for r in rows
        if r.get("run_id")
        and r.get("state") != "FAIL"
        and (r.get("pareto") or _kind(r) == "undefended")
    ]
    curves: list[RocCurve] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pptp-report-") as tmp, _no_progress_bars():
        for row in wanted:
            number = int(row["trial"])
            try:
                local = client.download_artifacts(str(row["run_id"]), "roc.npz", tmp)
                with np.load(local, allow_pickle=False) as data:
                    for attack in [str(a) for a in data["attacks"]]:
                        curves.append(
                            RocCurve(
                                number,
                                attack,
                                np.asarray(data[f"fpr/{attack}"], dtype=float),
                                np.asarray(data[f"tpr/{attack}"], dtype=float),
                            )
                        )
            except Exception as error:  # a missing artifact or an unreadable file: say so
                problems.append(f"trial {number}: roc.npz not readable ({_first_line(error)})")
    return curves, problems


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar per downloaded artifact unless told not to."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _kind(row: Mapping[str, Any]) -> str:
    params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}
    return classify(dict(row), params)[0]


def gather(run: StudyRun, *, client: Any | None, unreachable: str | None = None) -> ReportInputs:
    """Read what the page shows from the run directory and, when ``client`` (an
    :class:`mlflow.MlflowClient`) is given, the ROC arrays from MLflow. ``unreachable``: why
    there is no client (shown on the page)."""
    from optuna.trial import TrialState

    from pptp.localize import LocalizationResult
    from search.pareto import trial_rows

    objectives = tuple(run.objectives)
    rows = tuple(trial_rows(run.study, objectives))
    complete = run.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    points = tuple(
        points_from_trials(complete, [o.metric for o in objectives], run.state.study_name)
    )
    missing: list[str] = []
    roc: list[RocCurve] = []
    if client is None:
        missing.append(
            f"ROC curves of the finalists: the MLflow store {run.state.tracking_uri} "
            f"{unreachable or 'was not asked'}"
        )
    else:
        roc, problems = fetch_roc(client, rows)
        missing += [f"ROC curve of {p}" for p in problems]
    loc_path = localization_file(run)
    localization = None
    if loc_path is not None:
        try:
            localization = LocalizationResult.load(loc_path)
        except ConfigError as error:
            missing.append(f"layer-risk chart: {error}")
    picked, picked_trial = read_picked(run.run_dir)
    return ReportInputs(
        study_name=run.state.study_name,
        run_dir=run.run_dir,
        objectives=objectives,
        rows=rows,
        points=points,
        names=trial_names(run, rows),
        tracking_uri=run.state.tracking_uri,
        parent_run_id=run.state.parent_run_id,
        roc=tuple(roc),
        localization=localization,
        localization_path=loc_path,
        picked=picked,
        picked_trial=picked_trial,
        missing=tuple(missing),
        study=run.study,
    )


# ---------------------------------------------------------------------------------------------
# figures


def axes(objectives: Sequence[Objective]) -> tuple[Objective, Objective | None]:
    """``(upward, across)``: the first maximised objective is drawn upward (accuracy), the first
    other one across (the attack metric); a single objective is drawn against trial numbers."""
    up = next((o for o in objectives if o.direction == "maximize"), objectives[0])
    across = next((o for o in objectives if o is not up), None)
    return up, across


def _hover(row: Mapping[str, Any], point: Point | None, name: str, metrics: Sequence[str]) -> str:
    groups = str(row.get("protected_groups") or "-")
    lines = [
        f"<b>{html.escape(name)}</b>",
        f"groups: {html.escape(groups)}",
        f"operator: {html.escape(str(row.get('operator', '-')))}, "
        f"strength {_num(row.get('strength'))}",
        f"defense: {html.escape(str(row.get('defense', '-')))}",
    ]
    n_seeds = point.n_seeds if point is not None else 1
    for metric in metrics:
        if point is not None and n_seeds > 1:
            lines.append(f"{metric}: {point.mean(metric):.4f} ± {point.sd(metric):.4f}")
        else:
            lines.append(f"{metric}: {_num(row.get(metric))}")
    lines.append(f"seeds: {n_seeds}" + (" (no spread)" if n_seeds == 1 else ""))
    if row.get("pareto"):
        lines.append("on the Pareto front")
    return "<br>".join(lines)


def _num(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{number:.4g}" if math.isfinite(number) else "-"


def front_figure(inputs: ReportInputs) -> go.Figure:
    """Every finished trial by kind, the study's front and the picked trial (module doc, 1)."""
    import plotly.graph_objects as go

    up, across = axes(inputs.objectives)
    metrics = [o.metric for o in inputs.objectives]
    by_trial = {p.trial: p for p in inputs.points}
    done = [r for r in inputs.rows if r.get("state") != "FAIL"]

    def xy(rows: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
        xs = [_float(r.get(across.metric)) if across else float(r["trial"]) for r in rows]
        return xs, [_float(r.get(up.metric)) for r in rows]

    def errors(rows: Sequence[Mapping[str, Any]], metric: str | None) -> list[float]:
        out = []
        for r in rows:
            point = by_trial.get(int(r["trial"]))
            out.append(point.sd(metric) if point is not None and metric else 0.0)
        return out

    fig = go.Figure()
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in done:
        kind = _kind(row)
        key = f"baseline:{row.get('defense', '-')}" if kind == "baseline" else kind
        groups.setdefault(key, []).append(row)
    order = ["pptp", "combined", *sorted(k for k in groups if k.startswith("baseline:"))]
    order.append("undefended")
    for i, key in enumerate(k for k in order if k in groups):
        rows = groups[key]
        if key.startswith("baseline:"):
            defense = key.split(":", 1)[1]
            name, colour = f"baseline {defense}", _baseline_colour(i)
            symbol = _BASELINE_SYMBOLS[i % len(_BASELINE_SYMBOLS)]
        else:
            name, colour, symbol = _KIND_STYLE[key]
        xs, ys = xy(rows)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name=f"{name} ({len(rows)})",
                marker={
                    "color": colour,
                    "symbol": symbol,
                    "size": 14 if key == "undefended" else 9,
                    "opacity": 0.85,
                },
                error_x={
                    "type": "data",
                    "array": errors(rows, across.metric if across else None),
                    "visible": key != "pptp",
                    "color": colour,
                },
                error_y={
                    "type": "data",
                    "array": errors(rows, up.metric),
                    "visible": key != "pptp",
                    "color": colour,
                },
                customdata=[inputs.names.get(int(r["trial"]), "") for r in rows],
                hovertext=[
                    _hover(
                        r,
                        by_trial.get(int(r["trial"])),
                        inputs.names.get(int(r["trial"]), f"trial {r['trial']}"),
                        metrics,
                    )
                    for r in rows
                ],
                hoverinfo="text",
            )
        )
    front = sorted((r for r in done if r.get("pareto")), key=lambda r: xy([r])[0][0])
    xs, ys = xy(front)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines+markers",
            name=f"Pareto front ({len(front)})",
            line={"color": "#d62728", "width": 2, "shape": "hv" if across else "linear"},
            marker={"color": "rgba(0,0,0,0)", "size": 16, "line": {"color": "#d62728", "width": 2}},
            customdata=[inputs.names.get(int(r["trial"]), "") for r in front],
            hovertext=[
                _hover(
                    r,
                    by_trial.get(int(r["trial"])),
                    inputs.names.get(int(r["trial"]), f"trial {r['trial']}"),
                    metrics,
                )
                for r in front
            ],
            hoverinfo="text",
        )
    )
    picked = [
        r
        for r in done
        if inputs.picked_trial is not None and int(r["trial"]) == inputs.picked_trial
    ]
    if picked:
        xs, ys = xy(picked)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers+text",
                name="picked for production",
                text=[inputs.names.get(inputs.picked_trial or 0, "")],
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


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _baseline_colour(i: int) -> str:
    palette = ("#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
    return palette[i % len(palette)]


def roc_figure(inputs: ReportInputs) -> go.Figure:
    """Log-log ROC of every attack on the finalists (solid) and undefended trials (dotted)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    front = {int(r["trial"]) for r in inputs.rows if r.get("pareto")}
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    attacks = sorted({c.attack for c in inputs.roc})
    trials = sorted({c.trial for c in inputs.roc})
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
    floor = 1.0
    for curve in inputs.roc:
        keep = (curve.fpr > 0) & (curve.tpr > 0)
        if keep.any():
            floor = min(floor, float(curve.fpr[keep].min()))
        name = inputs.names.get(curve.trial, f"trial {curve.trial}")
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
    import plotly.graph_objects as go

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


def optuna_figures(inputs: ReportInputs) -> tuple[list[tuple[str, go.Figure]], list[str]]:
    """Optuna's ``plot_slice`` of every searched parameter against each objective; a figure
    Optuna cannot draw (no completed trial, nothing searched) becomes a note instead."""
    import optuna

    figures: list[tuple[str, go.Figure]] = []
    notes: list[str] = []
    if inputs.study is None:
        return figures, notes
    for i, objective in enumerate(inputs.objectives):
        try:
            fig = optuna.visualization.plot_slice(
                inputs.study,
                target=lambda t, i=i: t.values[i],  # type: ignore[misc]
                target_name=objective.metric,
            )
        except Exception as error:  # Optuna refuses some studies (e.g. no params): say so
            notes.append(f"{objective.metric}: Optuna drew no slice plot ({_first_line(error)})")
            continue
        fig.update_layout(height=380, title=f"Searched parameters against {objective.metric}")
        figures.append((objective.metric, fig))
    return figures, notes


# ---------------------------------------------------------------------------------------------
# the page

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #8a4b00; } .muted { color: #666; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append(f'<td class="num">{_num(value)}</td>')
            else:
                cells.append(f"<td>{html.escape(str(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure_html(fig: go.Figure, div_id: str, *, first: bool) -> str:
    return str(
        fig.to_html(
            full_html=False,
            include_plotlyjs=bool(first),
            div_id=div_id,
            config={"displaylogo": False, "responsive": True},
        )
    )


def render(inputs: ReportInputs, *, generated: str | None = None) -> str:
    """The whole page as one HTML string (plotly.js inlined once, before the first figure)."""
    metrics = [o.metric for o in inputs.objectives]
    done = [r for r in inputs.rows if r.get("state") != "FAIL"]
    failed = [r for r in inputs.rows if r.get("state") == "FAIL"]
    front = [r for r in done if r.get("pareto")]
    when = generated or time.strftime("%Y-%m-%d %H:%M:%S")
    out = io.StringIO()
    out.write(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(inputs.study_name)}: PPTP study report</title>"
        f"<style>{_CSS}</style></head><body>"
    )
    out.write(f"<h1>Study {html.escape(inputs.study_name)}</h1>")
    objectives = ", ".join(f"{o.metric} ({o.direction})" for o in inputs.objectives)
    out.write(
        f"<p class='muted'>{len(inputs.rows)} finished trials ({len(failed)} failed), "
        f"{len(front)} on the Pareto front; objectives {html.escape(objectives)}.<br>"
        f"Run directory {html.escape(str(inputs.run_dir))}; MLflow store "
        f"{html.escape(inputs.tracking_uri)}"
        + (f", study run {html.escape(inputs.parent_run_id)}" if inputs.parent_run_id else "")
        + f". Generated {html.escape(when)} by <code>pptp-search report</code>.</p>"
    )
    if inputs.missing:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in inputs.missing)
        out.write(f"<p class='note'>Not in this report:</p><ul class='note'>{items}</ul>")

    out.write("<h2>The front</h2>")
    out.write(
        "<p>Each point is a finished trial; the red line joins the study's Pareto front "
        "(no other trial is better on every objective; with more than two objectives a front "
        "point may look dominated here). Hover a point for what it tried.</p>"
    )
    out.write(_figure_html(front_figure(inputs), FRONT_DIV, first=True))
    if failed:
        out.write(f"<h3>Failed trials ({len(failed)})</h3>")
        out.write(
            _table(
                ["trial", "run", "reason"],
                [
                    [
                        r["trial"],
                        inputs.names.get(int(r["trial"]), ""),
                        r.get("fail_reason") or "no reason recorded",
                    ]
                    for r in failed
                ],
            )
        )

    out.write("<h2>ROC curves of the finalists</h2>")
    if inputs.roc:
        out.write(_figure_html(roc_figure(inputs), "roc", first=False))
    else:
        out.write("<p class='note'>No ROC arrays were read (see above).</p>")

    out.write("<h2>Layer risk</h2>")
    if inputs.localization is not None:
        out.write(
            f"<p>The localisation that steered this study "
            f"({html.escape(str(inputs.localization_path))}): groups up and to the left "
            "carry membership information and little accuracy.</p>"
        )
        out.write(_figure_html(localization_figure(inputs.localization), "layer-risk", first=False))
    elif inputs.localization_path is None:
        out.write("<p class='muted'>No localisation steered this study.</p>")
    else:
        out.write("<p class='note'>The localisation could not be read (see above).</p>")

    out.write("<h2>Picked config</h2>")
    if inputs.picked is not None:
        out.write(f"<pre>{html.escape(inputs.picked)}</pre>")
    else:
        out.write(
            "<p class='muted'>None yet: <code>pptp-search pick --run "
            f"{html.escape(str(inputs.run_dir))} --rule knee</code> exports one.</p>"
        )

    out.write("<h2>Searched parameters</h2>")
    figures, notes = optuna_figures(inputs)
    for metric, fig in figures:
        out.write(_figure_html(fig, f"slice-{metric}", first=False))
    for note in notes:
        out.write(f"<p class='note'>{html.escape(note)}</p>")

    out.write("<h2>Every trial</h2>")
    by_trial = {p.trial: p for p in inputs.points}
    table_rows = []
    for r in inputs.rows:
        point = by_trial.get(int(r["trial"]))
        cells: list[Any] = [r["trial"], inputs.names.get(int(r["trial"]), ""), _kind(r)]
        for metric in metrics:
            if point is not None and point.n_seeds > 1:
                cells.append(f"{point.mean(metric):.4f} ± {point.sd(metric):.4f}")
            else:
                cells.append(_float(r.get(metric)))
        cells += [
            "yes" if r.get("pareto") else "",
            point.n_seeds if point is not None else "-",
            r.get("state", ""),
            r.get("run_id") or "-",
        ]
        table_rows.append(cells)
    out.write(
        _table(
            ["trial", "run", "kind", *metrics, "Pareto", "seeds", "state", "MLflow run"], table_rows
        )
    )
    out.write("</body></html>\n")
    return out.getvalue()


def write_report(inputs: ReportInputs, path: Path) -> Path:
    """Render the page to ``path`` atomically."""
    from pptp.fileio import atomic_write

    written = atomic_write(path, render(inputs))
    written.chmod(0o644)  # a page to share, like any file a browser saves
    return written


# ---------------------------------------------------------------------------------------------
# the command

DESCRIPTION = """\
Write (or rewrite) report.html for a finished study: the interactive front with the
baselines and the undefended model, ROC curves of the Pareto trials, the layer-risk chart
of the localisation that steered the study, the picked config and every trial. The file
works offline. When the study's MLflow store answers, it also names the trial runs by what
they tried, writes their descriptions, saves the runs-table views and attaches the page
to the study's run; when it does not, the page says which parts are missing."""


def build_parser(prog: str = "pptp-search report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    p.add_argument("--run", required=True, help="a run directory of a study (search/run.py)")
    p.add_argument("--output", help=f"where to write the page (default <run>/{REPORT_FILE})")
    p.add_argument(
        "--no-mlflow",
        action="store_true",
        help="do not read from or write to MLflow (no ROC curves, runs left as they are)",
    )
    p.add_argument("--tracking-uri", help="the MLflow store (default: the study's)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def prepare(args: argparse.Namespace) -> Any:
    from search.picking.study_run import open_run

    run = open_run(args.run)
    return args, run


def execute(plan: Any) -> int:
    from search.publish import publish_study

    args, run = plan
    published = publish_study(
        run,
        output=Path(args.output) if args.output else None,
        mlflow=not args.no_mlflow,
        tracking_uri=args.tracking_uri,
    )
    print(published.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv), prepare, execute)


if __name__ == "__main__":
    sys.exit(main())
