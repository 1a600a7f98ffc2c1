"""Installs the fault suite's injections into every Python process that starts with this folder
on ``PYTHONPATH`` and ``PPTP_TEST_FAULT`` set: the study's driver and its Ray workers, which
inherit both from the driver (:func:`pptp_faults.fault_env` sets them for a test's subprocess).

Python imports ``sitecustomize`` at start-up. This one imports nothing heavy: it puts a finder
first on ``sys.meta_path`` that, when ``search.running.trainable`` (in a worker) or
``search.study.records`` (in the driver) is imported, lets the module load as usual and then
wraps its functions (:func:`pptp_faults.install`, :func:`pptp_faults.install_records`). The
product code knows nothing of it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType

TARGETS = ("search.running.trainable", "search.study.records")


class _PatchTrainable(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object, target: object = None) -> object:
        if name not in TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)  # type: ignore[arg-type]
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            from pptp_faults import install, install_records

            (install if name == TARGETS[0] else install_records)(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("PPTP_TEST_FAULT"):
    sys.meta_path.insert(0, _PatchTrainable())
