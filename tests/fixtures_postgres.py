"""A real PostgreSQL for the tests, and an ``mlflow server`` on it.

The project's machines and CI run PostgreSQL on 127.0.0.1:5432 with trust authentication (roles
``root`` and ``postgres``): :func:`postgres_url` uses it. Where nothing answers there, it starts a
private server from the Debian package's binaries (``/usr/lib/postgresql/*/bin``) in a temporary
folder, as a non-root user (``initdb`` refuses root), on a free port of 127.0.0.1, and stops it by
PID at the end of the session. Never a skip: no PostgreSQL at all is a failure that says what to
install. Each test gets a database of its own (:func:`fresh_database`), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HOST, PORT = "127.0.0.1", 5432
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=2):
        return True
    return False


def _connect(base: str, database: str = "postgres") -> Any:
    import psycopg2

    connection = psycopg2.connect(f"{base}/{database}", connect_timeout=5)
    connection.autocommit = True
    return connection


class PrivatePostgres:
    """A PostgreSQL server of this test session, from the Debian package's binaries, in a folder
    of its own under /tmp (which the non-root user must be able to reach), removed by
    :meth:`stop`."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            pytest.fail(
                f"no PostgreSQL answers on {HOST}:{PORT} and /usr/lib/postgresql/*/bin/initdb "
                "does not exist: install it (apt-get install -y postgresql) or start one"
            )
        bindir = Path(found[-1]).parent
        folder = Path(tempfile.mkdtemp(prefix="pptp-pg-", dir="/tmp"))
        self.folder, self.port = folder, free_port()
        user = "nobody" if os.geteuid() == 0 else None  # initdb refuses to run as root
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        data = folder / "data"
        initdb = subprocess.run(
            [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            user=user,
            capture_output=True,
            text=True,
            cwd=folder,
        )
        if initdb.returncode:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.fail(f"initdb failed ({initdb.returncode}):\n{initdb.stderr[-2000:]}")
        self.process = subprocess.Popen(
            [bindir / "postgres", "-D", data, "-h", HOST, "-p", str(self.port), "-k", folder],
            user=user,
            stdout=subprocess.DEVNULL,
            stderr=(folder / "server.log").open("w"),
            start_new_session=True,
            cwd=folder,
        )
        self.url = f"postgresql://postgres@{HOST}:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                _connect(self.url).close()
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (folder / "server.log").read_text()[-2000:]
                    self.stop()
                    pytest.fail(f"the private PostgreSQL did not start:\n{log}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:<port>`` of a server that answers (no database)."""
    if _answers(PORT):
        yield f"postgresql://postgres@{HOST}:{PORT}"
        return
    server = PrivatePostgres()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def fresh_database(base: str) -> Iterator[str]:
    """A new database on the server at ``base``, dropped afterwards; yields its
    ``postgresql+psycopg2://`` URL (psycopg2 is what the ``server`` extra installs)."""
    name = f"pptp_test_{uuid.uuid4().hex[:10]}"
    admin = _connect(base)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield f"{base.replace('postgresql://', 'postgresql+psycopg2://', 1)}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def database_exists(base: str, name: str) -> bool:
    admin = _connect(base)
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cursor.fetchone() is not None
    finally:
        admin.close()


class MlflowServer:
    """``mlflow server`` on a PostgreSQL store with proxied artifacts, on 127.0.0.1 and a free
    port, with the light settings of mlflow/README.md; stopped by its process group's PID."""

    def __init__(self, store_url: str, artifacts: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        mlflow = Path(sys.executable).parent / "mlflow"
        command = [str(mlflow), "server", "--backend-store-uri", store_url]
        command += ["--artifacts-destination", str(artifacts), "--host", HOST]
        command += ["--port", str(self.port), "--workers", "1"]
        self.log = log
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=artifacts.parent,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"mlflow server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            data = response.read()
        return json.loads(data) if path.startswith("/api/") else data

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        """SIGTERM to the whole process group (the server's workers too), SIGKILL after 20 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
