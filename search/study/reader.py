"""A finished (or stopped) search, opened read-only from the run directory ``search/run.py`` wrote.

``state.json``, ``study.db`` and ``space.yaml`` (:mod:`search.study.rundir`); the candidates are
Optuna's Pareto front (``study.best_trials``: feasible, non-dominated trials), or every feasible
completed trial. Paths in the space (``data.data_dir``, ``attack.bank_dir``) are relative to the
directory the search ran in, which ``state.json`` records (``cwd``):
:func:`screening_references` resolves them against it, so a pick finds the same bank and data
from any working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from pptp.errors import ConfigError
from search.space import load_space
from search.study import rundir
from search.study.trials import FinishedTrial, finished

if TYPE_CHECKING:
    import optuna

    from pptp.config import TrialConfig
    from search.space import Objective, Space


@dataclass(frozen=True)
class StudyRun:
    """A run directory of ``search/run.py``, opened read-only."""

    run_dir: Path
    state: rundir.RunState
    space: Space
    study: optuna.Study

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return self.space.study.objectives


def open_run(run_dir: str | Path) -> StudyRun:
    """Open a run directory; every problem is one ConfigError that says what to do."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(
            f"--run {path}: no such directory (give a run directory written by search/run.py, "
            "e.g. runs/<study>/<timestamp>)"
        )
    if not (path / "study.db").is_file():
        runs = sorted(p.parent for p in path.glob("*/study.db"))
        if runs:
            listed = "\n  ".join(str(r) for r in runs[-5:])
            more = f" (the newest {min(5, len(runs))} of {len(runs)})" if len(runs) > 5 else ""
            raise ConfigError(
                f"--run {path} is a study's folder, not one run: give one of its runs{more}, "
                f"e.g. --run {runs[-1]}\n  {listed}"
            )
        raise ConfigError(f"--run {path}: no study.db here; is it a run directory of run.py?")
    state = rundir.read_state(path)
    space = load_space(path / "space.yaml")
    try:
        study = optuna.load_study(study_name=state.study_name, storage=rundir.storage(path))
    except KeyError:
        raise ConfigError(
            f"{path / 'study.db'} holds no study named {state.study_name!r} (state.json)"
        ) from None
    except Exception as error:  # a corrupt or foreign database: sqlalchemy's many errors
        raise ConfigError(f"cannot open {path / 'study.db'} ({error})") from None
    if len(study.directions) != len(space.study.objectives):
        raise ConfigError(
            f"{path}: the study has {len(study.directions)} objectives but space.yaml lists "
            f"{len(space.study.objectives)}; the run directory is inconsistent"
        )
    return StudyRun(path.resolve(), state, space, study)


def candidates(run: StudyRun, *, among: str = "front") -> list[FinishedTrial]:
    """The trials the rule chooses from: the Pareto front, or every feasible completed trial."""
    trials = run.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        counts = ", ".join(
            f"{sum(t.state == s for t in trials)} {s.name.lower()}"
            for s in (TrialState.FAIL, TrialState.RUNNING, TrialState.PRUNED)
        )
        raise ConfigError(
            f"{run.run_dir}: the study has no completed trial ({len(trials)} trials: {counts}); "
            "run or resume the search first"
        )
    done = finished(run.study, run.objectives, states=(TrialState.COMPLETE,))
    feasible = [t for t in done if t.feasible]
    chosen = [t for t in feasible if t.pareto] if among == "front" else feasible
    if not chosen:
        raise ConfigError(
            f"{run.run_dir}: none of the {len(complete)} completed trials meets the study's "
            "constraints, so there is no Pareto front to pick from"
        )
    return chosen


def screening_references(run: StudyRun) -> TrialConfig | None:
    """The config the screening references followed: the base recipe (absolute paths), or None
    when the space searches data or model keys (each trial then had references of its own)."""
    if any(k.startswith(("data.", "model.")) for k in run.space.params):
        return None
    base = run.space.base_config()
    return base.replace(**rundir.absolute_paths(base, cwd=run.state.cwd))
