"""The headline command, ``python search/run.py --space spaces/resnet.yaml``, where its users are.

The space asks torchvision to download CIFAR-10 when it is not on disk (``data.download: true``):
with internet that is torchvision's own MD5-checked download, with its progress bar; offline
(this machine, CI) the command must stop at once, before anything starts, with the message that
says where to put the files. The download is attempted through torchvision's ``urlopen``, which
the ``offline`` fixture (conftest.py) makes fail as on an offline machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.run import main

REPO = Path(__file__).resolve().parents[1]


def test_the_resnet_space_downloads_cifar10_unless_told_not_to() -> None:
    data = yaml.safe_load((REPO / "spaces" / "resnet.yaml").read_text())["fixed"]["data"]
    assert data["name"] == "cifar10" and data["download"] is True


def _headline(tmp_path: Path) -> int:
    return main(
        [
            "--space",
            str(REPO / "spaces" / "resnet.yaml"),
            "--data-dir",
            str(tmp_path / "data"),
            "--output",
            str(tmp_path / "run"),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ]
    )


def test_without_a_gpu_the_headline_command_stops_before_any_download(
    tmp_path: Path, offline: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A CPU-only machine is told so first: nothing is downloaded for a study it cannot run."""
    monkeypatch.setattr("os.cpu_count", lambda: 16)  # the CPUs the space asks for, not a GPU
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert _headline(tmp_path) == 2
    err = capsys.readouterr().err
    assert "study.resources.gpus" in err and "0 GPUs" in err
    assert offline == []  # no download was tried
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


def test_offline_the_headline_command_stops_at_once_with_where_to_put_the_files(
    tmp_path: Path, offline: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """On a GPU machine (one is pretended here, with the CPUs the space asks for) without
    internet."""
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    code = _headline(tmp_path)
    err = capsys.readouterr().err
    assert code == 2, err
    assert offline and "cifar-10-python.tar.gz" in offline[0]  # torchvision's download was tried
    assert "cifar-10-batches-py" in err and "Downloading failed" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()
