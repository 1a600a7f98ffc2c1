"""search/pick.py, the command, on hand-made finished studies: rules through the arguments,
errors (one line, exit status 2), export, and one end-to-end re-train + adaptive audit +
registration on a tiny space (real training, a temporary MLflow store).

No Ray: the run directory is written directly (tests/fixtures_pick.py), as search/run.py would
leave it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest
import yaml
from fixtures_pick import FRONT, make_run, params_of, tiny_space

from pptp.config import TrialConfig
from search import pick
from search.space import load_space


def picked(run_dir: Path, *argv: str) -> int:
    plan = pick.prepare(pick.parse_args(["--run", str(run_dir), *argv]))
    return plan.pick.candidate.number


@pytest.fixture(scope="module")
def front_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FRONT study, shared by tests that only read it (and exit before exporting)."""
    return make_run(tmp_path_factory.mktemp("front"))


# --------------------------------------------------------------------------------------------
# rules, through the arguments


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--rule", "max-acc"], 0),
        (["--rule", "max-acc", "--max", "attack_tpr@0.1%fpr=0.01"], 2),
        (["--rule", "max-acc", "--max", "attack_tpr@0.1%fpr=0.02"], 1),  # bound inclusive
        (["--rule", "max-acc", "--max", "attack_auc=0.6", "--min", "test_acc=0.75"], 2),
        (["--rule", "max-acc", "--max", "attack_tpr@0.1%fpr=0.005"], 3),
        (["--rule", "max-acc", "--max", "attack_tpr@0.1%fpr=0.005", "--among", "all"], 4),
        (["--rule", "knee"], 2),
        ([], 2),  # knee is the default
    ],
)
def test_rules_pick_the_expected_trial(front_run: Path, argv: list[str], expected: int) -> None:
    assert picked(front_run, *argv) == expected


def test_off_front_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path)
    assert (
        pick.main(["--run", str(run_dir), "--rule", "max-acc", "--max", "attack_tpr@0.1%fpr=0.005"])
        == 0
    )
    out = capsys.readouterr().out
    assert "picked      trial 3" in out
    assert "trial 4 is off the front" in out


# --------------------------------------------------------------------------------------------
# errors: one line, exit status 2


