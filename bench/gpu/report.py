"""What ``bench/gpu_check.py`` makes of its parts' figures: derived numbers and the tables.

Input: one :class:`Part` per part (status, seconds, budget, reason, the figures the part recorded
in ``bench/gpu/``). :func:`summarise` computes what needs several parts (each throughput
row as a fraction of the measured bf16 peak; shared over single trials per hour);
:func:`render` lays everything out as aligned tables (``pptp.tables.format_table``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pptp.tables import MISSING, format_table


@dataclass(frozen=True)
class Part:
    """How one part ended: ``ok``, ``failed``, ``timeout`` or ``not run``, and its figures."""

    status: str
    seconds: float
    budget_s: float
    reason: str
    figures: dict[str, Any]


def summarise(parts: Mapping[str, Part]) -> dict[str, Any]:
    """Figures computed across parts.

    ``throughput``: per configuration, the steady rate as model TFLOP/s (images/s x the FLOP per
    training image counted by the throughput part) and as a fraction of the ``peak`` part's
    median bf16 TFLOP/s (fp32 rows too, against the same bf16 peak, as the issue asks).
    ``shared_over_single``: trials per hour of the shared configuration over the single one.
    """
    peak = parts.get("peak")
    peak_tflops = ((peak.figures.get("peak") or {}) if peak else {}).get("tflops_median")
    rows = []
    tp = parts.get("throughput")
    flop = tp.figures.get("flop_per_image") if tp else None
    for name, r in ((tp.figures.get("configs") or {}) if tp else {}).items():
        if r.get("status") == "ok" and flop:
            tflops = r["steady_img_s"] * flop / 1e12
            share = tflops / peak_tflops if peak_tflops else None
            rows.append({"config": name, "tflops": tflops, "fraction_of_peak": share})
    out: dict[str, Any] = {"peak_tflops": peak_tflops, "throughput": rows}
    fr = parts.get("fractional")
    rates = [
        c.get("trials_per_hour") for c in ((fr.figures.get("configs") or {}) if fr else {}).values()
    ]
    if len(rates) == 2 and all(rates):
        out["shared_over_single"] = rates[1] / rates[0]
    return out


def render(parts: Mapping[str, Part], summary: Mapping[str, Any], header: Sequence[str]) -> str:
    """Every table, part by part; the part-status table first."""
    lines = [*header, ""]
    lines.append(
        format_table(
            [(n, p.status, p.seconds, p.budget_s, p.reason[:100]) for n, p in parts.items()],
            ["part", "status", "seconds", "budget s", "reason"],
            digits=0,
        )
    )
    lines += _peak(parts.get("peak"))
    lines += _throughput(parts.get("throughput"), summary)
    lines += _fractional(parts.get("fractional"), summary)
    lines += _study(parts.get("study"))
    return "\n".join(lines)


def _peak(p: Part | None) -> list[str]:
    if p is None or "device" not in p.figures:
        return []
    d = p.figures["device"]
    lines = ["", "device: " + ", ".join(f"{k} {v}" for k, v in d.items())]
    if "peak" in p.figures:
        k = p.figures["peak"]
        lines.append(
            f"peak: {k['dtype']} matmul {k['n']}^3 on random data, median {k['tflops_median']:.4g} "
            f"TFLOP/s (min {k['tflops_min']:.4g}, max {k['tflops_max']:.4g}, {k['repeats']} "
            f"repeats after 3 warm-ups); relative error against fp32 {k['rel_error_vs_fp32']:.1e}"
        )
    return lines


def _throughput(p: Part | None, summary: Mapping[str, Any]) -> list[str]:
    if p is None or "configs" not in p.figures:
        return []
    s, flop = p.figures.get("setup", {}), p.figures.get("flop_per_image") or 0.0
    derived = {r["config"]: r for r in summary.get("throughput", [])}
    rows: list[tuple[object, ...]] = []
    notes: list[str] = []
    for name, r in p.figures["configs"].items():
        if r.get("status") != "ok":
            rows.append((name, r.get("status", "?"), None, None, None, None, None))
            if r.get("reason"):
                notes.append(f"  {name}: {r['status']}: {r['reason']}")
            continue
        d = derived.get(name, {})
        share = d.get("fraction_of_peak")
        rows.append(
            (
                name,
                "ok",
                r.get("first_epoch_img_s"),
                r.get("steady_img_s"),
                f"{d['tflops']:.4g}" if d else MISSING,
                f"{100 * share:.1f}%" if share is not None else MISSING,
                _fixed(r.get("max_memory_gib"), 1),
            )
        )
    headers = ["config", "status", "1st epoch img/s", "steady img/s", "TFLOP/s", "of peak"]
    return [
        "",
        f"throughput: pptp.train.train, {s.get('model')}, {s.get('images_per_epoch')} synthetic "
        f"CIFAR-shaped images x {s.get('epochs')} epochs, batch {s.get('batch_size')}, "
        f"{flop / 1e9:.3g} GFLOP per training image (FlopCounterMode); steady = median of the "
        "epochs after the first",
        format_table(rows, [*headers, "max GiB"], digits=0),
        *notes,
    ]


def _fractional(p: Part | None, summary: Mapping[str, Any]) -> list[str]:
    if p is None or "configs" not in p.figures:
        return []
    s = p.figures.get("setup", {})
    rows = [
        (
            name,
            c.get("status", "?"),
            f"{c.get('trials_ok', 0)}/{c.get('trials')}",
            c.get("wall_s"),
            c.get("trials_per_hour"),
            c.get("median_setup_s"),
            c.get("median_train_s"),
            c.get("median_img_s"),
            c.get("aggregate_img_s"),
        )
        for name, c in p.figures["configs"].items()
    ]
    headers = ["config", "status", "trials ok", "wall s", "trials/hour", "setup s", "train s"]
    headers += ["img/s per trial", "img/s x concurrent"]
    ratio = summary.get("shared_over_single")
    return [
        "",
        f"fractional: Ray Tune, a trial = {s.get('trial')}, {s.get('cpus_per_trial')} CPUs per "
        f"trial; Ray started in {p.figures.get('ray_start_s', float('nan')):.1f}s",
        format_table(rows, headers, digits=1),
        f"shared / single trials per hour: {ratio:.2f}x" if ratio else "",
    ]


def _study(p: Part | None) -> list[str]:
    if p is None or "space" not in p.figures:
        return []
    f = p.figures
    fixed, study = f["space"]["fixed"], f["space"]["study"]
    first = f.get("first_trial_started_s")
    lines = [
        "",
        f"study: search/run.py, model {fixed['model']}, data {fixed['data']}, "
        f"{fixed['train']['epochs']} epochs, {study['n_trials']} trials "
        f"({study['max_concurrent']} at a time, {study['resources']} each), "
        f"{fixed['attack']['n_references']} references",
        f"exit status {f.get('exit_code')} after {f.get('wall_s', float('nan')):.0f}s; first "
        f"trial started at {'-' if first is None else f'{first:.0f}s'}; trial states "
        f"{f.get('states')}; Pareto front of {f.get('pareto_size', 0)}",
    ]
    front = f.get("front") or []
    keys = [
        k
        for k in ("trial", "operator", "strength", "test_acc", "attack_auc")
        if front and k in front[0]
    ]
    if keys:
        lines.append(format_table([[_number(r[k]) for k in keys] for r in front], keys))
    return lines


def _fixed(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _number(text: str) -> object:
    """A CSV cell as a float when it is one (tables then print 4 decimals), else as it is."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
