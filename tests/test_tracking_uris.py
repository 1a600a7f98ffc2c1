"""search.tracking.uris: which store, and whether it can be used, decided in seconds."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from pptp.errors import ConfigError
from search.tracking.uris import (
    REPO_ROOT,
    TrackingUnavailable,
    artifact_location,
    check_tracking,
    default_tracking_uri,
    resolve_tracking_uri,
)


def test_default_and_resolved_uris(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = default_tracking_uri()
    assert default == f"sqlite:///{REPO_ROOT}/mlflow/mlflow.db"
    assert resolve_tracking_uri(None) == default
    assert resolve_tracking_uri("http://example.org:5000/") == "http://example.org:5000"
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///sub/m.db") == f"sqlite:///{tmp_path}/sub/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://10.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_tracking_unreachable_server_fails_fast() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    began = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match="not reachable") as err:
        check_tracking(uri, timeout_s=3.0)
    assert time.perf_counter() - began < 5.0
    assert uri in str(err.value)
    assert "--tracking-uri" in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_check_tracking_sql_server_unreachable() -> None:
    with pytest.raises(TrackingUnavailable, match="not reachable"):
        check_tracking(f"postgresql://u:p@127.0.0.1:{free_port()}/db", timeout_s=2.0)


def test_check_tracking_sqlite(tmp_path: Path) -> None:
    check_tracking(f"sqlite:///{tmp_path}/new/sub/mlflow.db")
    assert (tmp_path / "new" / "sub").is_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingUnavailable, match="cannot write") as err:
        check_tracking(f"sqlite:///{blocker}/mlflow.db")
    assert str(blocker) in str(err.value)
    with pytest.raises(TrackingUnavailable, match="in-memory"):
        check_tracking("sqlite:///:memory:")


@pytest.mark.parametrize("uri", ["ftp://host/x", "mlruns", "/abs/folder", "databricks"])
def test_check_tracking_unknown_scheme(uri: str) -> None:
    with pytest.raises(TrackingUnavailable, match="unsupported scheme"):
        check_tracking(uri)


def test_artifact_location_beside_a_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    assert artifact_location(uri, "my study/1") == (tmp_path / "artifacts" / "my_study_1").as_uri()
    assert artifact_location("http://127.0.0.1:5000", "s") is None  # the server decides
    assert artifact_location("sqlite:///:memory:", "s") is None
