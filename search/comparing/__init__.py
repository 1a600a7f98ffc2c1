"""What ``search/compare.py`` does, one module per step:

- :mod:`~search.comparing.runs`: the completed trials of the run directories
  (:class:`~search.study.trials.FinishedTrial`: values per training seed, kind) and their axes;
- :mod:`~search.comparing.fronts`: fronts, hypervolumes and the bootstrap over training seeds;
- :mod:`~search.comparing.output`: the table, the CSV and the figure.
"""
