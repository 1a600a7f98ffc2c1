"""What the report page shows, gathered once (:func:`gather`): the finished trials of the run
directory's study (:mod:`search.study.trials`), the ROC arrays of the finalists from MLflow, the
localisation that steered the study and the picked config; each part that could not be read is
listed with its reason (:attr:`ReportInputs.missing`)."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pptp.errors import ConfigError
from search.study.trials import FinishedTrial, finished

if TYPE_CHECKING:
    import optuna
    from mlflow.tracking import MlflowClient

    from pptp.localize import LocalizationResult
    from search.space import Objective
    from search.study.reader import StudyRun

PICKED_FILE = "picked.yaml"


@dataclass(frozen=True)
class RocCurve:
    """One attack's ROC on one trial: ``fpr``, ``tpr`` as in ``roc.npz`` (increasing FPR)."""

    trial: int
    attack: str
    fpr: np.ndarray
    tpr: np.ndarray


@dataclass(frozen=True)
class Exposed:
    """Who leaks in one trial (:mod:`pptp.exposure`): ``grid`` the PNG of ``exposed.png`` (None
    for table data), ``class_tpr`` the rows of ``class_tpr.csv`` (label, members, TPR at 1% FPR
    as text, empty when not resolved)."""

    trial: int
    grid: bytes | None
    class_tpr: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class ReportInputs:
    """Everything the page shows, gathered once (:func:`gather`).

    ``trials``: every finished trial (complete or failed), the front marked; ``missing``: the
    parts that could not be drawn, each with its reason.
    """

    study_name: str
    run_dir: Path
    objectives: tuple[Objective, ...]
    trials: tuple[FinishedTrial, ...]
    tracking_uri: str
    parent_run_id: str | None
    roc: tuple[RocCurve, ...] = ()
    exposed: tuple[Exposed, ...] = ()
    localization: LocalizationResult | None = None
    localization_path: Path | None = None
    picked: str | None = None
    picked_trial: int | None = None
    missing: tuple[str, ...] = ()
    study: optuna.Study | None = field(default=None, compare=False, repr=False)  # plot_slice

    def name(self, number: int) -> str:
        """Trial ``number``'s name (``t07 noise s=0.46 block3-head``), or ``trial 7``."""
        return next((t.name for t in self.trials if t.number == number), f"trial {number}")


def localization_file(run: StudyRun) -> Path | None:
    """The ``localization.json`` that steered the study (its path as the study recorded it,
    relative to the directory the search ran in), or None when none did."""
    recorded = run.study.user_attrs.get("localization")
    if not recorded:
        return None
    path = Path(str(recorded))
    if not path.is_absolute():
        path = Path(run.state.cwd or ".") / path
    return path


def read_picked(run_dir: Path) -> tuple[str | None, int | None]:
    """The text of ``<run>/picked.yaml`` and the trial it exported (its study name ends with
    ``-trial<N>``, :func:`search.picking.export.picked_space`)."""
    import yaml

    path = run_dir / PICKED_FILE
    if not path.is_file():
        return None, None
    text = path.read_text()
    trial = None
    try:
        name = str((yaml.safe_load(text) or {}).get("study", {}).get("name", ""))
        head, _, number = name.rpartition("-trial")
        trial = int(number) if head and number.isdigit() else None
    except (yaml.YAMLError, AttributeError):
        pass
    return text, trial