def test_no_trial_meets_the_bound(front_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = front_run
    code = pick.main(
        ["--run", str(run_dir), "--rule", "max-acc", "--max", "attack_tpr@0.1%fpr=0.0005"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: no Pareto-front trial has attack_tpr@0.1%fpr <= 0.0005")
    assert "closest: trial 3 (attack_tpr@0.1%fpr 0.0010" in err
    assert err.count("\n") == 1
    assert not (run_dir / "picked.yaml").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rule", "best"], "unknown rule 'best'; known: knee, max-acc"),
        (["--max", "attack_tpr"], "--max 'attack_tpr': write METRIC=NUMBER"),
        (["--min", "test_acc=high"], "--min 'test_acc=high': write METRIC=NUMBER"),
        (["--max", "attack_tpr=0.1"], "unknown metric 'attack_tpr'; the trials recorded: "),
        (["--seeds", "-1"], "--seeds -1"),
        (["--alias", "prod"], "--alias needs --register NAME"),
        (["--register", "a/b"], "Names cannot contain '/'"),
        (["--register", "m", "--alias", "latest"], "reserved"),
    ],
)
def test_bad_arguments(
    front_run: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert pick.main(["--run", str(front_run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1


def test_unknown_metric_lists_the_valid_ones(
    front_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pick.main(["--run", str(front_run), "--max", "tpr=0.1"]) == 2
    err = capsys.readouterr().err
    for metric in ("attack_auc", "attack_tpr@0.1%fpr", "attack_tpr@1%fpr", "test_acc"):
        assert metric in err


def test_bad_run_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pick.main(["--run", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pick.main(["--run", str(empty)]) == 2
    assert "no study.db" in capsys.readouterr().err
    run_dir = make_run(tmp_path)
    (run_dir / "state.json").write_text("{not json")
    assert pick.main(["--run", str(run_dir)]) == 2
    assert "state.json is missing or unreadable" in capsys.readouterr().err


def test_study_without_completed_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path, points=[], failed=2)
    assert pick.main(["--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "no completed trial (2 trials: 2 fail" in err


# --------------------------------------------------------------------------------------------
# export


def test_export_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path)
    assert (
        pick.main(["--run", str(run_dir), "--rule", "max-acc", "--max", "attack_tpr@0.1%fpr=0.01"])
        == 0
    )
    out = capsys.readouterr().out
    assert "picked      trial 2" in out
    assert "screening (trial 2, seed 0)" in out
    path = run_dir / "picked.yaml"
    text = path.read_text()
    assert text.startswith("# Picked by search/pick.py")
    assert "# trial 2 " in text and "rule max-acc" in text
    doc = yaml.safe_load(text)
    assert set(doc) == {"study", "fixed", "params"}
    space = load_space(run_dir / "space.yaml")
    expected = space.trial_config(params_of(2))
    seed = {"train.seed": expected.train.seed}
    assert TrialConfig.from_flat({**doc["fixed"], **seed}) == expected
    assert set(doc["fixed"]) | set(seed) == set(TrialConfig().to_flat())
    # a space search/run.py runs as it is: one trial, train.seed 'searched' over its one value
    again = load_space(path)
    assert again.trial_config(seed) == expected
    assert again.study.name == "tiny-trial2"
    assert list(again.params) == ["train.seed"]
    assert again.study.objectives == space.study.objectives
    assert f"python search/run.py --space {path}" in out


def test_export_path_option(tmp_path: Path) -> None:
    target = tmp_path / "out" / "prod.yaml"
    assert pick.main(["--run", str(make_run(tmp_path)), "--export", str(target)]) == 0
    assert load_space(target).trial_config({"train.seed": 0}).protect.split == 3


# --------------------------------------------------------------------------------------------
# end to end: re-train, adaptive audit, registration


@pytest.fixture
def restore_mlflow_uris() -> Iterator[None]:
    import mlflow

    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


@pytest.mark.slow
def test_retrain_adaptive_register_end_to_end(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    restore_mlflow_uris: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow
    import torch
    from mlflow import MlflowClient

    import pptp.threads
    import pptp.trial
    from search.picking.model_card import SHIPPED_ACC_LINE

    # every re-training runs with the process's CPUs as torch threads, set explicitly
    seen: list[int] = []
    real_run_trial = pptp.trial.run_trial

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return real_run_trial(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pptp.trial, "run_trial", spy)
    monkeypatch.setattr(pptp.threads, "process_cpus", lambda: 1)
    before = torch.get_num_threads()

    from pptp.data import build_pool
    from search.tracking.study_tracker import StudyTracker
    from search.tracking.trial_tracker import TrialTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    source = tmp_path / "src"
    source.mkdir()
    space_data = tiny_space(tmp_path / "bank")
    (source / "tiny.yaml").write_text(yaml.safe_dump(space_data, sort_keys=False))
    tracker = StudyTracker(uri, "tiny", run_dir=tmp_path / "run")
    tracker.start(resolved_space=space_data, space_path=source / "tiny.yaml", space_sha256="0" * 64)
    run_ids = []
    for i in range(len(FRONT)):
        with TrialTracker(
            uri, tracker.experiment_id, tracker.parent_run_id, trial_number=i
        ) as trial:
            run_ids.append(trial.run_id)
    run_dir = make_run(
        tmp_path,
        tracking_uri=uri,
        parent_run_id=tracker.parent_run_id,
        experiment_id=tracker.experiment_id,
        run_ids=run_ids,
    )

    # a tracking store without the study's experiment: refused before anything trains
    other = f"sqlite:///{tmp_path}/other.db"
    assert (
        pick.main(
            [
                "--run",
                str(run_dir),
                "--seeds",
                "1",
                "--register",
                "tiny-model",
                "--tracking-uri",
                other,
            ]
        )
        == 2
    )
    assert "has no MLflow experiment 'tiny'" in capsys.readouterr().err
    assert not (tmp_path / "bank").exists()

    code = pick.main(
        [
            "--run",
            str(run_dir),
            "--rule",
            "knee",
            "--seeds",
            "1",
            "--adaptive",
            "--register",
            "tiny-model",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "picked      trial 2" in out
    assert "re-trained (1 seeds)" in out and "adaptive (1 seeds)" in out
    assert "adaptive - screening" in out and "paired" in out
    assert "models:/tiny-model@production" in out
    assert "threads     1 torch threads" in out
    # who leaks in the re-audited pick, beside the export (tiny's data is 8x8 digits)
    assert "who leaks   " in out and "exposed.csv, class_tpr.csv, exposed.png" in out
    assert seen and set(seen) == {1} and torch.get_num_threads() == before

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("tiny-model", "production")
    assert version.version in (1, "1")
    assert version.run_id is not None
    pick_run = client.get_run(version.run_id)
    assert pick_run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert pick_run.data.tags["pptp.kind"] == "pick"
    assert pick_run.data.tags["picked_trial"] == "2"
    assert pick_run.data.tags["rule"] == "knee"
    for metric in (
        "test_acc",
        "attack_auc",
        "adaptive/attack_auc_mean",
        "gap/attack_auc",
        "retrained/attack_auc_mean",
        "screening/attack_auc",
    ):
        assert metric in pick_run.data.metrics, metric
    assert math.isfinite(pick_run.data.metrics["gap/attack_auc"])
    assert pick_run.data.params["protect.split"] == "3"
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"picked.yaml", "model_card.md"} <= artifacts
    # the shipped model trained on the whole pool (200), the audit target on half of it
    assert pick_run.data.metrics["members"] == 200
    assert pick_run.data.metrics["audit_members"] == 100
    assert "trained on 200 examples (the audit target on 100" in out
    assert client.get_run(run_ids[2]).data.tags.get("picked") == "true"
    assert client.get_run(run_ids[0]).data.tags.get("picked") is None

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pytorch.load_model("models:/tiny-model@production")
    cfg = load_space(run_dir / "picked.yaml").trial_config({"train.seed": 0})
    pool = build_pool(cfg.data)
    logits = model(pool.x_test.cpu())
    assert tuple(logits.shape) == (len(pool.y_test), pool.num_classes)
    # the registered model predicts the held-out test set at the accuracy its card states
    # (within 0.005: the same float32 CPU forward, exported by torch.export)
    card = mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_card.md")
    assert "## What was not measured" in card and "100 members" in card
    stated = float(card.split(SHIPPED_ACC_LINE)[1].split()[0])
    accuracy = float((logits.argmax(1) == pool.y_test).float().mean())
    assert abs(accuracy - stated) <= 0.005, (accuracy, stated)

    # registering again adds version 2 and moves the alias
    assert (
        pick.main(
            [
                "--run",
                str(run_dir),
                "--rule",
                "knee",
                "--register",
                "tiny-model",
                "--alias",
                "staging",
            ]
        )
        == 0
    )
    assert str(client.get_model_version_by_alias("tiny-model", "staging").version) == "2"
    assert str(client.get_model_version_by_alias("tiny-model", "production").version) == "1"
