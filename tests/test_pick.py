"""search/pick.py on hand-made finished studies: rules, bounds, errors, export, and one end-to-end
re-train + adaptive audit + registration on a tiny space (real training, a temporary MLflow store).

No Ray: the run directory is written directly (state.json, an Optuna study.db with hand-made
trials, the resolved space.yaml), as search/run.py would leave it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import optuna
import pytest
import yaml

from pptp.config import TrialConfig
from search import pick, rundir
from search.space import Objective, load_space

OBJECTIVES = (Objective("test_acc", "maximize"), Objective("attack_auc", "minimize"))


def tiny_space(bank_dir: Path) -> dict[str, Any]:
    """digits, MLP width 16, 2 epochs, pool 200, loss + lira_offline with 2 references."""
    return {
        "study": {
            "name": "tiny",
            "objectives": {"test_acc": "maximize", "attack_auc": "minimize"},
            "sampler": "random",
            "n_trials": 6,
            "max_concurrent": 1,
            "constraints": [{"metric": "test_acc", "min": 0.1}],
        },
        "fixed": {
            "data": {"name": "digits", "pool_size": 200},
            "model": {"name": "mlp", "width": 16, "norm": "none"},
            "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "warmup_epochs": 1},
            "attack": {
                "attacks": ["loss", "lira_offline"],
                "n_references": 2,
                "bank_dir": str(bank_dir),
            },
        },
        "params": {
            "protect.operator": {"type": "categorical", "choices": ["damp", "anchor"]},
            "protect.strength": {"type": "float", "low": 0.0, "high": 1.0},
            "protect.split": {"type": "int", "low": 1, "high": 3},
        },
    }


# (test_acc, attack_auc, attack_tpr@0.1%fpr); trial 4 is dominated by trial 1 (off the front)
FRONT = [
    (0.95, 0.80, 0.050),
    (0.93, 0.62, 0.020),
    (0.90, 0.55, 0.008),
    (0.70, 0.51, 0.001),
    (0.85, 0.70, 0.004),
]


def _params(i: int) -> dict[str, Any]:
    return {
        "protect.operator": ("damp", "anchor")[i % 2],
        "protect.strength": round(0.1 + 0.15 * i, 3),
        "protect.split": 1 + i % 3,
    }


def make_run(
    tmp_path: Path,
    points: Sequence[tuple[float, float, float]] = FRONT,
    *,
    tracking_uri: str = "sqlite:///unused.db",
    parent_run_id: str | None = None,
    experiment_id: str | None = None,
    run_ids: Sequence[str | None] = (),
    failed: int = 0,
) -> Path:
    """A run directory as search/run.py leaves it, with hand-made COMPLETE (and FAIL) trials."""
    source = tmp_path / "tiny.yaml"
    source.write_text(yaml.safe_dump(tiny_space(tmp_path / "bank"), sort_keys=False))
    space = load_space(source)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "space.yaml").write_text(yaml.safe_dump(space.resolved(), sort_keys=False))
    study = optuna.create_study(
        storage=rundir.storage(run_dir), study_name="tiny", directions=space.study.directions
    )
    for i, (acc, auc, tpr) in enumerate(points):
        params = _params(i)
        attrs: dict[str, Any] = {
            "test_acc": acc,
            "attack_auc": auc,
            "attack_tpr@0.1%fpr": tpr,
            "attack_tpr@1%fpr": min(1.0, 3 * tpr),
            "operator": params["protect.operator"],
            "strength": params["protect.strength"],
            "defense": "none",
            "protected_groups": "fc1",
            "seconds": 1.5,
        }
        if i < len(run_ids) and run_ids[i]:
            attrs["mlflow_run_id"] = run_ids[i]
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: space.params[k] for k in params},
                values=[acc, auc],
                user_attrs=attrs,
                constraints={"test_acc>=0.1": 0.1 - acc},
            )
        )
    for _ in range(failed):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    rundir.write_state(
        run_dir,
        rundir.RunState(
            study_name="tiny",
            space_path=str(source),
            space_sha256=space.sha256,
            tracking_uri=tracking_uri,
            parent_run_id=parent_run_id,
            experiment_id=experiment_id,
        ),
    )
    return run_dir


def picked(run_dir: Path, *argv: str) -> int:
    plan = pick.prepare(pick.parse_args(["--run", str(run_dir), *argv]))
    return plan.pick.candidate.number


@pytest.fixture(scope="module")
def front_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FRONT study, shared by tests that only read it (and exit before exporting)."""
    return make_run(tmp_path_factory.mktemp("front"))


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


# --------------------------------------------------------------------------------------------
# rules


def test_front_is_optunas_and_excludes_dominated(front_run: Path) -> None:
    run = pick.open_run(front_run)
    front = pick.candidates(run)
    assert sorted(c.number for c in front) == [0, 1, 2, 3]
    every = pick.candidates(run, among="all")
    assert sorted(c.number for c in every) == [0, 1, 2, 3, 4]
    assert not next(c for c in every if c.number == 4).on_front


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


