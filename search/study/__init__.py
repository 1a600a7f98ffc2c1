"""What a run directory holds, read and written by every command.

- :mod:`~search.study.rundir`: the layout (``study.db``, ``state.json``, ``space.yaml``, ...),
  the saved state and the Optuna storage;
- :mod:`~search.study.lock`: one driver per run directory;
- :mod:`~search.study.shared_study`: the Optuna study in a shared database (``--storage``);
- :mod:`~search.study.records`: the record of every ended trial (``trials/trial-0007.json``);
- :mod:`~search.study.failures`: why a trial failed, in one line;
- :mod:`~search.study.reader`: a finished run directory opened read-only;
- :mod:`~search.study.trials`: a finished trial as every command sees it (name, kind, values);
- :mod:`~search.study.pareto`: the Pareto front as rows and as a table;
- :mod:`~search.study.naming`: a trial's planned name and its descriptions in MLflow.
"""
