"""The Ray Tune trainable: one search trial = one :func:`pptp.trial.run_trial` in a Ray worker.

The trial builds its config from the space's fixed values plus the sampled ones, opens its MLflow
child run (inside the worker, so it can log curves and figures), runs the trial, and reports
once, at the end, with every objective (the privacy metric exists only after the attack).

A trial that raises (bad combination, NaN loss, out of memory) does not crash Ray: it records the
reason in its MLflow run, and reports ``failed = 1`` with the reason, which
:class:`search.samplers.StudySearch` turns into an Optuna FAIL. The study goes on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from ray import tune

from pptp.bank import ReferenceBank
from pptp.config import TrialConfig
from pptp.trial import TrialResult, run_trial
from search.samplers import TRIAL_NUMBER
from search.space import Space
from search.tracking import TrialTracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its sampled parameters (sent once to every worker)."""

    space: Space
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    references: TrialConfig | None  # the base recipe the screening references follow
    overrides: dict[str, Any]  # flat keys applied last (absolute data and bank folders)


def run_search_trial(sampled: dict[str, Any], ctx: TrialContext) -> dict[str, Any]:
    """Run one trial and return the flat dict that is reported to Tune (and so to Optuna)."""
    params = {k: v for k, v in sampled.items() if k != TRIAL_NUMBER}
    number = int(sampled.get(TRIAL_NUMBER, -1))
    start = time.perf_counter()
    with TrialTracker(
        ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial_number=number
    ) as tracker:
        report: dict[str, Any] = {"mlflow_run_id": tracker.run_id}
        try:
            cfg = ctx.space.trial_config(params).replace(**ctx.overrides)
            report.update(describe(cfg))
            tracker.log_params(cfg.to_flat())
            result = run_trial(
                cfg,
                bank=ReferenceBank(cfg.attack.bank_dir),
                on_epoch=tracker.log_epoch,
                references=ctx.references,
            )
        except Exception as error:
            reason = _reason(error)
            logger.warning("trial %d failed: %s", number, reason)
            tracker.fail(reason)
            return {
                **report,
                **_missing_objectives(ctx),
                "failed": 1,
                "fail_reason": reason,
                "seconds": time.perf_counter() - start,
            }
        metrics = result.metrics()
        bad = [m for m in ctx.space.study.metrics if not math.isfinite(metrics.get(m, math.nan))]
        tracker.log_result(result)
        if bad:
            reason = f"objective {bad[0]} is {metrics.get(bad[0])}"
            tracker.fail(reason)
            return {**report, **_missing_objectives(ctx), "failed": 1, "fail_reason": reason}
        return {
            **report,
            **metrics,
            "failed": 0,
            "seconds": time.perf_counter() - start,
            "protected_groups": ",".join(result.protected_groups) or "-",
        }


def trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """The function Tune runs (wrapped with ``tune.with_parameters(trainable, ctx=...)``)."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    tune.report(run_search_trial(config, ctx))


def describe(cfg: TrialConfig) -> dict[str, Any]:
    """The few fields that name a trial in tables: operator, strength, defense."""
    operator = cfg.protect.operator if cfg.protect.strength > 0 else "none"
    return {"operator": operator, "strength": cfg.protect.strength, "defense": cfg.defense.name}


def _missing_objectives(ctx: TrialContext) -> dict[str, float]:
    """NaN for every objective: a failure report must still name them, or Ray Tune ends the whole
    run ("Trial returned a result which did not include the specified metric(s)")."""
    return {metric: math.nan for metric in ctx.space.study.metrics}


def _reason(error: BaseException) -> str:
    kind = "out of memory" if "out of memory" in str(error).lower() else type(error).__name__
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{kind}: {first}"[:500]


__all__ = ["TrialContext", "TrialResult", "run_search_trial", "trainable"]
