"""The comparison written out: the Markdown table (mean ± sd over seeds) with the hypervolumes and
the verdict, one CSV row per trial, and the figure (attack metric across, accuracy up)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.comparing.fronts import Comparison, front
from search.study.trials import FinishedTrial


def _cell(point: FinishedTrial, metric: str) -> str:
    mean, sd = point.mean(metric), point.sd(metric)
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.4f} ± {sd:.4f}" if point.n_seeds > 1 else f"{mean:.4f}"


def shown_points(result: Comparison) -> list[FinishedTrial]:
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
        [p.kind, f"{p.study}#{p.number}", p.label, str(p.n_seeds), *[_cell(p, m) for m in present]]
        for p in shown_points(result)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    ref = ", ".join(
        f"{a.metric} {v:.4f}" for a, v in zip(result.axes, result.reference, strict=True)
    )
    lines += ["", *hypervolume_lines(result, ref), "", f"Did PPTP beat the baselines here? "
              f"{result.verdict}."]  # fmt: skip
    return "\n".join(lines)


def hypervolume_lines(result: Comparison, reference: str) -> list[str]:
    """The hypervolumes (with their intervals) of the families that have trials, and the seed
    noise the intervals come from."""
    lines = [
        f"Hypervolume (reference point: {reference}; 95% interval from each family's pooled "
        f"seed noise, {result.n_bootstrap} parametric resamples; trials: distinct trainings of "
        f"the family, the undefended model's {result.counts()['undefended']} on both fronts):",
        "",
    ]
    counts = result.counts()
    families = ("pptp", "baseline")
    for name, volume, kind in (
        ("PPTP front", result.pptp, "pptp"),
        ("baselines' front", result.baselines, "baseline"),
    ):
        if volume is None:
            shown = "no trial"
        elif result.noise.get(kind) is None:  # no spread to resample: a point, not an interval
            shown = f"{volume.value:.4f} (no interval: its trials trained one seed each)"
        else:
            shown = str(volume)
        lines.append(f"- {name}: {shown} ({counts[kind]} trials)")
    if result.difference is not None and None in (result.noise.get(k) for k in families):
        lines.append(
            f"- PPTP minus baselines: {result.difference.value:.4f} (no interval: a family's "
            "seed noise is unknown)"
        )
    elif result.difference is not None:
        lines.append(
            f"- PPTP minus baselines: {result.difference} (PPTP larger in "
            f"{100 * result.share_pptp_better:.0f}% of resamples)"
        )
    for kind, name in (("pptp", "PPTP"), ("baseline", "baseline")):
        noise = result.noise.get(kind)
        if noise is not None:
            sds = ", ".join(
                f"{a.metric} {math.sqrt(noise.cov[i, i]):.4f}" for i, a in enumerate(result.axes)
            )
            lines.append(
                f"- {name} seed noise (sd of one seed, pooled over {noise.trials} trials, "
                f"{noise.df} df): {sds}"
            )
    return lines


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
                    p.number,
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
    if acc.direction != "maximize":  # the maximised objective upward, whatever the study's order
        acc, attack = attack, acc
    fig, ax = plt.subplots(figsize=(7.5, 5.5))

    def xy(points: Sequence[FinishedTrial]) -> tuple[list[float], list[float]]:
        return [p.mean(attack.metric) for p in points], [p.mean(acc.metric) for p in points]

    def spread(points: Sequence[FinishedTrial], **style: Any) -> None:
        """The points' means with their seed standard deviations as error bars."""
        xs, ys = xy(points)
        xerr = [p.sd(attack.metric) for p in points]
        ax.errorbar(xs, ys, xerr=xerr, yerr=[p.sd(acc.metric) for p in points], **style)

    try:
        pptp = [p for p in result.points if p.kind == "pptp"]
        ax.scatter(*xy(pptp), s=14, color="tab:blue", alpha=0.35, label="PPTP trials")
        combined = [p for p in result.points if p.kind == "combined"]
        if combined:
            ax.scatter(*xy(combined), s=14, color="tab:gray", alpha=0.35, label="PPTP + a defense")
        for name, color, label, volume in (
            ("pptp", "tab:blue", "PPTP front", result.pptp),
            ("baseline", "tab:orange", "baselines' front", result.baselines),
        ):
            if volume is None:
                continue
            label += f" (HV {volume.value:.4f})"
            line = front(result.family(name), result.axes)
            xs, ys = xy(line)
            ax.step(xs, ys, where="post", color=color, linewidth=1.5, label=label)
        defenses = sorted({p.treatment.defense for p in result.points if p.kind == "baseline"})
        for i, defense in enumerate(defenses):
            group = [
                p for p in result.points if p.kind == "baseline" and p.treatment.defense == defense
            ]
            spread(
                group,
                fmt=_BASELINE_MARKERS[i % len(_BASELINE_MARKERS)],
                markersize=6,
                capsize=2,
                color=plt.get_cmap("tab10")(i + 2),
                label=defense,
            )
        undefended = [p for p in result.points if p.kind == "undefended"]
        if undefended:
            spread(undefended, fmt="*", markersize=13, color="black", capsize=2, label="undefended")
        ax.set(
            xlabel=f"{attack.metric} ({'higher' if attack.sign > 0 else 'lower'} is better)",
            ylabel=acc.metric,
            title=title,
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
        fig.savefig(path, dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
