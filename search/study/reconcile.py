"""On resume, Optuna and MLflow are made to agree about every trial a stopped driver left open.

A driver can stop (killed, its Ray lost, its disk full) between a trial's end and Optuna being
told: Tune hands the result to the driver's callbacks, which write the trial's record in the run
directory (:mod:`search.study.records`; the trial had already ended its MLflow run), before the
search algorithm tells Optuna. Such a trial is RUNNING in Optuna and FINISHED in MLflow. Marking
it interrupted (as a trial that really was cut short) would leave the two disagreeing, and run it
again for nothing. So, before the trials left RUNNING are marked interrupted:

1. :func:`tell_from_records`: a trial RUNNING in Optuna whose record says how it ended is told
   that (COMPLETE with the record's objective values, or FAIL with its reason), and gets the user
   attribute ``reconciled``: the run directory's own record is the truth;
2. the rest are interrupted (:func:`search.study.rundir.fail_interrupted`) and run again, and
   :func:`end_interrupted_runs` ends their MLflow runs KILLED, whatever end a trial process gave
   them (a run FINISHED by a trial whose result never reached the driver), so MLflow says what
   Optuna says.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from search.study import records
from search.study.failures import INTERRUPTED_REASON
from search.tracking.names import TAG_FAIL_REASON, TAG_TRIAL_NUMBER, metric_key

if TYPE_CHECKING:
    import optuna

    from search.space import Objective
    from search.tracking.study_tracker import StudyTracker

logger = logging.getLogger(__name__)

#: user attribute of a trial told from its record on resume
RECONCILED = "reconciled"


def tell_from_records(
    study: optuna.Study, run_dir: Path, objectives: Sequence[Objective]
) -> list[int]:
    """Tell Optuna how each trial it holds RUNNING ended, from the run directory's record;
    returns the numbers told. A COMPLETE record without a value for every objective is left
    alone (the trial is interrupted and runs again)."""
    kept = records.read_all(run_dir)
    told = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = kept.get(trial.number)
        if record is None:
            continue
        if record.state == "COMPLETE":
            last: dict[str, tuple[int, float]] = {}
            for key, value, _, step in record.spool.metrics:
                if key not in last or step >= last[key][0]:
                    last[key] = (step, value)
            keys = [metric_key(o.metric) for o in objectives]
            if not all(k in last for k in keys):
                continue
            _mark(study, trial.number)
            study.tell(trial.number, [last[k][1] for k in keys], state=TrialState.COMPLETE)
        elif record.state == "FAIL":
            _mark(study, trial.number, fail_reason=record.fail_reason or "failed")
            study.tell(trial.number, state=TrialState.FAIL)
        else:
            continue
        told.append(trial.number)
    if told:
        logger.info("trials %s: told Optuna how they ended, from their records", told)
    return told


def _mark(study: optuna.Study, number: int, *, fail_reason: str | None = None) -> None:
    """Set :data:`RECONCILED` (and ``fail_reason``) on a RUNNING trial, through the storage
    (``optuna.Study`` sets user attributes only from inside a trial; the same private
    ``_storage`` use as :func:`search.study.rundir.fail_interrupted`)."""
    store: optuna.storages.BaseStorage = study._storage
    trial_id = store.get_trial_id_from_study_id_trial_number(
        store.get_study_id_from_name(study.study_name), number
    )
    store.set_trial_user_attr(trial_id, RECONCILED, True)
    if fail_reason is not None:
        store.set_trial_user_attr(trial_id, "fail_reason", fail_reason)


def end_interrupted_runs(tracker: StudyTracker, numbers: Sequence[int]) -> int:
    """End every MLflow trial run of the interrupted trials ``numbers`` KILLED (with
    ``fail_reason``), whatever status it has; returns how many changed."""
    wanted = {str(n) for n in numbers}
    changed = 0
    for run in tracker.children():
        if run.data.tags.get(TAG_TRIAL_NUMBER) in wanted and run.info.status != "KILLED":
            tracker.client.set_tag(run.info.run_id, TAG_FAIL_REASON, INTERRUPTED_REASON)
            tracker.client.set_terminated(run.info.run_id, status="KILLED")
            changed += 1
    return changed
