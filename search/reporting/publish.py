"""After a study: make its MLflow runs explain themselves and write its report page.

:func:`publish_study` is the one call for the end of a study (``search/run.py``) and what
``pptp-search report`` runs on any finished run directory. In order:

1. when the study's MLflow store answers (:func:`tracking_problem`):

   - each trial's run is named by what it tried (``t07 noise s=0.46 block3-head``,
     :mod:`search.study.trials`) and described (tag ``mlflow.note.content``: objectives with their
     spread on the first line, which the runs table's *Description* column shows);
   - the study's parent run gets a description with the best trials and links (the runs-table
     views, the report, the localisation);
   - the saved views ``pptp-trials`` and ``pptp-pareto`` are written on the experiment
     (:mod:`search.tracking.saved_views`);
   - a localisation that steered the study is found among the store's localisation runs and
     linked: parent tags ``localization_run_id`` and ``localization_url``, and on the
     localisation's run a tag ``steered/<study>`` linking back;

2. ``report.html`` is written into the run directory (:mod:`search.reporting`) and, when the store
   answers, attached to the parent run.

Writes are idempotent: a second call changes only what differs. Links inside MLflow are
relative to the UI's address (``#/experiments/1/runs/...``) for stores the UI is started on
(SQLite; the port is not known in advance) and absolute for tracking servers.
"""

from __future__ import annotations

import json
import logging
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pptp.errors import ConfigError
from search.reporting.inputs import gather
from search.reporting.page import write_report
from search.study.naming import TAG_NOTE, study_description, trial_description
from search.study.reader import StudyRun, open_run
from search.study.rundir import REPORT_FILE
from search.study.trials import both_families
from search.tracking.links import Links, server_base, where_to_look
from search.tracking.names import TAG_KIND, TAG_PARENT, metric_key
from search.tracking.saved_views import save_views, study_views
from search.tracking.store import set_tags
from search.tracking.uris import check_tracking, sqlite_path

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from search.study.reader import StudyRun
    from search.study.trials import FinishedTrial

logger = logging.getLogger(__name__)

TAG_LOCALIZATION_RUN_ID = "localization_run_id"
TAG_LOCALIZATION_URL = "localization_url"
TAG_STEERED_PREFIX = "steered/"  # on a localisation run: steered/<study> = link to the study
TAG_LOCALIZATION_JSON = "localization_json"  # on a localisation run, when it records its file
NOT_ASKED = "was not asked (--no-mlflow)"


@dataclass(frozen=True)
class Published:
    """What :func:`publish_study` did: the page, what changed in MLflow, what is missing."""

    run_dir: Path
    report: Path
    tracking_uri: str
    links: Links | None = None
    renamed: int = 0
    described: int = 0
    views: tuple[str, ...] = ()
    localization_run_id: str | None = None
    attached: bool = False
    problem: str | None = None  # why MLflow was left alone
    missing: tuple[str, ...] = field(default_factory=tuple)
    comparable: bool = False  # the study ran PPTP and baseline trials: compare has something to say

    def summary(self) -> str:
        """Lines for the terminal: the page, MLflow changes, missing parts, where to look."""
        lines = [
            f"report      {self.report}"
            + ("  (also on the study's MLflow run)" if self.attached else "")
        ]
        if self.problem:
            why = "(--no-mlflow)" if self.problem == NOT_ASKED else f"(the store {self.problem})"
            lines.append(f"MLflow      left as it is {why}")
        else:
            lines.append(
                f"MLflow      {self.renamed} trial runs renamed, {self.described} descriptions "
                f"written; views {', '.join(repr(v) for v in self.views) or '-'}"
            )
            if self.localization_run_id:
                lines.append(f"            linked the localisation run {self.localization_run_id}")
        for part in self.missing:
            lines.append(f"missing     {part}")
        lines.append(
            where_to_look(
                self.run_dir,
                tracking_uri=self.tracking_uri,
                links=self.links,
                report=self.report,
                compare=self.comparable,
            )
        )
        return "\n".join(lines)


def tracking_problem(uri: str) -> str | None:
    """None when the store at ``uri`` answers now, else why not (a few seconds at most).

    A SQLite store must exist already (reading a report never creates one); servers and
    databases are probed by :func:`search.tracking.check_tracking` with a 5 s timeout.
    """
    if urllib.parse.urlsplit(uri).scheme.lower() == "sqlite":
        path, _ = sqlite_path(uri)
        return None if path is not None and path.is_file() else f"has no database at {path}"
    try:
        check_tracking(uri, timeout_s=5.0)
    except ConfigError as error:
        return f"did not answer ({error})"
    return None


