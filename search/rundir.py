"""A search's run directory: the Optuna study's storage and what a resume needs.

Layout::

    runs/<study>/<YYYYmmdd-HHMMSS>/
        study.db            Optuna's SQLite storage (every finished trial survives kill -9)
        state.json          study name, space path and hash, tracking URI, MLflow parent run
        space.yaml          the resolved space
        pareto_front.csv    the front, rewritten at the end of every session
        ray/                Ray Tune's own experiment folder

``--resume`` reopens the newest run of the study (or the one ``--output`` names): trials left
RUNNING by a killed driver are marked FAIL with ``interrupted`` set, and do not count.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from pptp.config import TrialConfig
from pptp.errors import ConfigError

RUNS = Path("runs")
INTERRUPTED = "interrupted"


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
    """``--output`` or ``runs/<study>/<timestamp>``; refuses a folder that already holds a study."""
    path = Path(output) if output else RUNS / study_name / time.strftime("%Y%m%d-%H%M%S")
    if (path / "study.db").exists():
        raise ConfigError(
            f"{path} already holds a study; pass --resume to continue it, or another --output"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


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
    """Atomically (a killed driver never leaves half a state file)."""
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".state.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f, indent=1)
    os.replace(tmp, run_dir / "state.json")


def fail_interrupted(study: optuna.Study) -> list[int]:
    """Mark trials a killed driver left RUNNING as FAIL (``interrupted``); returns their numbers.

    The state goes through the public ``study.tell``. The user attributes need the study's
    storage, which ``optuna.Study`` exposes only as the private ``_storage`` (used through the
    public :class:`optuna.storages.BaseStorage` methods); ``pyproject.toml`` pins the Optuna
    versions this was checked against and ``tests/test_private_apis.py`` fails when it changes.
    """
    numbers = []
    store: optuna.storages.BaseStorage = study._storage
    study_id = store.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, t.number)
        store.set_trial_user_attr(trial_id, INTERRUPTED, True)
        store.set_trial_user_attr(
            trial_id, "fail_reason", "interrupted: the driver stopped while the trial ran"
        )
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
