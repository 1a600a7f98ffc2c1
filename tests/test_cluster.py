"""search.cluster: --address is probed within seconds (nothing there, not Ray, a real Ray head);
max_concurrent is capped to what the resources run at once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_ray import ray_tmp

from search.cluster import (
    RayUnreachable,
    concurrency_cap,
    probe_ray_address,
    ray_address_file,
    resolve_address,
)

__all__ = ["ray_tmp"]  # the fixture, imported for its use below


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
