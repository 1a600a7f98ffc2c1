"""A search's run directory: the Optuna study's storage and what a resume needs.

Layout::

    runs/<study>/<YYYYmmdd-HHMMSS>/
        study.db            Optuna's SQLite storage (every finished trial survives kill -9);
                            absent when the study lives in a shared database (--storage)
        study.backup.db     its last good copy, taken after every ended trial (search.study.backup)
        state.json          study name, space path and hash, tracking URI, MLflow parent run,
                            the Optuna storage URL when it is not study.db
        space.yaml          the resolved space
        pareto_front.csv    the front, rewritten at the end of every session
        report.html         the study's report page (search.reporting; REPORT_FILE)
        trials/             every ended trial's record, MLflow run included (search.study.records)
        driver.lock/.json   the one driver's lock and who holds it (search.study.lock)
        ray/                Ray Tune's own experiment folder

``--resume`` reopens the newest run of the study (or the one ``--output`` names): trials left
RUNNING by a killed driver are marked FAIL with ``interrupted`` set, and do not count; those that
were enqueued (the undefended baseline, the first PPTP points: user attribute ``enqueued``) are
enqueued again, so a resumed study never loses its baseline.

With ``--storage URL`` the Optuna study lives in a shared database
(:mod:`search.study.shared_study`)
and the run directory is only this machine's view of it: ``--resume --storage URL`` on another
machine, with a new (or no) ``--output``, starts a run directory of its own from what the study
records (:func:`resume_target`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from pptp import imports
from pptp.config import TrialConfig
from pptp.errors import ConfigError
from pptp.fileio import atomic_write
from search.study.failures import INTERRUPTED_REASON
from search.study.lock import LOCK_FILE

RUNS = Path("runs")
#: the report page in a run directory (search/report.py writes it)
REPORT_FILE = "report.html"

INTERRUPTED = "interrupted"
#: user attribute of trials the driver enqueued (space's study.enqueue, a localisation's picks)
ENQUEUED = "enqueued"
#: user attribute of a re-enqueued trial: the number of the interrupted trial it replaces
REQUEUED_FROM = "requeued_from"
#: user attribute (and trial config key) of a reused proposal: the finished trial it repeats
DUPLICATE_OF = "duplicate_of"


@dataclass(frozen=True)
class RunState:
    study_name: str
    space_path: str
    space_sha256: str
    tracking_uri: str
    parent_run_id: str | None = None
    experiment_id: str | None = None
    cwd: str | None = None  # where the driver ran: relative data/bank folders resolve against it
    storage: str | None = None  # the Optuna storage URL (--storage); None: study.db here


def absolute_paths(cfg: TrialConfig, *, cwd: str | Path | None = None) -> dict[str, str]:
    """``data.data_dir`` and ``attack.bank_dir`` made absolute (against ``cwd``, default the
    current directory): Ray runs trials in other working directories, and ``search/pick.py``
    may run from another one than the search did. A user's model or loader named by a relative
    file path (``model.name: models/mynet.py:build``) is made absolute too (returned only then,
    so a searched ``model.name`` is not overridden)."""
    root = Path(cwd) if cwd is not None else Path.cwd()
    out = {
        "data.data_dir": str((root / cfg.data.data_dir).resolve()),
        "attack.bank_dir": str((root / cfg.attack.bank_dir).resolve()),
    }
    for key, name in (("model.name", cfg.model.name), ("data.name", cfg.data.name)):
        if imports.absolute(name, root) != name:
            out[key] = imports.absolute(name, root)
    if cfg.model.init is not None:
        out["model.init"] = str((root / cfg.model.init).expanduser().resolve())
    return out


def new_run_dir(study_name: str, output: str | None) -> Path:
    """``--output`` or ``runs/<study>/<timestamp>``, created; the caller takes its lock, then
    :func:`refuse_existing_study` (so that a live driver there is named, not just refused)."""
    path = Path(output) if output else RUNS / study_name / time.strftime("%Y%m%d-%H%M%S")
    if output:
        check_output(path)
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: it holds a study, or the lock every driver takes in
    its run directory first (a run stopped before its study was opened)."""
    return has_study(path) or (path / LOCK_FILE).exists()


