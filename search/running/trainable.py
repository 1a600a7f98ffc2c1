"""The Ray Tune trainable: one search trial = one :func:`pptp.trial.run_trial` per training seed.

The trial builds its config from the space's fixed values plus the sampled ones, opens its MLflow
child run (inside the worker, so it can log curves and figures), trains its target over the
study's seeds (``study.repeats``, :mod:`search.running.repeats`), and reports once, at the end,
with every
objective (the privacy metric exists only after the attack).

**A failed trial is a data point, never a crash.** Anything the trial raises (a bad combination,
NaN loss, out of memory, a model at chance), and a NaN or infinite objective, ends its MLflow run
FAILED with the reason and the traceback (``traceback.txt``), and the trial reports its
objectives as NaN with ``failed = 1`` and ``fail_reason``: Ray Tune ends the whole run on a result
without the searcher's metrics, and :class:`search.running.samplers.StudySearch` turns ``failed``
into an
Optuna FAIL with the reason. A worker that dies (SIGKILL, an out-of-memory killer) cannot report;
the driver records it (:mod:`search.running.bookkeeping`).

**MLflow is not needed to finish.** The trial's tracker keeps everything it logs
(:mod:`search.tracking.spool`); the report carries it as :data:`RECORD` for the driver to keep in
the run directory and replay when MLflow could not take it (:mod:`search.study.records`).

**Multi-fidelity** (``study.fidelity``): the target trains on every seed in lock step and is
measured at each rung (:func:`pptp.fidelity.run_trial_at_rungs`); each rung is reported to Tune
(:data:`search.running.scheduler.RUNG`, ``final = 0``) and logged as ``rung/<metric>`` at step
epoch. When the scheduler stops the trial, Tune ends it at that report (``SystemExit`` in the
trial's thread): the MLflow run is tagged :data:`TAG_STOPPED` and ends KILLED.

**Duplicates are not trained again.** A config the study already finished arrives with
:data:`DUPLICATE_OF` and the finished trial's results (:data:`REUSE`, set by the searcher): the
trial reports and logs those, and trains nothing.

**Nothing on the trial's path is on the driver's disk.** The screening references arrive through
Ray's object store (``reference_signals``, loaded once by the driver,
:mod:`search.running.references`); the trial's MLflow run goes to the tracking server; what MLflow
could not take comes back in the report. A trial records where it ran as tags (``node.hostname``,
``node.ray_id``, ``node.ip``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray import tune

from pptp.bank import ReferenceBank, ReferenceSignals
from pptp.config import TrialConfig
from pptp.fidelity import run_trial_at_rungs
from pptp.result import TrialResult
from pptp.threads import torch_threads
from pptp.train import EpochLog
from pptp.treatment import TREATMENT_ATTR, Treatment, run_name, trial_digits
from pptp.trial import run_trial
from search.running.repeats import aggregate, repeat_seeds
from search.running.samplers import DUPLICATE_OF, PER_SEED, RECORD, REUSE, TRIAL_NUMBER
from search.running.scheduler import FINAL, RUNG, STOPPABLE
from search.space import Space
from search.study.failures import exception_reason
from search.study.naming import planned_name, planned_treatment
from search.tracking.spool import RUN_NAME_TAG
from search.tracking.trial_tracker import TrialTracker

logger = logging.getLogger(__name__)

RUN_NAME = RUN_NAME_TAG  # the MLflow tag that renames a run
#: MLflow tags naming where a trial ran (:func:`node_tags`)
TAG_HOSTNAME, TAG_RAY_NODE, TAG_NODE_IP = "node.hostname", "node.ray_id", "node.ip"
#: MLflow tag: the torch threads the trial trained with (``study.resources.cpus``, rounded down)
TAG_THREADS = "torch.threads"
#: MLflow tag: ``shipped`` (the driver's references, through Ray) or ``bank`` (loaded in the trial)
TAG_REFERENCES = "references"
#: MLflow tag of a trial the multi-fidelity scheduler stopped: the epoch it was stopped at
TAG_STOPPED = "stopped_at_epoch"

#: config keys that steer the trial rather than configure it
CONTROL_KEYS = (TRIAL_NUMBER, DUPLICATE_OF, REUSE)


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its sampled parameters (sent once to every worker)."""

    space: Space
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    references: TrialConfig | None  # the base recipe the screening references follow
    overrides: dict[str, Any]  # flat keys applied last (absolute data and bank folders)

    @property
    def wanted(self) -> list[str]:
        """Metrics the study optimises or constrains (their spread over seeds is reported)."""
        study = self.space.study
        return [*study.metrics, *(c.metric for c in study.constraints)]


