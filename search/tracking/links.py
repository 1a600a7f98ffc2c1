"""Where a study's records are: the MLflow UI addresses and the "where to look next" lines.

- :class:`Links`: the UI addresses of a study: the runs table
  (``#/experiments/<id>/runs?workflowType=machine_learning``, which skips MLflow 3's GenAI page,
  plus ``viewStateShareKey`` for the saved views of :mod:`search.tracking.saved_views`), a run, an
  artifact;
- :func:`where_to_look`: the "where to look next" lines every command prints, built from the
  ``pptp-search`` commands (:func:`console_command`) and these addresses;
- :func:`ui_hint`: where one run (or one experiment's runs) is in the UI.

A tracking *server* (``http(s)://``) serves its own UI, so its addresses are printed as they
are; any other store is opened with ``pptp-search ui`` (:mod:`search.ui`).
"""

from __future__ import annotations

import shlex
import shutil
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from search.tracking.saved_views import PARETO_FILTER, PARETO_VIEW, TRIALS_VIEW

WORKFLOW = "workflowType=machine_learning"  # the runs table, not MLflow 3's GenAI overview


def is_server_uri(uri: str) -> bool:
    """True for a tracking server (``http(s)://``), which serves its own UI."""
    return urllib.parse.urlsplit(uri).scheme.lower() in ("http", "https")


@dataclass(frozen=True)
class Links:
    """Where a study's records are in the MLflow UI.

    ``base`` is the UI's address (``http://127.0.0.1:5000/``), or None when no UI runs yet: the
    methods then return paths relative to the UI's address (``#/experiments/1/runs?...``), which
    also work as links inside MLflow's own Markdown (run descriptions). ``views``: whether the
    study's saved views exist (:mod:`search.tracking.saved_views`).
    """

    experiment_id: str
    parent_run_id: str | None = None
    base: str | None = None
    views: bool = False

    def _full(self, fragment: str) -> str:
        return f"{self.base.rstrip('/')}/{fragment}" if self.base else fragment

    def runs_table(self, *, view: str | None = TRIALS_VIEW) -> str:
        """The experiment's runs table, through the saved ``view`` when the views exist."""
        query = WORKFLOW
        if view and self.views:
            query += f"&viewStateShareKey={urllib.parse.quote(view)}"
        return self._full(f"#/experiments/{self.experiment_id}/runs?{query}")

    def pareto(self) -> str:
        """The Pareto trials: the saved view, or the table filtered by ``tags.pareto``."""
        if self.views:
            return self.runs_table(view=PARETO_VIEW)
        query = f"{WORKFLOW}&searchFilter={urllib.parse.quote(PARETO_FILTER)}"
        return self._full(f"#/experiments/{self.experiment_id}/runs?{query}")

    def run(self, run_id: str | None = None, *, artifact: str | None = None) -> str:
        """A run's page (default the study's parent run), or one of its artifacts."""
        run_id = run_id or self.parent_run_id
        if not run_id:
            raise ValueError("no run id (the study has no parent run recorded)")
        path = f"#/experiments/{self.experiment_id}/runs/{run_id}"
        if artifact:
            path += f"/artifacts/{urllib.parse.quote(artifact)}"
        return self._full(f"{path}?{WORKFLOW}")

    def with_base(self, base: str) -> Links:
        return Links(self.experiment_id, self.parent_run_id, base, self.views)


def server_base(uri: str) -> str | None:
    """The UI address of a tracking server URI; None for stores the UI must be started on."""
    return uri.rstrip("/") + "/" if is_server_uri(uri) else None


def console_command() -> str:
    """How to call ``pptp-search`` from here: its name when it is on ``PATH``, else the script
    beside this Python (``.venv/bin/pptp-search``), else ``python -m search.console``."""
    if shutil.which("pptp-search"):
        return "pptp-search"
    beside = Path(sys.executable).parent / "pptp-search"
    if beside.is_file():
        return shlex.quote(_shown(beside))
    return f"{shlex.quote(_shown(Path(sys.executable)))} -m search.console"


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when below it, else absolute."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path.absolute())


def where_to_look(
    run_dir: Path | None,
    *,
    tracking_uri: str,
    links: Links | None,
    report: Path | None = None,
    pick: bool = True,
    compare: bool = False,
) -> str:
    """The "where to look next" block every command prints after a study (or a part of one).

    ``links``: the study's experiment and parent run (None when nothing was tracked);
    ``report``: the report page, when it was written; ``compare``: offer ``compare`` (only for a
    study that ran both PPTP and baseline trials: anything else has nothing to compare). A store
    the UI must be started on is opened with ``pptp-search ui``; a tracking server's URLs are
    printed as they are.
    """
    cmd = console_command()
    run = shlex.quote(str(run_dir)) if run_dir is not None else None
    lines = ["", "where to look next:"]
    if report is not None:
        lines.append(f"  report      {report}  (open it in a browser; works offline)")
    if links is not None:
        base = server_base(tracking_uri)
        if base is not None:
            shown = links.with_base(base)
            lines.append(f"  trials      {shown.runs_table()}")
            lines.append(f"  Pareto      {shown.pareto()}")
        else:
            target = f"--run {run}" if run else f"--tracking-uri {shlex.quote(tracking_uri)}"
            lines.append(f"  MLflow UI   {cmd} ui {target} --open")
            lines.append("              (starts the UI on 127.0.0.1 and opens the study's trials;")
            lines.append("              Pareto trials: the view 'PPTP: Pareto front', or the")
            lines.append(f"              search {PARETO_FILTER})")
    if run is not None:
        lines.append(f"  run dir     {run}  (study.db, state.json, space.yaml, pareto_front.csv)")
        if report is None:
            lines.append(f"  report      {cmd} report --run {run}")
        if pick:
            lines.append(f"  pick        {cmd} pick --run {run} --rule knee")
        if compare:
            lines.append(f"  compare     {cmd} compare --run {run}   (PPTP against the baselines)")
    return "\n".join(lines)


def ui_hint(
    tracking_uri: str,
    *,
    experiment_id: str,
    run_id: str | None = None,
    run_dir: Path | None = None,
    experiment_name: str | None = None,
) -> str:
    """Where one run (or, without ``run_id``, one experiment's runs table) is in the UI.

    A tracking server: its URL. Otherwise the ``pptp-search ui`` command that opens the store
    (``--run`` for a study's run directory, else ``--tracking-uri`` and ``--experiment``), then
    the path to follow in the UI.
    """
    links = Links(experiment_id, run_id)
    fragment = links.run() if run_id else links.runs_table(view=None)
    base = server_base(tracking_uri)
    if base is not None:
        return f"{base.rstrip('/')}/{fragment}"
    if run_dir is not None:
        target = f"--run {shlex.quote(str(run_dir))}"
    else:
        target = f"--tracking-uri {shlex.quote(tracking_uri)}"
        if experiment_name:
            target += f" --experiment {shlex.quote(experiment_name)}"
    return f"{console_command()} ui {target}, then {fragment}"
