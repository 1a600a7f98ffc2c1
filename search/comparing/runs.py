"""The finished trials of the run directories a comparison reads, and the two axes they share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from optuna.trial import TrialState

from pptp.errors import ConfigError
from search.space import Objective
from search.study.reader import open_run
from search.study.trials import FinishedTrial, finished


def load_trials(
    run_dirs: Sequence[Path],
) -> tuple[list[FinishedTrial], tuple[Objective, Objective]]:
    """Every completed trial of the runs, and the two objectives (the first run's)."""
    trials: list[FinishedTrial] = []
    axes: tuple[Objective, Objective] | None = None
    for run_dir in run_dirs:
        run = open_run(run_dir)
        objectives = tuple(run.objectives)
        if len(objectives) != 2:
            raise ConfigError(
                f"--run {run_dir}: the study has {len(objectives)} objectives; the comparison "
                "draws two (accuracy and an attack metric)"
            )
        if axes is not None and objectives != axes:
            raise ConfigError(
                f"--run {run_dir}: objectives {[o.metric for o in objectives]} differ from the "
                f"first run's {[o.metric for o in axes]}; compare studies with the same objectives"
            )
        axes = (objectives[0], objectives[1])
        trials += finished(
            run.study, objectives, states=(TrialState.COMPLETE,), name=run.state.study_name
        )
    if axes is None:
        raise ConfigError("give at least one --run")
    return trials, axes
