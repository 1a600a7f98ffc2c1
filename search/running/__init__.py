"""What ``search/run.py`` does, one module per stage (the order of its module docstring):

- :mod:`~search.running.plan`: the :class:`~search.running.plan.Plan` that ``prepare`` builds
  from the checked input, the checks it calls, the exit statuses and the resume command;
- :mod:`~search.running.opening`: the Optuna study (created or resumed, the driver's claim on a
  shared one) and the MLflow parent run, and what a resume records before any trial;
- :mod:`~search.running.references`: the base recipe's reference models, trained as parallel Ray
  tasks, checked above chance and shipped to the trials;
- :mod:`~search.running.session`: Ray, the concurrency cap and the Tune session of the trials,
  Ctrl-C included;
- :mod:`~search.running.stopping` (and its Tune callback :mod:`~search.running.stop_check`):
  SIGTERM stopped like Ctrl-C, a second signal ending at once, a dead raylet or GCS stopping the
  study with its trials interrupted; :mod:`~search.running.disk_full`: a full disk said in one
  line;
- :mod:`~search.running.ending`: the Pareto front CSV, MLflow brought up to date, the report and
  what to print.
"""
