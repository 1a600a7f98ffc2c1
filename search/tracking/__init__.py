"""MLflow glue for the search (DESIGN.md §5): one experiment per study, one parent run per study,
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
from search.tracking.study_tracker import FRONT_COLUMNS, StudyTracker
from search.tracking.trial_tracker import FAIL_REASON_CHARS, TrialTracker, write_trial_artifacts
from search.tracking.uris import (
    REPO_ROOT,
    TrackingUnavailable,
    artifact_location,
    check_tracking,
    default_tracking_uri,
    resolve_tracking_uri,
)

__all__ = [
    "FAIL_REASON_CHARS",
    "FRONT_COLUMNS",
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
    "write_trial_artifacts",
]