def fetch_roc(
    client: MlflowClient, trials: Sequence[FinishedTrial]
) -> tuple[list[RocCurve], list[str]]:
    """The ``roc.npz`` curves of the front's trials and of the undefended trials.

    Returns the curves and a note per trial whose file could not be read. ``roc.npz`` holds
    ``attacks`` (names) and ``fpr/<attack>``, ``tpr/<attack>`` float arrays; it is loaded with
    ``allow_pickle=False``.
    """
    wanted = [t for t in trials if t.run_id and t.complete and (t.pareto or t.kind == "undefended")]
    curves: list[RocCurve] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pptp-report-") as tmp, _no_progress_bars():
        for trial in wanted:
            number = trial.number
            try:
                local = client.download_artifacts(str(trial.run_id), "roc.npz", tmp)
                with np.load(local, allow_pickle=False) as data:
                    for attack in [str(a) for a in data["attacks"]]:
                        curves.append(
                            RocCurve(
                                number,
                                attack,
                                np.asarray(data[f"fpr/{attack}"], dtype=float),
                                np.asarray(data[f"tpr/{attack}"], dtype=float),
                            )
                        )
            except Exception as error:  # a missing artifact or an unreadable file: say so
                problems.append(f"trial {number}: roc.npz not readable ({first_line(error)})")
    return curves, problems


def fetch_exposed(
    client: MlflowClient, trials: Sequence[FinishedTrial]
) -> tuple[list[Exposed], list[str]]:
    """Who leaks in the front's trials and the undefended ones: ``class_tpr.csv`` and, for image
    data, ``exposed.png``. A trial without them (logged before they existed) is skipped; a note
    per trial whose files are there but could not be read."""
    wanted = [t for t in trials if t.run_id and t.complete and (t.pareto or t.kind == "undefended")]
    found: list[Exposed] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pptp-report-") as tmp, _no_progress_bars():
        for trial in wanted:
            try:
                names = {a.path for a in client.list_artifacts(str(trial.run_id))}
                if "class_tpr.csv" not in names:
                    continue
                folder = Path(tmp) / str(trial.number)
                folder.mkdir()
                table = Path(
                    client.download_artifacts(str(trial.run_id), "class_tpr.csv", str(folder))
                )
                rows = list(csv.reader(table.read_text().splitlines()))[1:]
                grid = None
                if "exposed.png" in names:
                    png = client.download_artifacts(str(trial.run_id), "exposed.png", str(folder))
                    grid = Path(png).read_bytes()
                found.append(Exposed(trial.number, grid, tuple((r[0], r[1], r[2]) for r in rows)))
            except Exception as error:  # a missing artifact or an unreadable file: say so
                problems.append(f"trial {trial.number}: {first_line(error)}")
    return found, problems


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar per downloaded artifact unless told not to."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def gather(
    run: StudyRun, *, client: MlflowClient | None, unreachable: str | None = None
) -> ReportInputs:
    """Read what the page shows from the run directory and, when ``client`` (an
    :class:`mlflow.MlflowClient`) is given, the ROC arrays from MLflow. ``unreachable``: why
    there is no client (shown on the page)."""
    from pptp.localize import LocalizationResult

    objectives = tuple(run.objectives)
    trials = tuple(finished(run.study, objectives, name=run.state.study_name))
    missing: list[str] = []
    roc: list[RocCurve] = []
    exposed: list[Exposed] = []
    if client is None:
        missing.append(
            f"ROC curves of the finalists: the MLflow store {run.state.tracking_uri} "
            f"{unreachable or 'was not asked'}"
        )
    else:
        roc, problems = fetch_roc(client, trials)
        missing += [f"ROC curve of {p}" for p in problems]
        exposed, problems = fetch_exposed(client, trials)
        missing += [f"who leaks in {p}" for p in problems]
    loc_path = localization_file(run)
    localization = None
    if loc_path is not None:
        try:
            localization = LocalizationResult.load(loc_path)
        except ConfigError as error:
            missing.append(f"layer-risk chart: {error}")
    picked, picked_trial = read_picked(run.run_dir)
    return ReportInputs(
        study_name=run.state.study_name,
        run_dir=run.run_dir,
        objectives=objectives,
        trials=trials,
        tracking_uri=run.state.tracking_uri,
        parent_run_id=run.state.parent_run_id,
        roc=tuple(roc),
        exposed=tuple(exposed),
        localization=localization,
        localization_path=loc_path,
        picked=picked,
        picked_trial=picked_trial,
        missing=tuple(missing),
        study=run.study,
    )
