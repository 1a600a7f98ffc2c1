"""What ``search/report.py`` writes, one module per step:

- :mod:`~search.reporting.inputs`: what the page shows, read once from the run directory and,
  when the store answers, the ROC arrays from MLflow (:func:`~search.reporting.inputs.gather`);
- :mod:`~search.reporting.figures`: the plotly figures (front, ROC, layer risk, Optuna's slices);
- :mod:`~search.reporting.page`: the self-contained HTML page (``report.html``).
"""
