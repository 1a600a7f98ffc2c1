"""The report page: one HTML string, plotly.js inlined once before the first figure, sections in
the order ``search/report.py`` describes, the missing parts said at the top."""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pptp.fileio import atomic_write
from pptp.metric_catalogue import format_value
from search.reporting.figures import (
    front_figure,
    localization_figure,
    number_text,
    optuna_figures,
    roc_figure,
)
from search.reporting.inputs import ReportInputs

if TYPE_CHECKING:
    import plotly.graph_objects as go

FRONT_DIV = "front"  # the first plotly figure on the page


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
                cells.append(f'<td class="num">{number_text(value)}</td>')
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
    done = [t for t in inputs.trials if t.complete]
    failed = [t for t in inputs.trials if not t.complete and not t.pruned]
    stopped = [t for t in inputs.trials if t.pruned]
    front = [t for t in done if t.pareto]
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
        f"<p class='muted'>{len(inputs.trials)} finished trials ({len(failed)} failed"
        + (f", {len(stopped)} stopped early by the multi-fidelity scheduler" if stopped else "")
        + "), "
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
                [[t.number, t.name, t.fail_reason] for t in failed],
            )
        )
    if stopped:
        out.write(f"<h3>Stopped early ({len(stopped)}): values of their last rung</h3>")
        out.write(
            _table(
                ["trial", "run", "stopped", *metrics],
                [
                    [t.number, t.name, t.fail_reason, *(f"{t.value(m):.4f}" for m in metrics)]
                    for t in stopped
                ],
            )
        )

    out.write("<h2>ROC curves of the finalists</h2>")
    if inputs.roc:
        out.write(_figure_html(roc_figure(inputs), "roc", first=False))
    else:
        out.write("<p class='note'>No ROC arrays were read (see above).</p>")

    out.write("<h2>Who leaks</h2>")
    out.write(_who_leaks(inputs))

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
    table_rows = []
    for t in inputs.trials:
        cells: list[Any] = [t.number, t.name, t.kind]
        for metric in metrics:
            text = format_value(metric, t.value(metric))
            if t.n_seeds > 1 and t.complete:
                text += f" ± {format_value(metric, t.sd(metric), spread=True)}"
            cells.append(text)
        cells += ["yes" if t.pareto else "", t.n_seeds, t.state, t.run_id or "-"]
        table_rows.append(cells)
    out.write(
        _table(
            ["trial", "run", "kind", *metrics, "Pareto", "seeds", "state", "MLflow run"], table_rows
        )
    )
    out.write("</body></html>\n")
    return out.getvalue()


def _who_leaks(inputs: ReportInputs) -> str:
    """Per front or undefended trial: the most exposed members' thumbnails (most exposed first,
    row by row) and the TPR at 1% FPR of each class's members (pptp/exposure.py)."""
    if not inputs.exposed:
        return "<p class='note'>No who-leaks files were read (see above).</p>"
    parts = [
        "<p>The members the strongest attack is surest of (the population, not the canaries), "
        "and each class's TPR at the threshold that calls 1% of all non-members members: "
        "leakage is seldom spread evenly over classes.</p>"
    ]
    for exposed in inputs.exposed:
        parts.append(f"<h3>Trial {exposed.trial}: {html.escape(inputs.name(exposed.trial))}</h3>")
        if exposed.grid is not None:
            data = base64.b64encode(exposed.grid).decode("ascii")
            parts.append(
                f"<img alt='most exposed members of trial {exposed.trial}' "
                f"src='data:image/png;base64,{data}'>"
            )
        parts.append(
            _table(
                ["label", "members", "TPR@1%FPR"],
                [[label, n, tpr or "not resolved"] for label, n, tpr in exposed.class_tpr],
            )
        )
    return "".join(parts)


def write_report(inputs: ReportInputs, path: Path) -> Path:
    """Render the page to ``path`` atomically."""
    written = atomic_write(path, render(inputs))
    written.chmod(0o644)  # a page to share, like any file a browser saves
    return written
