"""Shared fixtures: a tiny digits pool (bundled data, offline) and a tiny MNIST-format folder.

``tests/`` has no ``__init__.py``: pytest puts it on ``sys.path``, so helpers such as
``fixtures_torchvision`` import as top-level modules.
"""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fixtures_torchvision import TinyImages, write_mnist

from pptp.data import Pool, make_pool
from pptp.datasets import SYSTEM_DATA_ENV


@pytest.fixture(autouse=True)
def _no_mlflow_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import mlflow`` writes telemetry files under the home directory unless this is set."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(autouse=True)
def _no_system_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignore dataset copies that system packages installed (e.g. Debian's dataset-fashion-mnist),
    so that no test depends on what the machine has: tests use the data they write."""
    monkeypatch.setenv(SYSTEM_DATA_ENV, "0")


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_delivered() -> None:
    """Tests send Ctrl-C (SIGINT) to the drivers and servers they start. A shell that starts the
    suite in the background without job control (``cmd &`` in a script) makes SIGINT ignored, and
    an ignored signal is inherited by every child: their Ctrl-C would do nothing. Python's own
    handler is not inherited (exec resets it to the default), so put it back for the session."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _ctrl_c_left_as_it_was(request: pytest.FixtureRequest) -> object:
    """A test must leave Ctrl-C as it found it: an ignored SIGINT (SIG_IGN) is inherited by every
    process started later, so the drivers and servers of later tests would ignore their Ctrl-C.
    Fails the test that changed it, and puts Python's handler back."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"{request.node.nodeid} left SIGINT set to {after!r} (was {before!r})")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No internet, as on these machines: every ``urllib.request.urlopen`` (what torchvision's
    downloads call) raises URLError. Returns the URLs that were tried, in order."""
    calls: list[str] = []

    def refuse(request: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


@pytest.fixture(scope="session")
def digits_pool() -> Pool:
    """digits, seed 0: 1,297 pool, 100 validation and 400 test images, 1x8x8, on the CPU."""
    return make_pool("digits", seed=0, test_size=400, val_size=100)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyImages]:
    """A data directory holding 50 training and 20 test 28x28 MNIST images (IDX files)."""
    root = tmp_path_factory.mktemp("mnist")
    return root, write_mnist(root)
