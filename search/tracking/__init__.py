"""MLflow glue for the search: one experiment per study, one parent run per study,
one nested child run per trial. Import from the module that holds a name:

- :mod:`~search.tracking.uris`: which store (``resolve_tracking_uri``) and whether it can be
  used (``check_tracking``), before anything starts; no MLflow import;
- :mod:`~search.tracking.names`: the tag keys and the metric keys MLflow accepts
  (``metric_key``); no MLflow import;
- :mod:`~search.tracking.store`: experiments, batched params/metrics/tags, the git commit: what
  every writer shares;
- :mod:`~search.tracking.study_tracker`: the study's parent run (``StudyTracker``), the Pareto
  front and the trial table on it;
- :mod:`~search.tracking.trial_tracker`: a trial's child run (``TrialTracker``) and its
  artifacts;
- :mod:`~search.tracking.spool`: what MLflow could not take, kept for ``--sync``;
- :mod:`~search.tracking.links`, :mod:`~search.tracking.saved_views`: UI addresses and the
  runs-table views;
- :mod:`~search.tracking.plots`: the Pareto-front picture.
"""
