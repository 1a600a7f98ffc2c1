"""A user's code goes with the trials: the files and local packages a space names, shipped to
every Ray node through the job's runtime environment (``docs/stack-notes.md``).

A space may name a model factory or a data loader by import path (:mod:`pptp.imports`):

- ``path/to/file.py:factory``: the file is shipped as a ``py_modules`` entry (Ray uploads it and
  puts it on the workers' ``PYTHONPATH`` under its stem, ``file``); a worker on a node where the
  path does not exist imports that shipped copy (:func:`pptp.imports.resolve`);
- ``package.module:factory``: the top-level package's folder is shipped the same way, unless it
  is installed (under ``site-packages``), where every node's environment is expected to have it.

``ray.init(runtime_env={"py_modules": [...]})`` applies to every task and actor of the job: the
reference tasks and the trials alike. Nothing is copied by hand.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pptp import imports
from pptp.config import TrialConfig

_INSTALLED = ("site-packages", "dist-packages")


def user_code_paths(names: Iterable[str]) -> list[str]:
    """The local files and package folders the import paths among ``names`` need, sorted."""
    paths: set[str] = set()
    for name in names:
        if not imports.is_import_path(name):
            continue
        where, _ = imports.split(name)
        if imports.is_file_path(name):
            paths.add(str(Path(where).expanduser().resolve()))
            continue
        top = where.split(".")[0]
        spec = importlib.util.find_spec(top)
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue
        origin = Path(spec.origin)
        local = origin.parent if spec.submodule_search_locations else origin
        if not any(part in _INSTALLED for part in local.parts):
            paths.add(str(local))
    return sorted(paths)


def code_names(base: TrialConfig, choices: Iterable[Any] = ()) -> list[str]:
    """``model.name`` and ``data.name`` of the base config, and the searched ``model.name``
    choices."""
    return [base.model.name, base.data.name, *(c for c in choices if isinstance(c, str))]


def runtime_env(names: Iterable[str]) -> dict[str, Any] | None:
    """``{"py_modules": [...]}`` for the user code among ``names``, or None when there is none."""
    paths = user_code_paths(names)
    return {"py_modules": paths} if paths else None
