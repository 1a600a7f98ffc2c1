"""``pptp-search ui``: the MLflow UI over a study's store, opened on the study's runs table.

What a person needs after a study is one command that starts the UI over the right store and
one URL that lands on the trials (MLflow 3 otherwise opens an experiment on its GenAI overview,
with the runs behind a "Model training" toggle). This module gives:

- :class:`MlflowUi`: an ``mlflow server`` process this program owns (its own process group, so
  Ctrl-C in the terminal reaches this program, which stops the server by its PID), bound to
  127.0.0.1, with the light settings (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``, one
  worker: 2 processes, ~0.4 GB, starts in ~5 s), ready once ``/health`` answers;
- the ``ui`` command (:func:`main`), which prints each study's addresses in the running UI
  (:class:`search.tracking.links.Links`; the "where to look next" lines of every command are
  :func:`search.tracking.links.where_to_look`).

Which store: ``--run RUN`` (the tracking URI and experiment its ``state.json`` recorded), else
``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded store under ``mlflow/``. A
tracking *server* (``http(s)://``) already serves the UI: nothing is started, the URLs are
printed (and opened with ``--open``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python search/ui.py` puts search/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pptp.errors import ConfigError
from search.cli import manual
from search.cli.entry import quiet_environment, run_command
from search.tracking.links import Links, console_command, server_base
from search.tracking.saved_views import SHARED_VIEW_TAG, TRIALS_VIEW

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

quiet_environment()

#: environment of the server: no job runner (15 processes, ~2.3 GB otherwise), no telemetry
LIGHT_SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000


class UiError(RuntimeError):
    """The MLflow UI did not start or stopped on its own; the message says why."""


# ---------------------------------------------------------------------------------------------
# the server


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now. SO_REUSEADDR, as servers set it:
    connections a stopped server left in TIME_WAIT do not make the port busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nothing listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class MlflowUi:
    """An ``mlflow server`` over ``tracking_uri``, owned by this process.

    ``with MlflowUi(uri) as ui: ... ui.base`` starts it and waits until ``/health`` answers
    (:meth:`start`); leaving the block stops it (:meth:`stop`: SIGTERM to its process group,
    SIGKILL after ``stop_timeout_s``). ``port=None``: 5000 when free, else a free port.
    The server's output goes to ``log_path`` (a temporary file by default), whose tail an
    :class:`UiError` shows.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        host: str = DEFAULT_HOST,
        port: int | None = None,
        log_path: Path | None = None,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.host = host
        self.port = port
        self.stop_timeout_s = stop_timeout_s
        self._log_path = log_path
        self._own_log = log_path is None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("MlflowUi.start() has not been called")
        return self.process.pid

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def log_path(self) -> Path:
        assert self._log_path is not None
        return self._log_path

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.tracking_uri,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def start(self, *, timeout_s: float = 90.0) -> str:
        """Start the server and return its address once it answers; :class:`UiError` when it
        exits first or does not answer within ``timeout_s``. A port chosen here that another
        process takes before the server binds it is replaced by a new one (twice at most)."""
        auto = self.port is None
        if not auto and not port_free(self.host, int(self.port or 0)):
            raise ConfigError(
                f"--port {self.port}: something already listens on {self.host}:{self.port}; "
                "choose another --port, or leave it out for a free one"
            )
        deadline = time.monotonic() + timeout_s
        for attempt in range(3 if auto else 1):
            if auto:
                first = attempt == 0 and port_free(self.host, DEFAULT_PORT)
                self.port = DEFAULT_PORT if first else free_port(self.host)
            try:
                return self._start_once(deadline, timeout_s)
            except UiError as error:
                taken = "address already in use" in self.log_tail().lower()
                if not (auto and taken and attempt < 2):
                    raise error from None
        raise AssertionError("unreachable")

    def _start_once(self, deadline: float, timeout_s: float) -> str:
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="pptp-mlflow-ui-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        env = {**os.environ, **LIGHT_SERVER_ENV}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stopped by us, not by Ctrl-C
            )
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UiError(
                    f"the MLflow UI exited with status {self.process.returncode} before it "
                    f"answered; its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            # ours answers (not another server that took the port): it is still running
            if self.answers() and self.process.poll() is None:
                return self.base
            time.sleep(0.25)
        message = (
            f"the MLflow UI did not answer on {self.base} within {timeout_s:g} s; its log "
            f"({self.log_path}) ended with:\n{self.log_tail()}"
        )
        self.stop()
        raise UiError(message)

    def answers(self, timeout_s: float = 2.0) -> bool:
        """Whether ``GET /health`` answers 200 now."""
        try:
            with urllib.request.urlopen(f"{self.base}health", timeout=timeout_s) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM to the server's process group (its id is the server's PID), then SIGKILL
        after ``stop_timeout_s``; removes a temporary log. Safe to call twice."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(self.stop_timeout_s)
        # workers left in the group after the main process ended (none expected)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._own_log and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None

    def __enter__(self) -> MlflowUi:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises KeyboardInterrupt (so ``kill <pid>`` stops the UI too)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------
# the command

