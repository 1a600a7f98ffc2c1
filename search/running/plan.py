"""The plan of one ``search/run.py`` invocation: what ``prepare`` checked (before anything
starts), the checks it calls, the exit statuses and the resume command every stop prints."""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch

from pptp.errors import ConfigError
from search.study import rundir
from search.study.shared_study import RUN_ATTR, open_storage, read_run
from search.tracking.uris import redact

if TYPE_CHECKING:
    import argparse

    import optuna

    from search.space import Space
    from search.study.lock import RunLock
    from search.study.shared_study import DriverClaim

EXIT_STOPPED, EXIT_TRACKING_INCOMPLETE, EXIT_INTERRUPTED = 1, 3, 130


@dataclasses.dataclass
class Plan:
    args: argparse.Namespace  # search/run.py's options
    space: Space
    run_dir: Path
    tracking_uri: str
    n_trials: int
    state: rundir.RunState | None  # None for a new run
    seeded: list[dict[str, Any]]  # first trials from study.localization (running/steering.py)
    lock: RunLock  # held
    verbosity: int = 0
    storage_url: str | None = None  # --storage (or the run's): the study in a shared database
    claim: DriverClaim | None = None  # held while the driver runs (shared database)
    discard: bool = False  # a failed start: remove the run directory once the lock is released

    def say(self, line: str) -> None:
        """A progress line (not with --quiet)."""
        if self.verbosity >= 0:
            print(line, flush=True)

    def storage(self) -> optuna.storages.RDBStorage:
        """The study's Optuna storage: the shared database, or the run directory's study.db."""
        return rundir.storage(self.run_dir, uri=self.storage_url)

    def resume_hint(self) -> str:
        """The command that resumes this run (and, with a shared database, from elsewhere)."""
        space_path = shlex.quote(str(self.space.path))
        command = (
            f"python search/run.py --space {space_path} "
            f"--resume --output {shlex.quote(str(self.run_dir))}"
        )
        if not self.storage_url:
            return f"Resume with:\n  {command}"
        storage = shlex.quote(redact(self.storage_url))
        return (
            f"Resume with:\n  {command} --storage {storage}\nor, from another machine:\n  "
            f"python search/run.py --space {space_path} --resume "
            f"--storage {storage} --output <a new run directory>"
        )


def shared_state(storage_url: str | None, space: Space) -> rundir.RunState:
    """The run state a study in a shared database records (:mod:`search.study.shared_study`), for a
    driver that resumes it from a new run directory (another machine)."""
    assert storage_url is not None
    name = space.study.name
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    except KeyError:
        raise ConfigError(
            f"--resume: {redact(storage_url)} holds no study named {name!r}; start it without "
            "--resume"
        ) from None
    shared = read_run(study)
    if shared is None:
        raise ConfigError(
            f"--resume: study {name!r} in {redact(storage_url)} was not started by search/run.py "
            f"(no {RUN_ATTR} user attribute); resume it from its own run directory"
        )
    return rundir.RunState(
        study_name=name,
        space_path=str(space.path),
        space_sha256=shared.space_sha256,
        tracking_uri=shared.tracking_uri,
        parent_run_id=shared.parent_run_id,
        experiment_id=shared.experiment_id,
        cwd=str(Path.cwd()),
        storage=storage_url,
    )


def check_local_resources(space: Space) -> None:
    """:class:`~pptp.errors.ConfigError` when one trial asks for more CPUs or GPUs than this
    machine has (a local Ray could never schedule it)."""
    res, key = space.study.resources, f"{space.path}: study.resources"
    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    if res.cpus > cpus:
        raise ConfigError(f"{key}.cpus = {res.cpus:g} per trial, but this machine has {cpus} CPUs")
    if res.gpus > gpus:
        raise ConfigError(
            f"{key}.gpus = {res.gpus:g} per trial, but this machine has {gpus} GPUs; set "
            "study.resources.gpus: 0 to run on the CPU, or --address to join a GPU cluster"
        )