def check_output(path: Path) -> None:
    """Refuse ``--output`` when it is a file, or an existing folder that is not empty and not a
    run directory (``--output /etc``, a home folder): the run writes and replaces files there."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--output {path}: is a file; give a folder for the run directory")
    if path.is_dir() and any(path.iterdir()) and not is_run_dir(path):
        raise ConfigError(
            f"--output {path}: is a folder that is neither empty nor a run directory (no "
            f"study.db, state.json or {LOCK_FILE}); give a new or empty folder"
        )


def has_study(path: Path) -> bool:
    """Whether ``path`` is a run directory of a study: its ``study.db``, or the ``state.json`` of
    a study kept in a shared database."""
    return (path / "study.db").exists() or (path / "state.json").exists()


def refuse_existing_study(path: Path) -> None:
    """ConfigError when ``path`` already holds a study (a new run must not write into it)."""
    if has_study(path):
        raise ConfigError(
            f"{path} already holds a study; pass --resume to continue it, or another --output"
        )


def existing_run_dir(study_name: str, output: str | None) -> Path:
    """The run to resume: ``--output``, or the newest under ``runs/<study>/``."""
    if output:
        path = Path(output)
        if not has_study(path):
            raise ConfigError(
                f"--resume: {path} holds no study (no study.db or state.json); start it without "
                "--resume, or give --storage to resume a study kept in a database"
            )
        return path.resolve()
    candidates = _local_runs(study_name)
    if not candidates:
        raise ConfigError(
            f"--resume: no earlier run of study {study_name!r} under "
            f"{RUNS / study_name}; start it without --resume"
        )
    return candidates[-1]


def _local_runs(study_name: str) -> list[Path]:
    """This machine's run directories of ``study_name``, oldest first (their names are times)."""
    return sorted(p.resolve() for p in (RUNS / study_name).glob("*") if has_study(p))


def resume_target(study_name: str, output: str | None, storage_url: str | None) -> Path | None:
    """The run directory ``--resume`` continues, or None when ``--resume --storage`` must start a
    new one here (another machine's study: :func:`new_run_dir`, state from the database).

    Without ``storage_url`` it is :func:`existing_run_dir`. With it: ``--output`` when that holds
    a run, else None (a new run directory there); without ``--output``, the newest run here
    whose state names the same storage, else None (a new ``runs/<study>/<time>``).
    """
    if storage_url is None:
        return existing_run_dir(study_name, output)
    if output:
        return Path(output).resolve() if has_study(Path(output)) else None
    for path in reversed(_local_runs(study_name)):
        try:
            if read_state(path).storage == storage_url:
                return path
        except ConfigError:
            continue
    return None


def storage(run_dir: Path, *, uri: str | None = None) -> optuna.storages.RDBStorage:
    """The run's Optuna storage: ``uri``, else the shared database ``state.json`` names, else the
    run directory's ``study.db``."""
    chosen = uri
    if chosen is None and (run_dir / "state.json").exists():
        chosen = read_state(run_dir).storage
    if chosen:
        from search.study.shared_study import open_storage

        return open_storage(chosen)
    return optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'study.db'}")


def read_state(run_dir: Path) -> RunState:
    try:
        return RunState(**json.loads((run_dir / "state.json").read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"{run_dir / 'state.json'} is missing or unreadable ({error})") from None


def write_state(run_dir: Path, state: RunState) -> None:
    """Atomically and durably (a killed driver never leaves half a state file)."""
    atomic_write(run_dir / "state.json", json.dumps(asdict(state), indent=1) + "\n")


def enqueue(study: optuna.Study, params: Mapping[str, Any], **attrs: Any) -> None:
    """``study.enqueue_trial(params)`` marked :data:`ENQUEUED` (plus ``attrs``), so that a
    resume can tell the driver's first trials from the sampler's (:func:`fail_interrupted`)."""
    study.enqueue_trial(dict(params), user_attrs={ENQUEUED: True, **attrs}, skip_if_exists=True)


def fail_interrupted(study: optuna.Study) -> list[int]:
    """Mark trials a killed driver left RUNNING as FAIL (``interrupted``); returns their numbers.

    An interrupted trial the driver had enqueued (:func:`enqueue`) is enqueued again with the same
    parameters (``requeued_from`` names it; once, even if a resume is itself interrupted), so
    the baseline and the first points always run. The sampler's own trials are not: it proposes
    again.

    The state goes through the public ``study.tell``. The user attributes need the study's
    storage, which ``optuna.Study`` exposes only as the private ``_storage`` (used through the
    public :class:`optuna.storages.BaseStorage` methods); ``pyproject.toml`` pins the Optuna
    versions this was checked against and ``tests/test_private_apis.py`` fails when it changes.
    """
    numbers = []
    store: optuna.storages.BaseStorage = study._storage
    study_id = store.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(ENQUEUED):
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if not any(w.user_attrs.get(REQUEUED_FROM) == t.number for w in waiting):
                study.enqueue_trial(t.params, user_attrs={ENQUEUED: True, REQUEUED_FROM: t.number})
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, t.number)
        store.set_trial_user_attr(trial_id, INTERRUPTED, True)
        store.set_trial_user_attr(trial_id, "fail_reason", INTERRUPTED_REASON)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        numbers.append(t.number)
    return numbers


def interrupted_numbers(study: optuna.Study) -> list[int]:
    """The trials marked interrupted (:func:`fail_interrupted`), by number."""
    return [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(INTERRUPTED)]


def finished_count(study: optuna.Study) -> int:
    """Trials that count toward ``n_trials``: distinct trainings that ended, complete, stopped
    early by the multi-fidelity scheduler (PRUNED) or failed on their own (not interrupted); a
    reused repeat (user attribute ``duplicate_of``) is not one."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(DUPLICATE_OF) is None
        and (
            t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED))
        )
    )
