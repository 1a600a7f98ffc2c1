"""Where MLflow records go, and whether they can go there, checked before anything starts.

Embedded store: ``sqlite:///<repo>/mlflow/mlflow.db`` (:func:`default_tracking_uri`). For any
``sqlite`` store, experiments created here put their artifacts in ``artifacts/`` beside the
database file, as ``file://`` URIs (:func:`artifact_location`; MLflow's own default is ``./mlruns``
under whatever directory the process happens to run in, which differs between the driver and Ray
workers). For a tracking server the server decides where artifacts go. See ``mlflow/README.md``
for the UI command.

:func:`check_tracking` probes a URI in seconds (a tracking server, a SQLite folder, a database
port) so that an unusable store is one clear :class:`TrackingUnavailable` error (exit status 2)
rather than MLflow's minutes of retries.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import os
import re
import socket
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pptp.errors import ConfigError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

_SQL_SERVER_SCHEMES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


class TrackingUnavailable(ConfigError):
    """The tracking URI cannot be used (server down, store not writable, unknown scheme)."""


def default_tracking_uri() -> str:
    """The embedded store: a SQLite file in the working tree's ``mlflow/`` folder."""
    return f"sqlite:///{REPO_ROOT}/mlflow/mlflow.db"


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded store.

    A relative SQLite path (``sqlite:///mlflow.db``) is made absolute against the current
    directory here, on the driver: Ray workers run in other directories and must reach the same
    file. Trailing slashes of server URIs are dropped.
    """
    chosen = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not chosen:
        return default_tracking_uri()
    scheme = urllib.parse.urlsplit(chosen).scheme.lower()
    if scheme == "sqlite":
        path, query = sqlite_path(chosen)
        if path is not None and not path.is_absolute():
            return f"sqlite:///{path.resolve()}{query}"
        return chosen
    if scheme in ("http", "https"):
        return chosen.rstrip("/")
    return database_url(chosen)


def database_url(uri: str) -> str:
    """``uri`` with a PostgreSQL driver SQLAlchemy can load, for MLflow's and Optuna's stores.

    SQLAlchemy 2.1 (which MLflow 3.17 installs) maps ``postgresql://`` to psycopg 3; the
    project's ``server`` extra installs psycopg2 (``pip install -e '.[server]'``). So when
    ``psycopg`` cannot be imported and ``psycopg2`` can, ``postgresql://`` (and Heroku's
    ``postgres://``) become ``postgresql+psycopg2://``, said once per process as a warning. A URI
    that names its driver (``postgresql+psycopg2://``, ``postgresql+psycopg://``) and any other
    scheme are returned as they are. No driver at all is a :class:`TrackingUnavailable` naming
    the extra.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        return uri
    have_3, have_2 = _importable("psycopg"), _importable("psycopg2")
    if have_3:
        return f"postgresql://{rest}"
    if have_2:
        global _PSYCOPG_NOTE_SHOWN
        if not _PSYCOPG_NOTE_SHOWN:
            _PSYCOPG_NOTE_SHOWN = True
            logger.warning(
                "%s://... : psycopg 3 is not installed, using psycopg2 (postgresql+psycopg2://)",
                scheme,
            )
        return f"postgresql+psycopg2://{rest}"
    raise TrackingUnavailable(
        f"{redact(uri)}: no PostgreSQL driver is installed; install the server extra "
        "(pip install -e '.[server]', which brings psycopg2-binary)"
    )


def redact(uri: str) -> str:
    """``uri`` with its password (if any) shown as ``***``, for printing and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    user = urllib.parse.quote(parts.username or "", safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


_PSYCOPG_NOTE_SHOWN = False


def check_tracking(uri: str, *, timeout_s: float = 10.0) -> None:
    """Raise :class:`TrackingUnavailable` with one clear message unless ``uri`` can be used.

    - ``http(s)://``: one GET of the experiments-search endpoint with ``timeout_s`` (MLflow's own
      client retries with backoff for minutes before failing); credentials from
      ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` are sent.
    - ``sqlite:///``: the database's folder is created if needed and must be writable.
    - ``postgresql``/``mysql``/``mssql``: a TCP connection to the database host must open (a
      ``postgresql://`` URI is first given a driver, :func:`database_url`).
    - anything else: error.
    """
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_http(uri, timeout_s=timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme.split("+")[0] in (*_SQL_SERVER_SCHEMES, "postgres"):
        database_url(uri)  # a missing driver is named here, before anything starts
        _check_tcp(uri, timeout_s=timeout_s)
    else:
        raise TrackingUnavailable(
            f"tracking URI {uri!r} has an unsupported scheme {scheme or '(none)'!r}; use "
            "http(s)://host:port for a tracking server or sqlite:///path/to/mlflow.db for a "
            "local store (fix --tracking-uri or MLFLOW_TRACKING_URI)"
        )


def sqlite_path(uri: str) -> tuple[Path | None, str]:
    """``sqlite:///rel.db`` -> (Path("rel.db"), ""); ``sqlite:////abs.db?x=1`` -> (/abs.db, "?x=1").

    None for an in-memory database (``sqlite://`` or ``sqlite:///:memory:``).
    """
    rest, _, query = uri.partition("?")
    query = f"?{query}" if query else ""
    prefix = "sqlite:///"
    if not rest.lower().startswith(prefix):
        return None, query
    raw = rest[len(prefix) :]
    if raw in ("", ":memory:"):
        return None, query
    return Path(raw), query


def _check_sqlite(uri: str) -> None:
    path, _ = sqlite_path(uri)
    if path is None:
        raise TrackingUnavailable(
            f"tracking URI {uri!r} is an in-memory SQLite database, which trial processes "
            "cannot share; give a file, e.g. sqlite:///mlflow/mlflow.db (fix --tracking-uri)"
        )
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise PermissionError(f"{path} is not readable and writable")
    except OSError as err:
        raise TrackingUnavailable(
            f"tracking store {uri!r} is not usable: cannot write to {folder} ({err}); fix the "
            "folder's permissions or give another --tracking-uri"
        ) from err


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        secret = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        return {"Authorization": f"Basic {base64.b64encode(secret).decode()}"}
    return {}


def _tls_context() -> ssl.SSLContext | None:
    """The TLS settings MLflow's own client honours: a CA bundle or no verification."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cafile) if cafile else None


def _check_http(uri: str, *, timeout_s: float) -> None:
    probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(probe, headers=_auth_headers(), method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=_tls_context()) as response:
            response.read(1)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise TrackingUnavailable(
                f"tracking server {uri} refused access (HTTP {err.code}); set "
                "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
            ) from err
        raise TrackingUnavailable(
            f"tracking server {uri} answered HTTP {err.code} to {probe}; is it an MLflow "
            "tracking server? Fix --tracking-uri (or MLFLOW_TRACKING_URI)"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(
            f"tracking server {uri} is not reachable ({reason}; waited at most {timeout_s:g} s); "
            "start it (see mlflow/README.md, e.g. `mlflow server --backend-store-uri "
            "sqlite:///mlflow/mlflow.db --host 127.0.0.1 --port 5000`) or fix --tracking-uri"
        ) from err


def _check_tcp(uri: str, *, timeout_s: float) -> None:
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower().split("+")[0]
    scheme = "postgresql" if scheme == "postgres" else scheme
    host = parts.hostname or "localhost"
    port = parts.port or _SQL_SERVER_SCHEMES[scheme]
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        raise TrackingUnavailable(
            f"database {parts.scheme}://{host}:{port} is not reachable ({err}); start "
            "the database or fix the URI (--tracking-uri, --storage)"
        ) from err


def artifact_location(uri: str, study_name: str) -> str | None:
    """``file://<db folder>/artifacts/<study>`` for SQLite stores; None (server default) else."""
    if urllib.parse.urlsplit(uri).scheme.lower() != "sqlite":
        return None
    path, _ = sqlite_path(uri)
    if path is None:
        return None
    safe = re.sub(r"[^\w.\-]", "_", study_name) or "study"
    return (path.resolve().parent / "artifacts" / safe).as_uri()
