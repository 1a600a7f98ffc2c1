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


def test_offline_the_headline_command_stops_at_once_with_where_to_put_the_files(
    tmp_path: Path, offline: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(
        [
            "--space",
            str(REPO / "spaces" / "resnet.yaml"),
            "--data-dir",
            str(tmp_path / "data"),
            "--output",
            str(run),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert offline and "cifar-10-python.tar.gz" in offline[0]  # torchvision's download was tried
    assert "cifar-10-batches-py" in err and "Downloading failed" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not run.exists() and not (tmp_path / "mlflow.db").exists()  # nothing started
