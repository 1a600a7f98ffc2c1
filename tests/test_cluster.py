"""search.running.cluster: --address is probed within seconds (nothing there, not Ray, a real Ray
head);
max_concurrent is capped to what the resources run at once. Secure by default: a local Ray
listens on 127.0.0.1 only, and joining a cluster leaves Ray's authentication to the user."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_ray import ray_tmp

from search.running.cluster import (
    RayUnreachable,
    concurrency_cap,
    probe_ray_address,
    ray_address_file,
    resolve_address,
)

__all__ = ["ray_tmp"]  # the fixture, imported for its use below

REPO = Path(__file__).resolve().parents[1]


def _serve(reply: bytes) -> Iterator[int]:
    """A one-connection TCP server on 127.0.0.1 that sends ``reply`` once the client writes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            conn.sendall(reply)
            time.sleep(0.5)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    thread.join(timeout=2)


@pytest.fixture
def redis_like() -> Iterator[int]:
    yield from _serve(b"-ERR unknown command 'PRI'\r\n")


@pytest.fixture
def grpc_like() -> Iterator[int]:
    yield from _serve(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_is_refused_at_once() -> None:
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(RayUnreachable, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        probe_ray_address(f"127.0.0.1:{port}", timeout_s=2)
    assert time.monotonic() - start < 3


def test_a_service_that_is_not_ray_is_refused(redis_like: int) -> None:
    with pytest.raises(RayUnreachable, match="is not a Ray head"):
        probe_ray_address(f"127.0.0.1:{redis_like}", timeout_s=2)


def test_a_grpc_server_passes(grpc_like: int) -> None:
    assert probe_ray_address(f"127.0.0.1:{grpc_like}", timeout_s=2) == f"127.0.0.1:{grpc_like}"


def test_bad_forms_and_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RayUnreachable, match="give the port"):
        probe_ray_address("127.0.0.1")
    assert resolve_address("local") is None
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(RayUnreachable, match="no running Ray cluster found"):
        resolve_address("auto")
    ray_address_file().parent.mkdir(parents=True)
    ray_address_file().write_text("10.1.2.3:6380\n")
    assert resolve_address("auto") == "10.1.2.3:6380"
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:7000")
    assert resolve_address("auto") == "10.9.9.9:7000"


@pytest.mark.slow
def test_a_real_ray_head_passes(ray_tmp: str) -> None:
    import ray

    context = ray.init(num_cpus=1, include_dashboard=False, object_store_memory=80 * 2**20)
    try:
        address = context.address_info["gcs_address"]
        assert probe_ray_address(address, timeout_s=5) == address
    finally:
        ray.shutdown()


@pytest.mark.parametrize(
    ("wanted", "cpus", "gpus", "available", "cap"),
    [
        (10000, 1, 0, {"CPU": 2}, 2),
        (2, 1, 0, {"CPU": 2}, 2),
        (8, 0.5, 0.25, {"CPU": 16, "GPU": 1}, 4),
        (8, 3, 0, {"CPU": 2}, 1),  # never below 1 (a trial that does not fit is refused earlier)
    ],
)
def test_concurrency_cap(
    wanted: int, cpus: float, gpus: float, available: dict[str, float], cap: int
) -> None:
    got, warning = concurrency_cap(wanted, cpus=cpus, gpus=gpus, available=available)
    assert got == cap
    assert (warning is None) == (got == wanted)
    if warning:
        assert f"study.max_concurrent = {wanted} capped to {cap}" in warning


def test_ray_auth_is_left_to_the_user_when_joining_a_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--address``: the driver sets nothing of Ray's (the user's environment holds); a local
    run sets RAY_AUTH_MODE=disabled unless the user chose otherwise."""
    from search.run import main

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    port = _free_port()
    space = str(REPO / "spaces" / "quickstart.yaml")
    assert main(["--space", space, "--address", f"127.0.0.1:{port}"]) == 2
    assert "no Ray cluster answers" in capsys.readouterr().err
    assert "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the user's choice holds for a local run too
    assert main(["--space", "no-such-space.yaml"]) == 2
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert main(["--space", "no-such-space.yaml"]) == 2
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_the_loopback_switch_is_set_only_before_ray_is_imported() -> None:
    code = (
        "import os, sys; from search.cli.entry import local_ray_environment as f; f(); "
        "a = os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'); "
        "os.environ.pop('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', None); import ray; f(); "
        "print(a, os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["0", "None"]


@pytest.mark.slow
def test_a_local_run_listens_on_loopback_only(ray_tmp: str) -> None:
    """What search/run.py sets before a local ray.init, measured with ``ss -ltnp`` over every
    process of that Ray (bench/ray_sockets.py): no socket on every interface."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run(
        [sys.executable, "bench/ray_sockets.py"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "node address Ray reports: 127.0.0.1" in lines
    assert any("gcs_server" in line for line in lines) and any("raylet" in line for line in lines)
    assert lines[-1].endswith("sockets, 0 on every interface"), out.stdout
