"""Names and descriptions that make a study's MLflow runs explain themselves.

A trial's run is named by what it tried, so the runs table reads without opening a run:

==========================================  ===============================================
``t00 undefended``                          no protection (strength 0 is plain training) and
                                            defense ``none``
``t02 baseline dpsgd``                      a classic defense and no protection (searched
                                            defense knobs follow: ``noise_multiplier=0.8``)
``t07 noise s=0.46 block3-head``            a PPTP operator at strength s on the protected
                                            groups (a range ``first-last`` when they are
                                            consecutive, else joined with ``+``)
``t07 noise s=0.46 block3-head + dpsgd``    both
==========================================  ===============================================

The kind (undefended, baseline, pptp, combined) is :func:`search.study.points.classify`'s, so
the names, the report page and ``search/compare.py`` sort trials the same way.

Descriptions go in the run's ``mlflow.note.content`` tag, which the MLflow UI renders as
Markdown on the run page and shows (first line, as plain text) in the runs table's
*Description* column: the first line therefore carries the objectives and their spread over
training seeds, with no Markdown in it.

Everything here is pure (strings in, strings out); :mod:`search.reporting.publish` writes them to
MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pptp.config import DEFENSE_KEYS
from search.study.points import PER_SEED, classify

#: the tag the MLflow UI shows as a run's description (rendered as Markdown)
TAG_NOTE = "mlflow.note.content"

#: config keys whose searched values a baseline's name shows, and how
_DEFENSE_PREFIX = "defense."


def trial_digits(n_trials: int) -> int:
    """How many digits trial numbers get in names: 2 (``t07``), more for studies of >= 100."""
    return max(2, len(str(max(n_trials, 1) - 1)))


def groups_label(groups: Sequence[str], *, consecutive: bool) -> str:
    """``block3-head`` for consecutive groups (a split selection), ``block1+head`` otherwise.

    ``groups`` in model order. One group is its name; none is ``-``. ``consecutive`` says the
    groups are a contiguous run of the model's groups (true for ``protect.split`` selections);
    only then is a range written.
    """
    names = [g for g in groups if g]
    if not names:
        return "-"
    if len(names) == 1:
        return names[0]
    if consecutive and len(names) > 2:
        return f"{names[0]}-{names[-1]}"
    return "+".join(names)


def _number(value: Any) -> str:
    """A short number for names: 0.4562 -> 0.46, 3.0 -> 3, 1e-05 -> 1e-05."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}" if 0.01 <= abs(value) < 1000 else f"{value:.2g}"


def trial_run_name(
    number: int,
    *,
    operator: str,
    strength: float,
    defense: str = "none",
    groups: Sequence[str] | str | None = None,
    consecutive: bool = False,
    selection: Mapping[str, Any] | None = None,
    defense_knobs: Mapping[str, Any] | None = None,
    digits: int = 2,
) -> str:
    """The run name of trial ``number`` (see the module docstring for the forms).

    ``groups``: the protected layer groups in model order (a list, or the comma-separated string
    that trials record); when they are not known yet (before the model is built), ``selection``
    (``protect.split``/``direction``/``groups``/``patterns`` without the prefix) describes them:
    ``last2``, ``first1``, ``block1+head`` or ``patterns``. ``defense_knobs``: searched
    ``defense.*`` values, shown after a baseline's name.
    """
    kind, _ = classify({"operator": operator, "strength": strength, "defense": defense}, params={})
    head = f"t{number:0{digits}d}" if number >= 0 else "t?"
    own = {"strength", *DEFENSE_KEYS.get(defense, ())}  # not another defense's searched key
    knobs = " ".join(
        f"{k.removeprefix(_DEFENSE_PREFIX)}={_number(v)}"
        for k, v in sorted((defense_knobs or {}).items())
        if k.removeprefix(_DEFENSE_PREFIX) in own
    )
    baseline = f"{defense} {knobs}".strip()
    if kind == "undefended":
        return f"{head} undefended"
    if kind == "baseline":
        return f"{head} baseline {baseline}"
    if isinstance(groups, str):
        groups = [g for g in groups.split(",") if g and g != "-"]
    where = (
        groups_label(groups, consecutive=consecutive)
        if groups
        else _selection_label(selection or {})
    )
    pptp = f"{head} {operator} s={_number(float(strength))} {where}"
    return pptp if kind == "pptp" else f"{pptp} + {baseline}"


