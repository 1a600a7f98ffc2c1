"""What ``search/compare.py`` does, one module per step:

- :mod:`~search.study.points`: every completed trial as a :class:`~.points.Point`
  (its values per training seed) and its kind (undefended, baseline, pptp, combined);
- :mod:`~search.comparing.fronts`: fronts, hypervolumes and the bootstrap over training seeds;
- :mod:`~search.comparing.output`: the table, the CSV and the figure.
"""
