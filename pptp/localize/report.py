"""Presenting a localisation: the printed table, ``localization.csv`` and ``localization.png``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from pptp.fileio import atomic_write
from pptp.localize.result import LocalizationResult
from pptp.tables import format_table

CSV_COLUMNS = (
    "group",
    "rank",
    "privacy_risk_mean",
    "privacy_risk_std",
    "generalization_mean",
    "generalization_std",
    "risk_at_output_mean",
    "risk_at_output_std",
    "distance_d1",
    "distance_d2",
    "distance_held_out",
)


def localization_table(result: LocalizationResult) -> str:
    """Aligned columns, groups in model order: risk and generalization as mean ± std over seeds,
    under a line naming the model, data, seeds and set sizes, above the accuracies of A and B and
    what the scores mean. Generalization is shown in accuracy points (the drop x 100).
    """
    n = len(result.seeds)
    head = ("group", "privacy risk", "generalization (pts)", "risk at output", "rank")
    rows = [
        (
            g.group,
            f"{g.privacy_risk_mean:+.4f} ± {g.privacy_risk_std:.4f}",
            f"{100 * g.generalization_mean:+.2f} ± {100 * g.generalization_std:.2f}",
            f"{g.risk_at_output_mean:+.4f} ± {g.risk_at_output_std:.4f}",
            str(result.rank(g.group)),
        )
        for g in result.groups
    ]
    acc_a = ", ".join(f"{a:.3f}" for a in result.test_acc_a)
    acc_b = ", ".join(f"{b:.3f}" for b in result.test_acc_b)
    sizes = result.sizes
    return "\n".join(
        [
            f"{result.model} on {result.dataset}, {n} seed{'s' if n != 1 else ''} "
            f"{list(result.seeds)} (mean ± std); |D| {sizes.get('members')}, "
            f"|D1| {sizes.get('d1')}, |D2| {sizes.get('d2')}, held-out {sizes.get('held_out')}",
            format_table(rows, head, align="lrrrr"),
            f"test_acc A (on D): {acc_a}; B (on D1): {acc_b}",
            "privacy risk: log-ratio of the swapped-group distance on D2 to D1/held-out "
            "(0 = none); generalization: test-accuracy drop when the group is reset to its "
            "warm-up weights",
        ]
    )


def write_csv(result: LocalizationResult, path: str | Path) -> Path:
    """:meth:`LocalizationResult.to_rows` as CSV (:data:`CSV_COLUMNS`), groups in model order;
    written atomically (:func:`pptp.fileio.atomic_write`)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    writer.writerows(result.to_rows())
    return atomic_write(path, text.getvalue())


def plot_localization(result: LocalizationResult, path: str | Path, *, title: str = "") -> Path:
    """PNG: privacy risk (y) against generalization (x, accuracy points), one labelled point per
    group with ±1 std error bars over seeds, groups coloured from shallow to deep.

    Dashed lines at the medians over groups split the plane; the upper-left quadrant (risk above
    the median, generalization below) is shaded and labelled "protect": groups there are the
    candidates PPTP protects at little cost in accuracy. The split is relative to this model's
    groups, a hint, not a threshold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    xs = np.array([100 * g.generalization_mean for g in result.groups])
    ys = np.array([g.privacy_risk_mean for g in result.groups])
    xerr = np.array([100 * g.generalization_std for g in result.groups])
    yerr = np.array([g.privacy_risk_std for g in result.groups])
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(result.groups)))
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    try:
        x_mid, y_mid = float(np.median(xs)), float(np.median(ys))
        pad_x = max(0.1 * float(np.ptp(xs + xerr) + np.ptp(xs - xerr)), 0.5)
        pad_y = max(0.1 * float(np.ptp(ys + yerr) + np.ptp(ys - yerr)), 1e-3)
        x_lo, x_hi = float((xs - xerr).min()) - pad_x, float((xs + xerr).max()) + pad_x
        y_lo, y_hi = float((ys - yerr).min()) - pad_y, float((ys + yerr).max()) + pad_y
        ax.axvspan(
            x_lo,
            x_mid,
            ymin=(y_mid - y_lo) / (y_hi - y_lo),
            ymax=1.0,
            color="tab:red",
            alpha=0.07,
            zorder=0,
        )
        ax.text(
            x_lo,
            y_hi,
            " protect: high risk, low generalization",
            va="top",
            ha="left",
            fontsize=8,
            color="tab:red",
        )
        ax.text(
            x_hi,
            y_lo,
            "keep free: low risk, high generalization ",
            va="bottom",
            ha="right",
            fontsize=8,
            color="tab:green",
        )
        ax.axvline(x_mid, color="0.6", linestyle="--", linewidth=0.8, zorder=1)
        ax.axhline(y_mid, color="0.6", linestyle="--", linewidth=0.8, zorder=1)
        ax.axhline(0.0, color="0.3", linewidth=0.6, zorder=1)
        for x, y, ex, ey, c in zip(xs, ys, xerr, yerr, colours, strict=True):
            ax.errorbar(
                x,
                y,
                xerr=ex,
                yerr=ey,
                fmt="o",
                color=c,
                ecolor=c,
                elinewidth=1,
                capsize=3,
                markersize=7,
                zorder=3,
            )
        for g, x, y, (dx, dy) in zip(
            result.groups, xs, ys, _label_offsets(xs, ys, (x_lo, x_hi), (y_lo, y_hi)), strict=True
        ):
            ax.annotate(
                g.group,
                (x, y),
                textcoords="offset points",
                xytext=(dx, dy),
                ha="left" if dx > 0 else "right",
                fontsize=9,
                zorder=4,
            )
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_xlabel("generalization: test-accuracy drop when reset to warm-up (points)")
        ax.set_ylabel("privacy risk: log(d on D2 / d on D1, held-out)")
        n = len(result.seeds)
        ax.set_title(
            title
            or f"{result.model} on {result.dataset}: layer groups "
            f"({n} seed{'s' if n != 1 else ''}, mean ± std)",
            fontsize=10,
        )
        ax.grid(True, alpha=0.25)
        image = io.BytesIO()
        fig.savefig(image, format="png", dpi=120, bbox_inches="tight")
        atomic_write(path, image.getvalue())
    finally:
        plt.close(fig)
    return path


# label offsets in points, tried in order: right-above, right-below, left-above, left-below
_OFFSETS = ((6, 5), (6, -13), (-6, 5), (-6, -13))


def _label_offsets(
    xs: np.ndarray, ys: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float]
) -> list[tuple[int, int]]:
    """One offset per point so that labels of nearby points do not overlap (greedy, in order)."""
    px = (xs - xlim[0]) / (xlim[1] - xlim[0]) * 370  # about the axes size in points
    py = (ys - ylim[0]) / (ylim[1] - ylim[0]) * 280
    placed: list[tuple[float, float]] = []
    out = []
    for x, y in zip(px, py, strict=True):
        choice = _OFFSETS[0]
        for dx, dy in _OFFSETS:
            cx, cy = x + dx + (20 if dx > 0 else -20), y + dy
            if all(abs(cx - ox) > 45 or abs(cy - oy) > 12 for ox, oy in placed):
                choice = (dx, dy)
                break
        placed.append((x + choice[0] + (20 if choice[0] > 0 else -20), y + choice[1]))
        out.append(choice)
    return out