def _selection_label(selection: Mapping[str, Any]) -> str:
    split = selection.get("split")
    if split is not None:
        side = "first" if selection.get("direction", "prefix") == "prefix" else "last"
        return f"{side}{int(split)}"
    if selection.get("groups"):
        groups = selection["groups"]
        return groups_label(
            [groups] if isinstance(groups, str) else list(groups), consecutive=False
        )
    if selection.get("patterns"):
        return "patterns"
    return "-"


def config_run_name(
    number: int,
    cfg: Any,
    *,
    protected_groups: Sequence[str] | None = None,
    searched: Sequence[str] = (),
    digits: int = 2,
) -> str:
    """:func:`trial_run_name` of a :class:`pptp.config.TrialConfig`.

    ``protected_groups`` (``TrialResult.protected_groups``) once the trial has built its model;
    before that the name describes the selection (``last2``). ``searched``: the space's searched
    keys, so a baseline's name shows its searched ``defense.*`` knobs.
    """
    protect = cfg.protect
    flat = cfg.to_flat()
    knobs = {
        k: flat[k]
        for k in searched
        if k.startswith(_DEFENSE_PREFIX) and k != "defense.name" and k in flat
    }
    return trial_run_name(
        number,
        operator=protect.operator,
        strength=protect.strength,
        defense=cfg.defense.name,
        groups=protected_groups,
        consecutive=protect.split is not None,
        selection={
            "split": protect.split,
            "direction": protect.direction,
            "groups": protect.groups,
            "patterns": protect.patterns,
        },
        defense_knobs=knobs,
        digits=digits,
    )


def space_run_name(
    number: int, cfg: Any, space: Any, *, protected_groups: Sequence[str] | None = None
) -> str:
    """:func:`config_run_name` of a trial of ``space`` (a :class:`search.space.Space`): its
    searched defense knobs shown, trial numbers as wide as the study needs. What a trial calls
    to name its run while it runs (before and after its model exists); the study's end
    (:mod:`search.reporting.publish`) gives the same name from what Optuna recorded."""
    return config_run_name(
        number,
        cfg,
        protected_groups=protected_groups,
        searched=tuple(space.params),
        digits=trial_digits(space.study.n_trials),
    )


def row_run_name(
    row: Mapping[str, Any], *, consecutive: bool | None = None, digits: int = 2
) -> str:
    """:func:`trial_run_name` of a row of :func:`search.study.pareto.trial_rows` (what Optuna
    recorded: ``operator``, ``strength``, ``defense``, ``protected_groups``, ``param.*``).

    ``consecutive``: whether the protected groups are a split selection; None infers it from a
    searched ``protect.split`` (pass it when the space fixes the split).
    """
    params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}
    operator = str(row.get("operator", params.get("protect.operator", "none")))
    strength = float(row.get("strength", params.get("protect.strength", 0.0)) or 0.0)
    defense = str(row.get("defense", params.get("defense.name", "none")))
    knobs = {
        k: v for k, v in params.items() if k.startswith(_DEFENSE_PREFIX) and k != "defense.name"
    }
    return trial_run_name(
        int(row.get("trial", -1)),
        operator=operator,
        strength=strength,
        defense=defense,
        groups=row.get("protected_groups"),
        consecutive="protect.split" in params if consecutive is None else consecutive,
        selection={
            k.removeprefix("protect."): v for k, v in params.items() if k.startswith("protect.")
        },
        defense_knobs=knobs,
        digits=digits,
    )


# ---------------------------------------------------------------------------------------------
# descriptions


