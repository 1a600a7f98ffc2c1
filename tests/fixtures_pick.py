"""Helpers shared by the pick tests: a tiny space, a hand-made front, and a run directory as
search/run.py leaves it (state.json, an Optuna study.db with hand-made trials, space.yaml)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml

from pptp.treatment import TREATMENT_ATTR
from search.space import Objective, load_space
from search.study import rundir
from search.study.naming import planned_treatment

OBJECTIVES = (Objective("test_acc", "maximize"), Objective("attack_auc", "minimize"))


def tiny_space(bank_dir: Path) -> dict[str, Any]:
    """digits, MLP width 16, 15 short epochs (100 members, batch 16), loss + lira_offline with 2
    references."""
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
            # enough steps to learn above chance (pptp.chance refuses a model at chance)
            "train": {
                "epochs": 15,
                "batch_size": 16,
                "augment": False,
                "device": "cpu",
                "warmup_epochs": 1,
            },
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


def params_of(i: int) -> dict[str, Any]:
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
        params = params_of(i)
        treatment = planned_treatment(space.trial_config(params), space)  # as the trial records
        attrs: dict[str, Any] = {
            "test_acc": acc,
            "attack_auc": auc,
            "attack_tpr@0.1%fpr": tpr,
            "attack_tpr@1%fpr": min(1.0, 3 * tpr),
            TREATMENT_ATTR: treatment.to_data(),
            **treatment.flat(),
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
