"""What ``search/pick.py`` does, one module per step:

- :mod:`~search.study.reader`: open a run directory read-only; the candidate trials;
- :mod:`~search.picking.rules`: bounds and the rules that choose one candidate (pure);
- :mod:`~search.picking.audit`: re-train on new seeds, the adaptive audit, the side-by-side
  comparison with the gap stated;
- :mod:`~search.picking.export`: the picked config as a space file;
- :mod:`~search.picking.model_registry`: the final model logged and registered under an alias.
"""
