"""A search's run directory: the Optuna study's storage and what a resume needs.

Layout::

    runs/<study>/<YYYYmmdd-HHMMSS>/
        study.db            Optuna's SQLite storage (every finished trial survives kill -9)
        state.json          study name, space path and hash, tracking URI, MLflow parent run
        space.yaml          the resolved space
        pareto_front.csv    the front, rewritten at the end of every session
        trials/             every ended trial's record, MLflow run included (search.records)
        driver.lock/.json   the one driver's lock and who holds it (search.lock)
        ray/                Ray Tune's own experiment folder

``--resume`` reopens the newest run of the study (or the one ``--output`` names): trials left
RUNNING by a killed driver are marked FAIL with ``interrupted`` set, and do not count; those that
were enqueued (the undefended baseline, the first PPTP points: user attribute ``enqueued``) are
enqueued again, so a resumed study never loses its baseline.
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

from pptp.config import TrialConfig
from pptp.errors import ConfigError
from pptp.fileio import atomic_write
from search.failures import INTERRUPTED_REASON

RUNS = Path("runs")
INTERRUPTED = "interrupted"
#: user attribute of trials the driver enqueued (space's study.enqueue, a localisation's picks)
ENQUEUED = "enqueued"
#: user attribute of a re-enqueued trial: the number of the interrupted trial it replaces
REQUEUED_FROM = "requeued_from"


@dataclass(frozen=True)
class RunState:
    study_name: str
    space_path: str
    space_sha256: str
    tracking_uri: str
    parent_run_id: str | None = None
    experiment_id: str | None = None
    cwd: str | None = None  # where the driver ran: relative data/bank folders resolve against it


def absolute_paths(cfg: TrialConfig, *, cwd: str | Path | None = None) -> dict[str, str]:
    """``data.data_dir`` and ``attack.bank_dir`` made absolute (against ``cwd``, default the
    current directory): Ray runs trials in other working directories, and ``search/pick.py``
    may run from another one than the search did."""
    root = Path(cwd) if cwd is not None else Path.cwd()
    return {
        "data.data_dir": str((root / cfg.data.data_dir).resolve()),
        "attack.bank_dir": str((root / cfg.attack.bank_dir).resolve()),
    }


def new_run_dir(study_name: str, output: str | None) -> Path:
    """``--output`` or ``runs/<study>/<timestamp>``, created; the caller takes its lock, then
    :func:`refuse_existing_study` (so that a live driver there is named, not just refused)."""
    path = Path(output) if output else RUNS / study_name / time.strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def refuse_existing_study(path: Path) -> None:
    """ConfigError when ``path`` already holds a study (a new run must not write into it)."""
    if (path / "study.db").exists():
        raise ConfigError(
            f"{path} already holds a study; pass --resume to continue it, or another --output"
        )


def existing_run_dir(study_name: str, output: str | None) -> Path:
    """The run to resume: ``--output``, or the newest under ``runs/<study>/``."""
    if output:
        path = Path(output)
        if not (path / "study.db").exists():
            raise ConfigError(
                f"--resume: {path} holds no study (no study.db); start it without --resume"
            )
        return path.resolve()
    candidates = sorted((RUNS / study_name).glob("*/study.db"))
    if not candidates:
        raise ConfigError(
            f"--resume: no earlier run of study {study_name!r} under "
            f"{RUNS / study_name}; start it without --resume"
        )
    return candidates[-1].parent.resolve()


def storage(run_dir: Path) -> optuna.storages.RDBStorage:
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


def finished_count(study: optuna.Study) -> int:
    """Trials that count toward ``n_trials``: complete, or failed on their own (not interrupted)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE
        or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED))
    )
