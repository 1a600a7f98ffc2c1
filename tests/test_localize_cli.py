"""search/localize.py, the command: bad input exits 2 before training; a run writes the three
files and an MLflow run of its own (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pptp.localize import LocalizationResult


def _space(tmp_path: Path, **data: object) -> Path:
    fixed = {"name": "digits", "pool_size": 400, "test_size": 200, "val_size": 0, **data}
    path = tmp_path / "space.yaml"
    path.write_text(
        "study: {name: loc-test, sampler: random}\n"
        f"fixed:\n  data: {json.dumps(fixed)}\n"
        "  model: {name: mlp, width: 16, norm: batch}\n"
        "  train: {epochs: 2, batch_size: 64, crop_pad: 1, device: cpu}\n"
        "  attack: {attacks: [loss]}\n"
        "params:\n  protect.strength: {type: float, low: 0.0, high: 1.0}\n"
    )
    return path


def _main(argv: list[str]) -> int:
    from search.localize import main

    return main(argv)


def test_command_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert _main(["--space", str(tmp_path / "nope.yaml"), "--tracking-uri", uri]) == 2
    assert "error:" in capsys.readouterr().err
    small = _space(tmp_path, pool_size=6)
    assert _main(["--space", str(small), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "at least 4" in err and "space.yaml" in err
    good = _space(tmp_path)
    assert _main(["--space", str(good), "--seeds", "0,x", "--tracking-uri", uri]) == 2
    assert "--seeds" in capsys.readouterr().err


@pytest.mark.slow
def test_command_writes_files_and_an_mlflow_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    import pptp.localize.experiment as experiment
    import pptp.threads

    # the trainings run with the process's CPUs as torch threads, set explicitly (pptp/threads.py)
    seen: list[int] = []
    real_train = experiment.train

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return real_train(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(experiment, "train", spy)
    monkeypatch.setattr(pptp.threads, "process_cpus", lambda: 1)
    before = torch.get_num_threads()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    code = _main(
        [
            "--space",
            str(_space(tmp_path)),
            "--seeds",
            "3",
            "--output",
            str(out),
            "--tracking-uri",
            uri,
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "seed 1/1 (train.seed 3): A: training on 200 examples" in printed
    assert "localization: {run:" in printed
    assert "threads     1 torch threads" in printed
    assert seen == [1, 1] and torch.get_num_threads() == before  # A and B; restored after
    for name in ("localization.json", "localization.csv", "localization.png"):
        assert (out / name).stat().st_size > 0
    result = LocalizationResult.load(out / "localization.json")
    assert result.seeds == (3,) and result.model == "mlp"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("loc-test-localize")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["pptp.kind"] == "localize"
    assert run.info.run_id in printed
    for g in result.groups:
        assert run.data.metrics[f"risk/{g.group}"] == pytest.approx(g.privacy_risk_mean)
        assert f"generalization/{g.group}" in run.data.metrics
    assert run.data.params["model.name"] == "mlp"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"localization.json", "localization.csv", "localization.png"}
    # a second run into the same folder is refused
    assert (
        _main(["--space", str(_space(tmp_path)), "--output", str(out), "--tracking-uri", uri]) == 2
    )