def run_search_trial(
    sampled: dict[str, Any],
    ctx: TrialContext,
    *,
    reference_signals: ReferenceSignals | None = None,
    node: dict[str, str] | None = None,
    report_rung: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one trial and return the flat dict that is reported to Tune (and so to Optuna).

    ``report_rung``: with ``study.fidelity``, called with each rung's report (``tune.report``
    in a Tune trial); without it the trial trains to the end unmeasured in between.

    The dict always holds every objective (NaN when the trial failed), ``failed``, ``seconds``
    and :data:`RECORD` (the trial's MLflow run as JSON, for the driver's run directory).

    ``reference_signals``: the screening references the driver loaded once and shipped through
    Ray (:data:`TAG_REFERENCES` ``= shipped``): the trial scores against them and never opens
    ``attack.bank_dir``. Without them (a space that searches data or model keys) the trial loads
    its references from the bank, training what is missing (``= bank``). ``node``: tags naming
    where the trial ran (:func:`node_tags`).
    """
    params = {k: v for k, v in sampled.items() if k not in CONTROL_KEYS}
    number = int(sampled.get(TRIAL_NUMBER, -1))
    start = time.perf_counter()
    tracker = TrialTracker(
        ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial_number=number
    )
    with tracker:
        report: dict[str, Any] = {"mlflow_run_id": tracker.run_id}
        tracker.set_tags(node or {})
        if DUPLICATE_OF in sampled:
            report.update(_reuse(sampled, params, ctx, tracker))
        else:
            report.update(
                _train_and_attack(params, ctx, tracker, reference_signals, report_rung)
            )
    report["seconds"] = time.perf_counter() - start
    report[RECORD] = json.dumps(tracker.record())
    return report


def _train_and_attack(
    params: dict[str, Any],
    ctx: TrialContext,
    tracker: TrialTracker,
    reference_signals: ReferenceSignals | None = None,
    report_rung: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    seeds: list[int] = []
    results: list[TrialResult] = []
    where = ""
    try:
        cfg = ctx.space.trial_config(params).replace(**ctx.overrides)
        treatment = planned_treatment(cfg, ctx.space)
        report.update(recorded_treatment(treatment))
        tracker.set_tags({RUN_NAME: planned_name(tracker.trial_number, cfg, ctx.space)})
        tracker.log_params(cfg.to_flat())
        tracker.set_tags({TAG_REFERENCES: "shipped" if reference_signals is not None else "bank"})
        seeds = repeat_seeds(cfg.train.seed, ctx.space.study.repeats)
        fidelity = ctx.space.study.fidelity
        if fidelity is not None and report_rung is not None:
            rungs = fidelity.epochs(cfg.train.epochs)
            stoppable = not {treatment.operator, treatment.defense} & set(fidelity.never_stop)
            where = f"multi-fidelity training over {len(seeds)} seed(s)"
            results = run_trial_at_rungs(
                cfg,
                seeds,
                rungs,
                on_rung=lambda epoch, at_rung: _report_rung(
                    epoch, at_rung, ctx, tracker, report, report_rung, stoppable=stoppable
                ),
                reference_signals=reference_signals,
                references=ctx.references,
                on_epoch=lambda r: _on_epoch(tracker, "" if r == 0 else f"seed{r}/"),
            )
            report.update({RUNG: cfg.train.epochs, FINAL: 1})
        for r, seed in enumerate(seeds if fidelity is None or report_rung is None else []):
            if len(seeds) > 1:
                where = f"seed {r + 1}/{len(seeds)} (train.seed {seed})"
            results.append(
                run_trial(
                    cfg.replace(**{"train.seed": seed}),
                    bank=None
                    if reference_signals is not None
                    else ReferenceBank(cfg.attack.bank_dir),
                    on_epoch=_on_epoch(tracker, "" if r == 0 else f"seed{r}/"),
                    references=ctx.references,
                    reference_signals=reference_signals,
                )
            )
    except Exception as error:
        reason = exception_reason(error, where=where)
        logger.warning("trial %d failed: %s", tracker.trial_number, reason)
        tracker.fail(reason, traceback=traceback.format_exc())
        return {**report, **_failure(ctx, reason)}
    per_seed = [_flat_metrics(result) for result in results]
    metrics, values = aggregate(per_seed, wanted=ctx.wanted)
    objectives = {m: metrics.get(m, math.nan) for m in ctx.space.study.metrics}
    tracker.log_result(results[0], metrics=metrics, objectives=objectives)
    trained = tuple(results[0].protected_groups)
    if treatment.protected and trained != treatment.groups:  # training resolved them: its word
        number, digits = tracker.trial_number, trial_digits(ctx.space.study.n_trials)
        logger.info("trial %d protected %s (planned: %s)", number, trained, treatment.groups)
        treatment = dataclasses.replace(treatment, groups=trained)
        report.update(recorded_treatment(treatment))
        tracker.set_tags({RUN_NAME: run_name(number, treatment, digits=digits)})
    for r, seed_metrics in enumerate(per_seed if len(per_seed) > 1 else []):
        tracker.log_metrics(
            {f"seed/{k}": v for k, v in seed_metrics.items() if k in values}, step=r
        )
    bad = [m for m, v in objectives.items() if not math.isfinite(v)]
    if bad:
        reason = f"objective {bad[0]} is {objectives[bad[0]]}"
        tracker.fail(reason)
        return {**report, **_failure(ctx, reason)}
    out = {
        **report,
        **{k: v for k, v in metrics.items() if not k.startswith("extras/")},
        "failed": 0,
        "repeats": len(seeds),
    }
    if values:
        out[PER_SEED] = json.dumps(values)
    return out


def _report_rung(
    epoch: int,
    at_rung: list[TrialResult],
    ctx: TrialContext,
    tracker: TrialTracker,
    report: dict[str, Any],
    report_rung: Callable[[dict[str, Any]], None],
    *,
    stoppable: bool,
) -> None:
    """Report one rung (the seeds' means of what the study ranks by) and log it; a trial the
    scheduler stops ends here (``SystemExit`` from Tune), tagged :data:`TAG_STOPPED`."""
    metrics, _ = aggregate([_flat_metrics(r) for r in at_rung], wanted=ctx.wanted)
    kept = [*ctx.space.study.metrics, *ctx.wanted]
    values = {m: metrics.get(m, math.nan) for m in dict.fromkeys(kept)}
    values.update({f"{m}_sd": metrics[f"{m}_sd"] for m in kept if f"{m}_sd" in metrics})
    tracker.log_metrics({f"rung/{m}": v for m, v in values.items()}, step=epoch)
    out = {**report, **values, RUNG: epoch, FINAL: 0, STOPPABLE: int(stoppable), "failed": 0}
    out["mlflow_run_id"] = tracker.run_id
    try:
        report_rung(out)
    except SystemExit:
        tracker.set_tags({TAG_STOPPED: str(epoch)})
        tracker.stop(stopped_reason(epoch))
        raise


def stopped_reason(epoch: int) -> str:
    """The ``fail_reason`` of a run the multi-fidelity scheduler stopped at ``epoch``."""
    return f"stopped early at epoch {epoch}: dominated at this rung (study.fidelity)"


def _reuse(
    sampled: dict[str, Any], params: dict[str, Any], ctx: TrialContext, tracker: TrialTracker
) -> dict[str, Any]:
    """A duplicate of a finished trial: log and report its results, train nothing."""
    original = int(sampled[DUPLICATE_OF])
    reused: dict[str, Any] = json.loads(str(sampled.get(REUSE) or "{}"))
    cfg = ctx.space.trial_config(params).replace(**ctx.overrides)
    tracker.set_tags({RUN_NAME: planned_name(tracker.trial_number, cfg, ctx.space)})
    tracker.log_params(cfg.to_flat())
    numbers = {
        k: float(v)
        for k, v in reused.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    tracker.log_metrics(numbers)
    described = recorded_treatment(planned_treatment(cfg, ctx.space))
    tracker.set_tags({DUPLICATE_OF: str(original), **_tags(described)})
    logger.info(
        "trial %d repeats finished trial %d: its results are reused", tracker.trial_number, original
    )
    return {**reused, **described, DUPLICATE_OF: original, "failed": 0}


def _on_epoch(tracker: TrialTracker, prefix: str) -> Any:
    def on_epoch(log: EpochLog) -> None:
        tracker.log_epoch(log, prefix=prefix)

    return on_epoch


def _flat_metrics(result: TrialResult) -> dict[str, float]:
    metrics = dict(result.metrics())
    metrics.update({f"extras/{k}": v for k, v in result.extras.items()})
    return metrics


def _failure(ctx: TrialContext, reason: str) -> dict[str, Any]:
    """NaN for every objective: a failure report must still name them, or Ray Tune ends the whole
    run ("Trial returned a result which did not include the specified metric(s)")."""
    return {
        **{metric: math.nan for metric in ctx.space.study.metrics},
        "failed": 1,
        "fail_reason": reason,
    }


def trainable(
    config: dict[str, Any], ctx: TrialContext, reference_signals: ReferenceSignals | None = None
) -> None:
    """The function Tune runs, wrapped with ``tune.with_parameters(trainable, ctx=...,
    reference_signals=<ObjectRef>)``: Tune resolves both from Ray's object store on whichever node
    runs the trial (the signals are read in place from the node's shared memory). The trial
    trains with as many torch threads as the CPUs it reserved (:func:`pptp.threads.torch_threads`,
    tag :data:`TAG_THREADS`), whatever Ray put in the worker's environment."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with torch_threads(ctx.space.study.resources.cpus) as threads:  # pptp/threads.py
        node = {**node_tags(), TAG_THREADS: str(threads)}
        tune.report(
            run_search_trial(
                config,
                ctx,
                reference_signals=reference_signals,
                node=node,
                report_rung=tune.report,
            )
        )


def node_tags() -> dict[str, str]:
    """Where this process runs, as MLflow tags: :data:`TAG_HOSTNAME` (the machine's host name)
    and, inside Ray, :data:`TAG_RAY_NODE` (the Ray node id, which tells apart two nodes of one
    machine) and :data:`TAG_NODE_IP` (the address the node registered with)."""
    tags = {TAG_HOSTNAME: socket.gethostname()}
    import ray

    if ray.is_initialized():
        tags[TAG_RAY_NODE] = ray.get_runtime_context().get_node_id()
        tags[TAG_NODE_IP] = ray.util.get_node_ip_address()
    return tags


def recorded_treatment(treatment: Treatment) -> dict[str, Any]:
    """What a trial reports of what it trained with: the flat fields and, as JSON text (Tune
    flattens nested result dicts), the whole treatment (:data:`pptp.treatment.TREATMENT_ATTR`)."""
    return {**treatment.flat(), TREATMENT_ATTR: json.dumps(treatment.to_data())}


def _tags(recorded: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in recorded.items() if k != TREATMENT_ATTR}


__all__ = ["TrialContext", "TrialResult", "node_tags", "run_search_trial", "trainable"]
