"""The MLflow UI launcher (search/ui.py) and the addresses it prints (search/tracking/links.py).

The server tests start a real ``mlflow server`` (about 5-10 s each): marked slow. What the pages
show is checked in a real browser in tests/test_browser.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures_pick import make_run
from fixtures_tracking import fresh_store
from mlflow.tracking import MlflowClient

from pptp.errors import ConfigError
from search import ui
from search.tracking import links
from search.tracking.links import Links, console_command, ui_hint, where_to_look
from search.ui import MlflowUi, free_port, port_free

REPO = Path(__file__).resolve().parents[1]


def test_links_skip_the_genai_page_and_open_the_saved_views() -> None:
    plain = Links("3", "abc")
    assert plain.runs_table() == "#/experiments/3/runs?workflowType=machine_learning"
    assert plain.pareto() == (
        "#/experiments/3/runs?workflowType=machine_learning"
        "&searchFilter=tags.pareto%20%3D%20%27true%27"
    )
    viewed = Links("3", "abc", "http://127.0.0.1:5000/", views=True)
    assert viewed.runs_table() == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
        "&viewStateShareKey=pptp-trials"
    )
    assert viewed.pareto().endswith("&viewStateShareKey=pptp-pareto")
    assert viewed.run() == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert viewed.run("def", artifact="report.html") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/def/artifacts/report.html"
        "?workflowType=machine_learning"
    )


def test_where_to_look_uses_the_console_command_or_the_servers_urls(tmp_path: Path) -> None:
    links = Links("1", "abc")
    text = where_to_look(
        tmp_path, tracking_uri="sqlite:////x/mlflow.db", links=links, report=tmp_path / "r.html"
    )
    cmd = console_command()
    assert f"{cmd} ui --run {tmp_path} --open" in text
    assert f"{cmd} pick --run {tmp_path} --rule knee" in text
    assert f"report      {tmp_path / 'r.html'}" in text
    assert "compare" not in text  # a study without both families has nothing to compare
    both = where_to_look(tmp_path, tracking_uri="sqlite:////x/mlflow.db", links=links, compare=True)
    assert f"{cmd} compare --run {tmp_path}" in both
    served = where_to_look(
        tmp_path, tracking_uri="http://mlflow.example.org:5000", links=Links("4", "p", views=True)
    )
    assert (
        "trials      http://mlflow.example.org:5000/#/experiments/4/runs?"
        "workflowType=machine_learning&viewStateShareKey=pptp-trials"
    ) in served
    assert f"{cmd} report --run {tmp_path}" in served  # no page yet: how to make one
    assert "ui --run" not in served  # a server has its UI already


def test_console_command_is_found_on_path_or_beside_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(links.shutil, "which", lambda name: "/usr/bin/pptp-search")
    assert console_command() == "pptp-search"
    monkeypatch.setattr(links.shutil, "which", lambda name: None)
    monkeypatch.chdir(REPO)
    beside = Path(sys.executable).parent / "pptp-search"
    if beside.is_file():  # installed (pip install -e .): the script beside this Python
        assert console_command() == str(beside.absolute().relative_to(REPO))
    monkeypatch.setattr(links.sys, "executable", "/nowhere/bin/python")
    assert console_command() == "/nowhere/bin/python -m search.console"


def test_prepare_refuses_a_missing_store_and_a_missing_run(tmp_path: Path) -> None:
    args = ui.build_parser().parse_args(["--tracking-uri", f"sqlite:///{tmp_path}/none.db"])
    with pytest.raises(ConfigError, match="no MLflow store at"):
        ui.prepare(args)
    with pytest.raises(ConfigError, match=r"state\.json"):
        ui.prepare(ui.build_parser().parse_args(["--run", str(tmp_path)]))
    store = fresh_store(tmp_path / "store")
    args = ui.build_parser().parse_args(["--tracking-uri", store, "--experiment", "nope"])
    with pytest.raises(ConfigError, match="no such experiment"):
        ui.prepare(args)


def test_study_links_find_each_study_and_its_run(tmp_path: Path) -> None:
    store = fresh_store(tmp_path / "store")
    client = MlflowClient(store)
    first = client.create_experiment("a", tags={"pptp.study": "a"})
    client.create_experiment("not-a-study")
    second = client.create_experiment("b", tags={"pptp.study": "b"})
    parent = client.create_run(second, tags={"pptp.kind": "study"}).info.run_id
    client.create_run(second, tags={"pptp.kind": "trial"})
    plan = ui.prepare(ui.build_parser().parse_args(["--tracking-uri", store]))
    found = dict(ui.study_links(plan, client))
    assert set(found) == {"a", "b"}
    assert found["b"].parent_run_id == parent and found["a"].parent_run_id is None
    assert found["a"].experiment_id == first and not found["a"].views
    lines = ui.describe(list(found.items()), "http://127.0.0.1:5000/", client)
    assert f"study run   http://127.0.0.1:5000/#/experiments/{second}/runs/{parent}?" in (
        "\n".join(lines)
    )


def test_prepare_reads_the_run_directory(tmp_path: Path) -> None:
    store = fresh_store(tmp_path / "store")
    run = make_run(tmp_path, tracking_uri=store, experiment_id="7", parent_run_id="abc")
    plan = ui.prepare(ui.build_parser().parse_args(["--run", str(run)]))
    assert (plan.tracking_uri, plan.experiment, plan.parent_run_id) == (store, "7", "abc")
    assert plan.host == "127.0.0.1"


@pytest.mark.slow
def test_server_starts_answers_and_stops_by_pid(tmp_path: Path) -> None:
    store = fresh_store(tmp_path)
    server = MlflowUi(store, port=None)
    start = time.monotonic()
    with server:
        assert server.answers()
        pid = server.pid
        assert server.base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(
            f"{server.base}api/2.0/mlflow/experiments/search?max_results=1", timeout=5
        ) as response:
            assert response.status == 200
        print(f"MLflow UI answered after {time.monotonic() - start:.1f} s")
        assert not port_free("127.0.0.1", int(server.port or 0))
        with pytest.raises(ConfigError, match="already listens"):
            MlflowUi(store, port=server.port).start()
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert not _group(pid)  # its workers are gone too
    assert port_free("127.0.0.1", int(server.port or 0))


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(entry.name))
    return alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_ui_command_prints_the_study_url_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    store = fresh_store(tmp_path / "store")
    client = MlflowClient(store)
    experiment = client.create_experiment("tiny", tags={"pptp.study": "tiny"})
    parent = client.create_run(experiment, run_name="tiny").info.run_id
    run = make_run(tmp_path, tracking_uri=store, experiment_id=experiment, parent_run_id=parent)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.console", "ui", "--run", str(run), "--port",
         str(free_port())],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []
    server_pid: int | None = None
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("study run"):
                break
        text = "".join(lines)
        # the first address printed is the study's runs table, not MLflow's welcome page
        first = re.search(r"MLflow UI   (\S+)", text)
        assert first and "runs?workflowType=machine_learning" in first.group(1), text
        match = re.search(r"server .*pid (\d+)", text)
        assert match, text
        server_pid = int(match.group(1))
        url = re.search(r"study       tiny: (\S+)", text)
        assert url, text
        assert f"#/experiments/{experiment}/runs?workflowType=machine_learning" in url.group(1)
        assert f"#/experiments/{experiment}/runs/{parent}?workflowType" in text
        with urllib.request.urlopen(url.group(1).split("#")[0] + "health", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends (the server has its own group)
        assert proc.wait(30) == 0
        assert not Path(f"/proc/{server_pid}").exists() or _zombie(server_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if server_pid is not None:  # a failed test must not leave the server's own group running
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server_pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_port_taken_under_the_servers_feet_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port is chosen, then bound by the server a few seconds later: another process may
    take it in between. The server then fails to bind and a new port is tried."""
    import socket

    store = fresh_store(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], free_port()])
        monkeypatch.setattr(ui, "port_free", lambda host, port: False)  # 5000 is "taken"
        monkeypatch.setattr(ui, "free_port", lambda host="127.0.0.1": next(ports))
        with MlflowUi(store, stop_timeout_s=5) as server:
            assert server.port != taken.getsockname()[1] and server.answers()


def test_ui_hint_points_at_one_run() -> None:
    cmd = console_command()
    assert ui_hint("sqlite:////s/mlflow.db", experiment_id="2", run_id="r", run_dir=Path("/x")) == (
        f"{cmd} ui --run /x, then #/experiments/2/runs/r?workflowType=machine_learning"
    )
    assert ui_hint(
        "sqlite:////s/mlflow.db", experiment_id="2", run_id="r", experiment_name="qs-localize"
    ) == (
        f"{cmd} ui --tracking-uri sqlite:////s/mlflow.db --experiment qs-localize, then "
        "#/experiments/2/runs/r?workflowType=machine_learning"
    )
    assert ui_hint("https://mlflow.example.org/", experiment_id="2") == (
        "https://mlflow.example.org/#/experiments/2/runs?workflowType=machine_learning"
    )