def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = manual.parser("ui", prog)
    p.add_argument(
        "--run", help="a run directory of a study (its state.json names the store and the study)"
    )
    p.add_argument(
        "--tracking-uri",
        help="the MLflow store (default: the run's, else $MLFLOW_TRACKING_URI, else the "
        "embedded SQLite store under mlflow/)",
    )
    p.add_argument("--experiment", help="a study (experiment) name, when --run is not given")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, help=f"port (default {DEFAULT_PORT}, or a free one when it is taken)"
    )
    p.add_argument("--open", action="store_true", help="open the study's runs table in a browser")
    p.add_argument(
        "--timeout", type=float, default=90.0, help="seconds to wait for the UI (default 90)"
    )
    return p


@dataclass(frozen=True)
class Plan:
    tracking_uri: str
    run_dir: Path | None
    experiment: str | None  # experiment id
    parent_run_id: str | None
    host: str
    port: int | None
    open: bool
    timeout_s: float


def prepare(args: argparse.Namespace) -> Plan:
    from search.study import rundir
    from search.tracking.uris import check_tracking, resolve_tracking_uri, sqlite_path

    run_dir = Path(args.run) if args.run else None
    experiment = parent = None
    if run_dir is not None:
        state = rundir.read_state(run_dir)
        uri = resolve_tracking_uri(args.tracking_uri or state.tracking_uri)
        experiment, parent = state.experiment_id, state.parent_run_id
    else:
        uri = resolve_tracking_uri(args.tracking_uri)
    if urllib.parse.urlsplit(uri).scheme.lower() == "sqlite":
        path, _ = sqlite_path(uri)
        if path is None or not path.is_file():
            raise ConfigError(
                f"no MLflow store at {path or uri}: run a study first "
                f"({console_command()} run --space spaces/quickstart.yaml), or give "
                "--run / --tracking-uri"
            )
    else:
        check_tracking(uri)
    if args.experiment and run_dir is None:
        from mlflow.tracking import MlflowClient

        found = MlflowClient(uri).get_experiment_by_name(args.experiment)
        if found is None:
            raise ConfigError(f"--experiment {args.experiment!r}: no such experiment in {uri}")
        experiment = found.experiment_id
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout}: give a positive number of seconds")
    return Plan(uri, run_dir, experiment, parent, args.host, args.port, args.open, args.timeout)


def study_links(plan: Plan, client: MlflowClient) -> list[tuple[str, Links]]:
    """``(study name, links)`` of the study the plan names, or of every study in the store
    (experiments tagged ``pptp.study``), newest first. A study's parent run is the one its run
    directory recorded, else the experiment's newest run tagged ``pptp.kind = study``."""
    from search.tracking.names import TAG_STUDY

    if plan.experiment is not None:
        experiments = [client.get_experiment(plan.experiment)]
    else:
        experiments = client.search_experiments(
            filter_string=f"tags.`{TAG_STUDY}` != ''",
            order_by=["last_update_time DESC"],
            max_results=20,
        )
    out = []
    for exp in experiments:
        parent = plan.parent_run_id if plan.experiment is not None else None
        parent = parent or _newest_study_run(client, exp.experiment_id)
        views = SHARED_VIEW_TAG + TRIALS_VIEW in exp.tags
        out.append((exp.name, Links(exp.experiment_id, parent, None, views)))
    return out


def _newest_study_run(client: MlflowClient, experiment_id: str) -> str | None:
    from search.tracking.names import TAG_KIND

    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return str(runs[0].info.run_id) if runs else None


def describe(study: list[tuple[str, Links]], base: str, client: MlflowClient) -> list[str]:
    """The lines that say where each study is in the running UI."""
    from search.study.rundir import REPORT_FILE

    lines = []
    for name, links in study:
        shown = links.with_base(base)
        lines.append(f"study       {name}: {shown.runs_table()}")
        lines.append(f"Pareto      {shown.pareto()}")
        if shown.parent_run_id:
            lines.append(f"study run   {shown.run()}")
            files = {f.path for f in client.list_artifacts(shown.parent_run_id)}
            if REPORT_FILE in files:
                lines.append(f"report      {shown.run(artifact=REPORT_FILE)}")
    if not study:
        lines.append(f"studies     none in this store yet: {base}")
    return lines


def execute(plan: Plan) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    studies = study_links(plan, client)
    base = server_base(plan.tracking_uri)
    if base is not None:  # a tracking server serves its own UI
        lines = describe(studies, base, client)
        print("\n".join(lines))
        if plan.open and studies:
            webbrowser.open(studies[0][1].with_base(base).runs_table())
        return 0
    ui = MlflowUi(plan.tracking_uri, host=plan.host, port=plan.port)
    try:
        with sigterm_as_interrupt():
            try:
                ui.start(timeout_s=plan.timeout_s)
            except UiError as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            first = studies[0][1].with_base(ui.base).runs_table() if studies else ui.base
            print(
                f"MLflow UI   {first}\n"
                f"            (server {ui.base}, pid {ui.pid}; store {plan.tracking_uri}; "
                "Ctrl-C stops it)"
            )
            print("\n".join(describe(studies, ui.base, client)), flush=True)
            if plan.open:
                webbrowser.open(
                    studies[0][1].with_base(ui.base).runs_table() if studies else ui.base
                )
            while ui.process is not None and ui.process.poll() is None:
                time.sleep(0.5)
            print(
                f"error: the MLflow UI stopped on its own; its log ends with:\n{ui.log_tail()}",
                file=sys.stderr,
            )
            return 1
    except KeyboardInterrupt:
        print("\nstopping the MLflow UI", flush=True)
        return 0
    finally:
        ui.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv), prepare, execute)


if __name__ == "__main__":
    sys.exit(main())