def _value(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


#: short names of the usual objectives in the one-line summary (the table cuts it at 50 chars)
SHORT = {
    "test_acc": "acc",
    "attack_auc": "AUC",
    "attack_tpr@0.1%fpr": "TPR@0.1%",
    "attack_tpr@1%fpr": "TPR@1%",
}


def objective_summary(row: Mapping[str, Any], objectives: Sequence[str]) -> str:
    """``acc 0.987±0.004 · AUC 0.555±0.010 · 3 seeds``: one plain-text line.

    The MLflow runs table shows a description's first 50 characters, so the objectives take
    short names (:data:`SHORT`) and 3 decimals (the metric columns have them all). The spread is
    the sample standard deviation over training seeds when the trial recorded its per-seed values
    (user attribute ``per_seed``, :data:`search.study.points.PER_SEED`); ``1 seed`` says there
    is none.
    """
    per_seed = row.get(PER_SEED) or {}
    parts, n_seeds = [], 1
    for metric in objectives:
        label = SHORT.get(metric, metric)
        mean = _value(row.get(metric))
        seeds = (
            [_value(v) for v in per_seed.get(metric, ())] if isinstance(per_seed, Mapping) else []
        )
        if len(seeds) > 1:
            n_seeds = max(n_seeds, len(seeds))
            m = sum(seeds) / len(seeds)
            sd = math.sqrt(sum((v - m) ** 2 for v in seeds) / (len(seeds) - 1))
            parts.append(f"{label} {mean:.3f}±{sd:.3f}")
        else:
            parts.append(f"{label} {mean:.3f}" if math.isfinite(mean) else f"{label} -")
    parts.append(f"{n_seeds} seeds" if n_seeds > 1 else "1 seed")
    return " · ".join(parts)


def trial_description(
    row: Mapping[str, Any],
    objectives: Sequence[str],
    *,
    study_name: str,
    parent_link: str | None = None,
) -> str:
    """The Markdown description of a trial's run (tag :data:`TAG_NOTE`).

    First line (the runs table's *Description* column): the objectives with their spread
    (:func:`objective_summary`), or ``FAILED: <reason>``. Then whether the trial is on the
    Pareto front, what was trained, other headline numbers, and a link back to the study's run
    (``parent_link``, a URL or a path relative to the MLflow UI such as
    ``#/experiments/1/runs/<id>``).
    """
    state = str(row.get("state", "COMPLETE"))
    if state == "FAIL":
        first = f"FAILED: {row.get('fail_reason') or 'no reason recorded'}"
    else:
        first = objective_summary(row, objectives)
    params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}
    operator = str(row.get("operator", params.get("protect.operator", "none")))
    strength = _value(row.get("strength", params.get("protect.strength", 0.0)))
    defense = str(row.get("defense", params.get("defense.name", "none")))
    groups = str(row.get("protected_groups") or "-").replace(",", ", ")
    kind, _ = classify({"operator": operator, "strength": strength, "defense": defense}, {})
    if kind in ("undefended", "baseline"):
        what = "No PPTP protection"
        if operator != "none" and math.isfinite(strength) and strength == 0:
            what += f" ({operator} at strength 0 is plain training)"
    else:
        what = f"**{operator}** at strength {strength:.4g} on {groups}"
    what += f"; defense **{defense}**." if defense != "none" else "; no other defense."
    lines = [first, ""]
    if state != "FAIL" and "pareto" in row:  # unknown while the study runs
        lines += ["On the Pareto front." if row["pareto"] else "Not on the Pareto front.", ""]
    lines.append(what)
    extras = []
    for key, label in (
        ("attack_tpr@0.1%fpr", "TPR at 0.1% FPR"),
        ("attack_tpr@1%fpr", "TPR at 1% FPR"),
        ("epsilon", "epsilon"),
    ):
        value = _value(row.get(key))
        if key in row and math.isfinite(value) and key not in objectives:
            extras.append(f"{label} {value:.4g}")
    if extras:
        lines += ["", "Also: " + ", ".join(extras) + "."]
    study = f"Trial {row.get('trial', '?')} of study **{study_name}**"
    lines += ["", f"{study} ([study run]({parent_link}))." if parent_link else f"{study}."]
    return "\n".join(lines)


def study_description(
    rows: Sequence[Mapping[str, Any]],
    objectives: Sequence[tuple[str, str]],
    *,
    study_name: str,
    names: Mapping[int, str],
    links: Mapping[str, str],
) -> str:
    """The Markdown description of the study's parent run.

    ``objectives``: ``(metric, "maximize"|"minimize")``; ``names``: trial number -> run name;
    ``links``: label -> URL or UI-relative path (``report``, ``trials``, ``pareto``,
    ``localization``); labels without a link are left out.
    """
    done = [r for r in rows if r.get("state") != "FAIL"]
    failed = len(rows) - len(done)
    front = [r for r in done if r.get("pareto")]
    first = f"{len(rows)} trials ({failed} failed), {len(front)} on the Pareto front"
    lines = [first, "", f"Study **{study_name}**:", ""]
    for metric, direction in objectives:
        values = [(r, _value(r.get(metric))) for r in done]
        values = [(r, v) for r, v in values if math.isfinite(v)]
        if not values:
            continue
        best_row, best = (max if direction == "maximize" else min)(values, key=lambda x: x[1])
        who = names.get(int(best_row.get("trial", -1)), f"trial {best_row.get('trial')}")
        lines.append(f"- best {metric} ({direction}): {best:.4f}, `{who}`")
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
