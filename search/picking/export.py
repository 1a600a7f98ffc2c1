"""Exporting a picked config: a space file that pins every key, with where it came from on top.

``TrialConfig.from_flat(yaml.safe_load(open(path))["fixed"])`` gives the config back, and
``search.space.load_space`` accepts the file (a one-config study).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pptp.fileio import atomic_write
from pptp.tables import format_cell
from search.picking.audit import ATTACK_METRICS, TABLE_METRICS, Comparison
from search.picking.rules import Pick
from search.study.reader import StudyRun

if TYPE_CHECKING:
    from pptp.config import TrialConfig


def picked_space(run: StudyRun, cfg: TrialConfig, pick: Pick) -> dict[str, Any]:
    """A space file that pins every key of ``cfg``: ``fixed`` holds all but ``train.seed``,
    which ``params`` searches over the one choice of the trial's seed, so that
    ``search/run.py --space picked.yaml`` runs it as it is (Ray's OptunaSearch refuses a space
    with nothing searched): a one-config study named ``<study>-trial<N>``, random sampler.
    ``TrialConfig.from_flat({**doc["fixed"], "train.seed": seed})`` gives ``cfg`` back.
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
    fixed = cfg.to_flat()
    seed = fixed.pop("train.seed")
    return {
        "study": study,
        "fixed": fixed,
        "params": {"train.seed": {"type": "categorical", "choices": [seed]}},
    }


def export_header(run: StudyRun, pick: Pick, rule: str, comparison: Comparison) -> list[str]:
    """The comment block on top of the exported file: where the config came from and its
    numbers (screening, re-trained, adaptive, the gap), and how to load it."""
    c = pick.candidate
    lines = [
        f"Picked by search/pick.py on {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"study {run.state.study_name}, run directory {run.run_dir}",
        f"trial {c.number} (MLflow run {c.attrs.get('mlflow_run_id', '-')}), rule {rule}: "
        f"{pick.reason}",
        "screening: "
        + ", ".join(
            f"{m} {format_cell(comparison.screening.get(m, math.nan))}" for m in TABLE_METRICS
        ),
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
            + ", ".join(
                f"{m} {format_cell(comparison.gap(m), signed=True)}" for m in ATTACK_METRICS
            )
        )
    lines += [
        "",
        "Relative data.data_dir / attack.bank_dir are relative to the directory run.py ran in.",
        "Run:   python search/run.py --space PATH  (a one-trial study of this config;",
        "       train.seed is 'searched' over its one value, as Ray needs a searched key)",
    ]
    return lines


def write_export(path: Path, doc: Mapping[str, Any], header: Sequence[str]) -> Path:
    """``header`` as ``#`` comments, then ``doc`` as YAML, written atomically to ``path``."""
    text = "".join(f"# {line}".rstrip() + "\n" for line in header)
    text += yaml.safe_dump(dict(doc), sort_keys=False)
    return atomic_write(path, text)