def children(client: Any, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """The parent's child runs by run id."""
    runs: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.update({r.info.run_id: r for r in page})
        token = page.token
        if not token:
            return runs


def annotate_trials(
    client: MlflowClient,
    trials: Sequence[FinishedTrial],
    *,
    objectives: Sequence[str],
    study_name: str,
    experiment_id: str,
    parent_link: str | None,
    parent_run_id: str,
) -> tuple[int, int]:
    """Name and describe every trial run the trials point at; returns (renamed, described).
    A run keeps the name its trial gave it unless the study's numbering widened since."""
    existing = children(client, experiment_id, parent_run_id)
    renamed = described = 0
    for trial in trials:
        run_id = trial.run_id
        if not run_id or run_id not in existing:
            continue
        run = existing[run_id]
        if run.info.run_name != trial.name:
            client.update_run(run_id, name=trial.name)
            renamed += 1
        note = trial_description(trial, objectives, study_name=study_name, parent_link=parent_link)
        if run.data.tags.get(TAG_NOTE) != note:
            set_tags(client, run_id, {TAG_NOTE: note})
            described += 1
    return renamed, described


def find_localization_run(client: MlflowClient, path: Path) -> str | None:
    """The MLflow run ``search/localize.py`` logged for ``path`` (a ``localization.json``).

    A run that records its file (tag ``localization_json``) is matched by path; otherwise the
    store's localisation runs (tag ``pptp.kind = localize``) of the same model and dataset are
    compared by the content of their ``localization.json`` artifact.
    """
    try:
        wanted = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    experiments = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    if not experiments:
        return None
    runs = client.search_runs(
        experiments, filter_string=f"tags.`{TAG_KIND}` = 'localize'", max_results=1000
    )
    resolved = str(path.resolve())
    for run in runs:
        if run.data.tags.get(TAG_LOCALIZATION_JSON) == resolved:
            return str(run.info.run_id)
    same = [
        r
        for r in runs
        if r.data.tags.get("model") == wanted.get("model")
        and r.data.tags.get("dataset") == wanted.get("dataset")
    ]
    with tempfile.TemporaryDirectory(prefix="pptp-loc-") as tmp:
        for i, run in enumerate(same):
            try:
                local = client.download_artifacts(run.info.run_id, path.name, f"{tmp}/{i}")
                if json.loads(Path(local).read_text()) == wanted:
                    return str(run.info.run_id)
            except Exception:  # a run without the artifact, or an unreadable one
                continue
    return None


def publish_study(
    run: StudyRun | Path | str,
    *,
    output: Path | None = None,
    mlflow: bool = True,
    tracking_uri: str | None = None,
) -> Published:
    """Annotate the study's MLflow runs and write its report page (module docstring).

    ``run``: an opened run or a run directory. ``output``: the page's path (default
    ``<run>/report.html``). ``mlflow=False`` reads and writes nothing in MLflow (the page then
    lacks the ROC curves). ``tracking_uri`` overrides the one ``state.json`` recorded.
    """
    if not isinstance(run, StudyRun):
        run = open_run(run)
    state = run.state
    uri = tracking_uri or state.tracking_uri
    page = output or run.run_dir / REPORT_FILE
    problem = None if mlflow else NOT_ASKED
    if problem is None:
        problem = tracking_problem(uri)
    if problem is None and not (state.experiment_id and state.parent_run_id):
        problem = "state.json records no MLflow experiment or parent run"
    client = None
    if problem is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
    inputs = gather(run, client=client, unreachable=problem)
    if client is None:
        write_report(inputs, page)
        links = (
            Links(state.experiment_id, state.parent_run_id)
            if state.experiment_id and problem == NOT_ASKED
            else None
        )
        return Published(
            run.run_dir,
            page,
            uri,
            links=links,
            problem=problem,
            missing=inputs.missing,
            comparable=both_families(inputs.trials),
        )

    assert state.experiment_id is not None and state.parent_run_id is not None
    base = server_base(uri)
    objectives = [(o.metric, o.direction) for o in run.objectives]
    views = study_views(objectives)
    try:
        save_views(client, state.experiment_id, views)
        links = Links(state.experiment_id, state.parent_run_id, base, views=True)
        renamed, described = annotate_trials(
            client,
            inputs.trials,
            objectives=[m for m, _ in objectives],
            study_name=state.study_name,
            experiment_id=state.experiment_id,
            parent_link=links.run(),
            parent_run_id=state.parent_run_id,
        )
        loc_run = _link_localization(client, inputs.localization_path, links, state.study_name)
        write_report(inputs, page)
        client.log_artifact(state.parent_run_id, str(page))
        link_map = {
            "trials": links.runs_table(),
            "pareto": links.pareto(),
            "report": links.run(artifact=page.name),
        }
        if loc_run is not None:
            link_map["localization"] = loc_run[1]
        parent_note = study_description(
            inputs.trials, run.objectives, study_name=state.study_name, links=link_map
        )
        from search.tracking.store import set_tags

        set_tags(client, state.parent_run_id, {TAG_NOTE: parent_note})
    except Exception as error:  # the store broke half-way: the page is what matters most
        logger.warning("MLflow: could not finish annotating the study (%s)", error)
        if not page.is_file():
            write_report(inputs, page)
        return Published(
            run.run_dir,
            page,
            uri,
            links=None,
            problem=f"stopped half-way ({type(error).__name__}: {error})",
            missing=inputs.missing,
            comparable=both_families(inputs.trials),
        )
    return Published(
        run.run_dir,
        page,
        uri,
        links=links.with_base(base)
        if base
        else Links(state.experiment_id, state.parent_run_id, None, True),
        renamed=renamed,
        described=described,
        views=tuple(v.name for v in views),
        localization_run_id=loc_run[0] if loc_run else None,
        attached=True,
        missing=inputs.missing,
        comparable=both_families(inputs.trials),
    )


def _link_localization(
    client: MlflowClient, path: Path | None, links: Links, study_name: str
) -> tuple[str, str] | None:
    """Tag the parent with the localisation run's id and URL, and the localisation run with a
    link back to the study; returns (run id, URL) or None."""
    if path is None:
        return None
    run_id = find_localization_run(client, path)
    if run_id is None:
        logger.info("no MLflow run of the localisation %s found in the store", path)
        return None
    run = client.get_run(run_id)
    url = Links(run.info.experiment_id, run_id, links.base).run()
    assert links.parent_run_id is not None
    set_tags(
        client, links.parent_run_id, {TAG_LOCALIZATION_RUN_ID: run_id, TAG_LOCALIZATION_URL: url}
    )
    set_tags(client, run_id, {metric_key(TAG_STEERED_PREFIX + study_name): links.run()})
    return run_id, url
