"""Ray Tune's ``OptunaSearch`` with what a multi-objective privacy search needs on top.

``OptunaSearch`` (ray.tune.search.optuna) asks Optuna for each trial's parameters and tells it the
final objective values. It does not pass constraints to Optuna, does not record why a trial
failed, and does not tell the trial its Optuna number. :class:`StudySearch` adds exactly that:

- the trial's config carries ``trial_number`` (the Optuna trial number: MLflow names runs by it);
- on completion, each constraint of the space reaches Optuna through ``Trial.set_constraint``
  (Optuna 5.0's per-trial route; samplers' ``constraints_func`` is deprecated), so NSGA-II, TPE
  and GP sample with feasibility in mind and ``best_trials`` ranks feasible trials first;
- a trial that reported ``failed`` (it caught its own exception, NaN or out-of-memory), or whose
  objective is NaN, is told as FAIL with a ``fail_reason`` user attribute;
- a trial whose process died (Tune calls ``on_trial_complete(error=True)`` without the error) is
  told only when the driver knows why: :meth:`StudySearch.fail` is called with the reason read
  from Tune's trial error (:mod:`search.running.bookkeeping`), and :meth:`StudySearch.fail_awaiting`
  tells any left over with a generic reason;
- a config the study already finished is not trained again: :meth:`StudySearch.suggest` marks it
  :data:`DUPLICATE_OF` the finished trial and hands the trial that trial's results
  (:data:`REUSE`), as Optuna users do for duplicate suggestions; the duplicate is a COMPLETE trial
  with the same values and the user attribute ``duplicate_of``. It does not use up a training:
  the searcher stops proposing (Tune's ``Searcher.FINISHED``) once ``budget`` distinct trainings
  were proposed, and it steers a sampler that keeps repeating toward random points
  (:mod:`search.running.budget`);
- with ``shares`` (``study.budget``), a proposal is pinned to a family that is behind its share
  (:class:`search.running.budget.FamilyShares`);
- with ``study.fidelity``, each rung's objective values are kept as the user attribute
  ``rung_values`` (``{epoch: {metric: value}}``), and a trial the scheduler stopped
  (:mod:`search.running.scheduler`; Tune completes it with its last rung's result) is told as
  PRUNED, never COMPLETE, with that rung's values as user attributes and ``stopped_at_epoch``;
- a few result fields (MLflow run id, protected groups, headline metrics, the objectives' and
  constraints' spread over seeds ``<metric>_sd`` and their ``per_seed`` values) are stored as user
  attributes, so the Pareto table can be built from the Optuna storage alone.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from pptp.metric_catalogue import recorded_keys
from pptp.treatment import FLAT_ATTRS, TREATMENT_ATTR
from search.running.budget import STEERED, FamilyShares, RepeatCounter, random_point
from search.running.scheduler import FINAL, RUNG, RUNG_VALUES, STOPPED_AT
from search.space import Constraint
from search.study.rundir import DUPLICATE_OF as DUPLICATE_OF

logger = logging.getLogger(__name__)

#: result fields copied to the Optuna trial's user attributes besides the catalogue's recorded
#: metrics (:func:`pptp.metric_catalogue.recorded_keys`, read when a searcher is made): what the
#: trial was (its MLflow run, what it trained with, its time and seeds)
RECORDED = (
    "mlflow_run_id",
    TREATMENT_ATTR,
    *FLAT_ATTRS,
    "seconds",
    "repeats",
    DUPLICATE_OF,
)
#: recorded fields that are mappings: a trial reports them as JSON text (Tune flattens nested
#: result dicts), stored on the Optuna trial as the mapping
JSON_ATTRS = (TREATMENT_ATTR,)
TRIAL_NUMBER = "trial_number"
#: config key DUPLICATE_OF (search.study.rundir): the finished trial a reused proposal repeats
#: config key: that trial's results (JSON), which the duplicate reports instead of training
REUSE = "reuse"
#: result key: the trial's MLflow run as JSON (search.study.records), kept by the driver
RECORD = "record"
#: result key (JSON) and user attribute (mapping): ``{metric: [value per training seed]}``
PER_SEED = "per_seed"
GENERIC_CRASH = "the trial's process crashed (killed for memory, or an error outside the trial)"


class StudySearch(OptunaSearch):
    """``OptunaSearch`` plus constraints, failure reasons, duplicates and trial numbers (see
    module doc). ``wanted``: metrics besides the objectives whose values (and spread) are kept
    as user attributes (the constraints' metrics: a duplicate needs them). ``budget``: distinct
    trainings to propose (None: no limit, Tune's ``num_samples`` decides); ``shares``: the
    space's ``study.budget``; ``seed``: the random points' seed."""

    def __init__(
        self,
        *args: Any,
        constraints: Sequence[Constraint] = (),
        wanted: Sequence[str] = (),
        budget: int | None = None,
        shares: FamilyShares | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._budget = budget
        self._shares = shares
        self._point_seed = seed
        self._trainings = 0  # distinct trainings proposed by this searcher
        self._repeats = RepeatCounter()
        self._constraints = tuple(constraints)
        self._told: set[str] = set()  # Tune trial ids already told to Optuna
        self._awaiting: set[str] = set()  # errored Tune trials waiting for their reason
        objectives = self.metric if isinstance(self.metric, list) else [self.metric]
        self._objectives = tuple(objectives)
        names = [*objectives, *(c.metric for c in self._constraints), *wanted]
        names += recorded_keys()
        self._recorded = tuple(dict.fromkeys([*RECORDED, *names, *(f"{m}_sd" for m in names)]))

    def _optuna_trial(self, trial_id: str) -> optuna.Trial | None:
        """The Optuna trial ``super().suggest`` asked for ``trial_id``.

        ``OptunaSearch._ot_trials`` is private: Ray has no public route from a Tune trial to its
        Optuna trial. ``pyproject.toml`` pins the Ray versions this was checked against and
        ``tests/test_private_apis.py`` fails, naming it, when it changes.
        """
        trials: dict[str, optuna.Trial] = self._ot_trials
        return trials.get(trial_id)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self._ot_trials:
            if self._budget is not None and self._trainings >= self._budget:
                return Searcher.FINISHED  # type: ignore[return-value]  # Ray's documented end
            if self._repeats.exhausted:
                logger.warning(
                    "%d proposals in a row repeated finished configs, random points included: "
                    "the space has no unseen config left to find; the study ends here",
                    self._repeats.in_a_row,
                )
                return Searcher.FINISHED  # type: ignore[return-value]
            self._steer()
        params = super().suggest(trial_id)
        ot_trial = self._optuna_trial(trial_id)
        if params is None or ot_trial is None:
            return params
        out = {**params, TRIAL_NUMBER: ot_trial.number}
        twin = finished_twin(ot_trial)
        self._repeats.saw(repeat=twin is not None)
        if twin is None:
            self._trainings += 1
        else:
            logger.info(
                "trial %d repeats the config of finished trial %d: its results are reused",
                ot_trial.number,
                twin.number,
            )
            out[DUPLICATE_OF] = twin.number
            ot_trial.set_user_attr(DUPLICATE_OF, twin.number)  # not a training, from now on
            out[REUSE] = json.dumps(self._reused(twin))
        return out

    def _steer(self) -> None:
        """Enqueue the next proposal's pinned keys: its family when one is behind its share, a
        random point after repeats (:mod:`search.running.budget`). Nothing while first trials
        the space enqueued are still waiting: they run first."""
        study = self._ot_study
        assert study is not None  # set up before the first suggest (OptunaSearch)
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return
        pinned = self._shares.pin(trials) if self._shares is not None else None
        params: dict[str, Any] = {}
        why = []
        if self._repeats.steer and isinstance(self._space, dict):
            params = random_point(self._space, self._point_seed + len(trials))
            why.append(f"random point after {self._repeats.in_a_row} repeats in a row")
        if pinned is not None:
            family, keys = pinned
            params.update(keys)
            why.append(f"budget: {family} behind its share")
        if params:
            study.enqueue_trial(params, user_attrs={STEERED: "; ".join(why)})

    def _reused(self, twin: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """What a duplicate of ``twin`` reports: its objective values and recorded attributes."""
        objectives = self.metric if isinstance(self.metric, list) else [self.metric]
        out: dict[str, Any] = {
            k: v
            for k, v in twin.user_attrs.items()
            if k in self._recorded and k not in ("mlflow_run_id", "seconds", DUPLICATE_OF)
        }
        out.update(dict(zip(objectives, twin.values or [], strict=False)))
        for key in (PER_SEED, *JSON_ATTRS):
            if isinstance(twin.user_attrs.get(key), dict):
                out[key] = json.dumps(twin.user_attrs[key])
        return out

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Keep a rung's values (multi-objective Optuna trials take no intermediate values)."""
        ot_trial = self._optuna_trial(trial_id)
        if ot_trial is not None:
            self._keep_rung(ot_trial, result)

    def _keep_rung(self, ot_trial: optuna.Trial, result: dict[str, Any]) -> None:
        epoch = result.get(RUNG)
        if epoch is None or result.get(FINAL, 1):
            return
        kept = [*self._objectives, *(c.metric for c in self._constraints)]
        rungs = dict(ot_trial.user_attrs.get(RUNG_VALUES) or {})
        rungs[str(int(epoch))] = {m: result[m] for m in kept if result.get(m) is not None}
        ot_trial.set_user_attr(RUNG_VALUES, rungs)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        ot_trial = self._optuna_trial(trial_id)
        if trial_id in self._told or ot_trial is None:
            return super().on_trial_complete(trial_id, result, error)  # Ray warns or refuses
        result = result or {}
        if not error and result.get(RUNG) is not None and not result.get(FINAL, 1):
            return self._pruned(trial_id, ot_trial, result)
        if error and not result.get("failed"):
            # the process died: Tune gives no reason here; the driver's callback reads it from
            # Tune's trial error and calls fail() (fail_awaiting() covers any it did not)
            self._awaiting.add(trial_id)
            return None
        self._told.add(trial_id)
        reason = failure_reason(result, self.metric, error=error)
        for key in self._recorded:
            value = result.get(key)
            if value is not None:  # mappings travel through Tune as JSON text
                ot_trial.set_user_attr(key, json.loads(value) if key in JSON_ATTRS else value)
        per_seed = result.get(PER_SEED)
        if isinstance(per_seed, str):
            ot_trial.set_user_attr(PER_SEED, json.loads(per_seed))
        if reason is not None:
            ot_trial.set_user_attr("fail_reason", reason)
            logger.info("trial %d failed: %s", ot_trial.number, reason)
            # no objective values with error=True: OptunaSearch tells Optuna FAIL
            return super().on_trial_complete(trial_id, None, error=True)
        for constraint in self._constraints:
            ot_trial.set_constraint(constraint.name, constraint.value(result))
        return super().on_trial_complete(trial_id, result, error)

    def _pruned(self, trial_id: str, ot_trial: optuna.Trial, result: dict[str, Any]) -> None:
        """A trial the scheduler stopped at a rung: PRUNED, its last rung's values kept (Tune
        does not pass a result that stops a trial to ``on_trial_result``)."""
        self._told.add(trial_id)
        self._keep_rung(ot_trial, result)
        for key in self._recorded:
            value = result.get(key)
            if value is not None:
                ot_trial.set_user_attr(key, json.loads(value) if key in JSON_ATTRS else value)
        ot_trial.set_user_attr(STOPPED_AT, int(result[RUNG]))
        for constraint in self._constraints:
            ot_trial.set_constraint(constraint.name, constraint.value(result))
        logger.info("trial %d stopped at epoch %d", ot_trial.number, int(result[RUNG]))
        super().on_trial_complete(trial_id, None, error=False)  # no values: Optuna PRUNED

    def fail(self, trial_id: str, reason: str) -> int | None:
        """Tell Optuna FAIL with ``reason`` for a Tune trial whose process died; returns its
        Optuna number (None when it is unknown or was already told)."""
        ot_trial = self._optuna_trial(trial_id)
        if ot_trial is None or trial_id in self._told:
            return None
        self._awaiting.discard(trial_id)
        self._told.add(trial_id)
        ot_trial.set_user_attr("fail_reason", reason)
        logger.info("trial %d failed: %s", ot_trial.number, reason)
        super().on_trial_complete(trial_id, None, error=True)
        return int(ot_trial.number)

    def fail_awaiting(self, reason: str = GENERIC_CRASH) -> list[int]:
        """Tell every errored trial still waiting for its reason; returns their numbers."""
        numbers = [self.fail(trial_id, reason) for trial_id in sorted(self._awaiting)]
        return [n for n in numbers if n is not None]


def finished_twin(ot_trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """The first COMPLETE trial of ``ot_trial``'s study with exactly its parameters, if any."""
    params = ot_trial.params
    for t in ot_trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != ot_trial.number and t.params == params:
            return t
    return None


def failure_reason(result: dict[str, Any], metrics: Any, *, error: bool) -> str | None:
    """Why a trial counts as failed, or None when it completed with finite objectives."""
    if result.get("failed"):
        return str(result.get("fail_reason") or "the trial reported a failure")
    if error:
        return GENERIC_CRASH
    for metric in metrics if isinstance(metrics, list) else [metrics]:
        value = result.get(metric)
        if value is None:
            return f"objective {metric!r} was not reported"
        if not math.isfinite(float(value)):
            return f"objective {metric!r} is {value}"
    return None