def test_knee_scores_known_answer() -> None:
    """Scaled test_acc over [0.70, 0.95] and attack_auc over [0.51, 0.80] (lower is better)."""
    cands = [
        pick.Candidate(i, {}, {"test_acc": a, "attack_auc": u}, {}, True)
        for i, (a, u, _) in enumerate(FRONT[:4])
    ]
    scores = pick.knee_scores(cands, OBJECTIVES)
    assert scores[0] == pytest.approx(1.0)  # best accuracy, worst AUC
    assert scores[3] == pytest.approx(1.0)  # the other extreme
    assert scores[1] == pytest.approx(math.hypot(1 - 0.92, 1 - 0.18 / 0.29))
    assert scores[2] == pytest.approx(math.hypot(1 - 0.80, 1 - 0.25 / 0.29))
    assert pick.knee(cands, OBJECTIVES).candidate.number == 2
    # one candidate, or objectives without spread: distance 0, still a pick
    one = pick.knee(cands[:1], OBJECTIVES)
    assert one.candidate.number == 0
    assert pick.knee_scores(cands[:1], OBJECTIVES) == {0: 0.0}


def test_knee_is_invariant_to_direction_and_scale() -> None:
    """Flipping a minimised objective into a maximised one (negated values), or rescaling an
    objective, does not change the knee."""
    base = [pick.Candidate(i, {}, {"a": a, "u": u}, {}, True) for i, (a, u, _) in enumerate(FRONT)]
    objs = (Objective("a", "maximize"), Objective("u", "minimize"))
    flipped = [
        pick.Candidate(c.number, {}, {"a": 100 * c.metrics["a"], "u": -c.metrics["u"]}, {}, True)
        for c in base
    ]
    flipped_objs = (Objective("a", "maximize"), Objective("u", "maximize"))
    assert pick.knee_scores(base, objs) == pytest.approx(pick.knee_scores(flipped, flipped_objs))


def test_max_acc_breaks_ties_by_the_other_objective() -> None:
    cands = [
        pick.Candidate(0, {}, {"test_acc": 0.9, "attack_auc": 0.7}, {}, True),
        pick.Candidate(1, {}, {"test_acc": 0.9, "attack_auc": 0.6}, {}, True),
        pick.Candidate(2, {}, {"test_acc": 0.8, "attack_auc": 0.5}, {}, True),
    ]
    assert pick.max_acc(cands, OBJECTIVES).candidate.number == 1


def test_off_front_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path)
    assert pick.main(["--run", str(run_dir), "--rule", "max-acc",
                      "--max", "attack_tpr@0.1%fpr=0.005"]) == 0
    out = capsys.readouterr().out
    assert "picked      trial 3" in out
    assert "trial 4 is off the front" in out


# --------------------------------------------------------------------------------------------
# errors: one line, exit status 2


