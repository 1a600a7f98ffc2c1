"""MLflow glue for the search: one experiment per study, one parent run per study,
one nested child run per trial.

- :mod:`~search.tracking.uris`: which store (:func:`resolve_tracking_uri`) and whether it can be
  used (:func:`check_tracking`), before anything starts;
- :mod:`~search.tracking.store`: names MLflow accepts (:func:`metric_key`), experiments,
  batched params/metrics/tags, the git commit: what every writer shares;
- :mod:`~search.tracking.study_tracker`: the study's parent run (:class:`StudyTracker`), the
  Pareto front and the trial table on it;
- :mod:`~search.tracking.trial_tracker`: a trial's child run (:class:`TrialTracker`) and its
  artifacts;
- :mod:`~search.tracking.plots`: the Pareto-front picture.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real imports, for type checkers
    from search.tracking.plots import plot_front
    from search.tracking.store import (
        METRIC_KEY_REPLACEMENTS,
        TAG_FAIL_REASON,
        TAG_KIND,
        TAG_PARENT,
        TAG_PARETO,
        TAG_STUDY,
        TAG_TRIAL_NUMBER,
        experiment_id,
        git_commit,
        log_metrics,
        log_params,
        metric_key,
        set_tags,
    )
    from search.tracking.study_tracker import StudyTracker
    from search.tracking.trial_tracker import (
        FAIL_REASON_CHARS,
        TrialTracker,
        write_exposure,
        write_trial_artifacts,
    )
    from search.tracking.uris import (
        REPO_ROOT,
        TrackingUnavailable,
        artifact_location,
        check_tracking,
        default_tracking_uri,
        resolve_tracking_uri,
    )

#: public name -> the submodule that defines it; imported on first use (PEP 562), so that
#: ``import search.tracking.uris`` (every command's first check) does not import MLflow's
#: SQL store and matplotlib
_WHERE = {
    "FAIL_REASON_CHARS": "search.tracking.trial_tracker",
    "METRIC_KEY_REPLACEMENTS": "search.tracking.store",
    "REPO_ROOT": "search.tracking.uris",
    "StudyTracker": "search.tracking.study_tracker",
    "TAG_FAIL_REASON": "search.tracking.store",
    "TAG_KIND": "search.tracking.store",
    "TAG_PARENT": "search.tracking.store",
    "TAG_PARETO": "search.tracking.store",
    "TAG_STUDY": "search.tracking.store",
    "TAG_TRIAL_NUMBER": "search.tracking.store",
    "TrackingUnavailable": "search.tracking.uris",
    "TrialTracker": "search.tracking.trial_tracker",
    "artifact_location": "search.tracking.uris",
    "check_tracking": "search.tracking.uris",
    "default_tracking_uri": "search.tracking.uris",
    "experiment_id": "search.tracking.store",
    "git_commit": "search.tracking.store",
    "log_metrics": "search.tracking.store",
    "log_params": "search.tracking.store",
    "metric_key": "search.tracking.store",
    "plot_front": "search.tracking.plots",
    "resolve_tracking_uri": "search.tracking.uris",
    "set_tags": "search.tracking.store",
    "write_exposure": "search.tracking.trial_tracker",
    "write_trial_artifacts": "search.tracking.trial_tracker",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "FAIL_REASON_CHARS",
    "METRIC_KEY_REPLACEMENTS",
    "REPO_ROOT",
    "TAG_FAIL_REASON",
    "TAG_KIND",
    "TAG_PARENT",
    "TAG_PARETO",
    "TAG_STUDY",
    "TAG_TRIAL_NUMBER",
    "StudyTracker",
    "TrackingUnavailable",
    "TrialTracker",
    "artifact_location",
    "check_tracking",
    "default_tracking_uri",
    "experiment_id",
    "git_commit",
    "log_metrics",
    "log_params",
    "metric_key",
    "plot_front",
    "resolve_tracking_uri",
    "set_tags",
    "write_exposure",
    "write_trial_artifacts",
]