def test_no_trial_meets_the_bound(front_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = front_run
    code = pick.main(["--run", str(run_dir), "--rule", "max-acc",
                      "--max", "attack_tpr@0.1%fpr=0.0005"])
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


def test_study_without_completed_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_run(tmp_path, points=[], failed=2)
    assert pick.main(["--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "no completed trial (2 trials: 2 fail" in err


def test_infeasible_trials_are_not_candidates(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, points=[(0.05, 0.5, 0.0), (0.9, 0.6, 0.01)])
    run = pick.open_run(run_dir)
    assert [c.number for c in pick.candidates(run, among="all")] == [1]


# --------------------------------------------------------------------------------------------
# export


def test_export_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path)
    assert pick.main(["--run", str(run_dir), "--rule", "max-acc",
                      "--max", "attack_tpr@0.1%fpr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "picked      trial 2" in out
    assert "screening (trial 2, seed 0)" in out
    path = run_dir / "picked.yaml"
    text = path.read_text()
    assert text.startswith("# Picked by search/pick.py")
    assert "# trial 2 " in text and "rule max-acc" in text
    doc = yaml.safe_load(text)
    assert set(doc) == {"study", "fixed"}
    space = load_space(run_dir / "space.yaml")
    expected = space.trial_config(_params(2))
    assert TrialConfig.from_flat(doc["fixed"]) == expected
    assert set(doc["fixed"]) == set(TrialConfig().to_flat())
    again = load_space(path)  # a valid space file: study named after the trial, nothing searched
    assert again.base_config() == expected
    assert again.study.name == "tiny-trial2"
    assert again.params == {}
    assert again.study.objectives == space.study.objectives


def test_export_path_option(tmp_path: Path) -> None:
    target = tmp_path / "out" / "prod.yaml"
    assert pick.main(["--run", str(make_run(tmp_path)), "--export", str(target)]) == 0
    assert TrialConfig.from_flat(yaml.safe_load(target.read_text())["fixed"]).protect.split == 3


# --------------------------------------------------------------------------------------------
# comparison table


def test_comparison_gap_is_paired_on_shared_seeds() -> None:
    screening = {"test_acc": 0.9, "attack_auc": 0.55}
    retrained = pick.Audit("re-train", (1, 2), ({"attack_auc": 0.56}, {"attack_auc": 0.58}))
    adaptive = pick.Audit("adaptive", (1, 2), ({"attack_auc": 0.60}, {"attack_auc": 0.66}))
    paired = pick.Comparison(0, 0, screening, retrained, adaptive)
    assert paired.gap("attack_auc") == pytest.approx(((0.60 - 0.56) + (0.66 - 0.58)) / 2)
    assert "paired" in paired.gap_note()
    alone = pick.Comparison(0, 0, screening, None, adaptive)
    assert alone.gap("attack_auc") == pytest.approx(0.63 - 0.55)
    table = paired.table(OBJECTIVES)
    assert "0.6300 ± 0.0424" in table and "+0.0600" in table
    assert adaptive.std("attack_auc") == pytest.approx(math.sqrt(0.0018))
    summary = paired.summary_metrics()
    assert summary["gap/attack_auc"] == pytest.approx(0.06)
    assert "gap/test_acc" not in summary


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
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_mlflow_uris: None
) -> None:
    import mlflow
    import torch
    from mlflow import MlflowClient

    from pptp.train import build_pool
    from search.tracking import StudyTracker, TrialTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    source = tmp_path / "src"
    source.mkdir()
    space_data = tiny_space(tmp_path / "bank")
    (source / "tiny.yaml").write_text(yaml.safe_dump(space_data, sort_keys=False))
    tracker = StudyTracker(uri, "tiny", run_dir=tmp_path / "run")
    tracker.start(resolved_space=space_data, space_path=source / "tiny.yaml",
                  space_sha256="0" * 64)
    run_ids = []
    for i in range(len(FRONT)):
        with TrialTracker(uri, tracker.experiment_id, tracker.parent_run_id,
                          trial_number=i) as trial:
            run_ids.append(trial.run_id)
    run_dir = make_run(tmp_path, tracking_uri=uri, parent_run_id=tracker.parent_run_id,
                       experiment_id=tracker.experiment_id, run_ids=run_ids)

    # a tracking store without the study's experiment: refused before anything trains
    other = f"sqlite:///{tmp_path}/other.db"
    assert pick.main(["--run", str(run_dir), "--seeds", "1", "--register", "tiny-model",
                      "--tracking-uri", other]) == 2
    assert "has no MLflow experiment 'tiny'" in capsys.readouterr().err
    assert not (tmp_path / "bank").exists()

    code = pick.main(["--run", str(run_dir), "--rule", "knee", "--seeds", "1", "--adaptive",
                      "--register", "tiny-model"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "picked      trial 2" in out
    assert "re-trained (1 seeds)" in out and "adaptive (1 seeds)" in out
    assert "adaptive - screening" in out and "paired" in out
    assert "models:/tiny-model@production" in out

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("tiny-model", "production")
    assert version.version in (1, "1")
    assert version.run_id is not None
    pick_run = client.get_run(version.run_id)
    assert pick_run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert pick_run.data.tags["pptp.kind"] == "pick"
    assert pick_run.data.tags["picked_trial"] == "2"
    assert pick_run.data.tags["rule"] == "knee"
    for metric in ("test_acc", "attack_auc", "adaptive/attack_auc_mean", "gap/attack_auc",
                   "retrained/attack_auc_mean", "screening/attack_auc"):
        assert metric in pick_run.data.metrics, metric
    assert math.isfinite(pick_run.data.metrics["gap/attack_auc"])
    assert pick_run.data.params["protect.split"] == "3"
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"picked.yaml", "roc.png", "mask.json"} <= artifacts
    assert client.get_run(run_ids[2]).data.tags.get("picked") == "true"
    assert client.get_run(run_ids[0]).data.tags.get("picked") is None

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pytorch.load_model("models:/tiny-model@production")
    cfg = TrialConfig.from_flat(yaml.safe_load((run_dir / "picked.yaml").read_text())["fixed"])
    pool = build_pool(cfg.data)
    x = pool.x_test[:5].cpu()
    logits = model(x)
    assert tuple(logits.shape) == (5, pool.num_classes)
    assert torch.isfinite(logits).all()

    # registering again adds version 2 and moves the alias
    assert pick.main(["--run", str(run_dir), "--rule", "knee", "--register", "tiny-model",
                      "--alias", "staging"]) == 0
    assert str(client.get_model_version_by_alias("tiny-model", "staging").version) == "2"
    assert str(client.get_model_version_by_alias("tiny-model", "production").version) == "1"
