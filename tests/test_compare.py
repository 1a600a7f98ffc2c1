"""search/compare.py and search/comparing/: kinds, fronts, hypervolumes against hand-computed
areas, the seed bootstrap's verdict, and the command on a run directory written the way run.py
writes one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from fixtures_trials import seeded

from pptp.treatment import TREATMENT_ATTR, Treatment
from search import compare as cmp
from search.comparing.fronts import compare, front, hypervolume
from search.comparing.output import hypervolume_lines
from search.space import Objective
from search.study import rundir
from search.study.trials import PER_SEED, FinishedTrial

AXES = (Objective("test_acc", "maximize"), Objective("attack_auc", "minimize"))


def point(kind: str, acc: list[float], auc: list[float], trial: int = 0) -> FinishedTrial:
    return seeded(kind, acc, auc, trial_number=trial)


def test_hypervolume_matches_the_hand_computed_area() -> None:
    # A (0.9, 0.6) and B (0.8, 0.55) against reference (0.7, 0.7): rectangles 0.02 and 0.015
    # overlapping in 0.01 -> 0.025; a point beyond the reference adds nothing.
    values = np.array([[0.9, 0.6], [0.8, 0.55], [0.65, 0.5]])
    assert hypervolume(values, np.array([0.7, 0.7]), AXES) == pytest.approx(0.025)
    assert hypervolume(values[:0], np.array([0.7, 0.7]), AXES) == 0.0


def test_front_is_the_non_dominated_points() -> None:
    pts = [
        point("pptp", [0.9], [0.6], trial=0),
        point("pptp", [0.8], [0.55], trial=1),
        point("pptp", [0.8], [0.65], trial=2),  # dominated by trial 1
    ]
    assert [p.number for p in front(pts, AXES)] == [0, 1]


def family(kind: str, acc: float, auc: float, *, spread: float, first: int) -> list[FinishedTrial]:
    """3 trials of ``kind`` near (acc, auc), each over 3 seeds ``spread`` apart."""
    return [
        point(kind, [acc - i / 100 + d for d in (-spread, 0, spread)],
              [auc - i / 50 + d for d in (-spread, 0, spread)], trial=first + i)
        for i in range(3)
    ]  # fmt: skip


def test_a_clear_difference_is_beyond_noise_and_a_small_one_is_not() -> None:
    undefended = point("undefended", [0.85, 0.86, 0.84], [0.74, 0.73, 0.75])
    strong = family("pptp", 0.85, 0.62, spread=0.01, first=1)
    weak = family("baseline", 0.72, 0.70, spread=0.01, first=4)
    result = compare([undefended, *strong, *weak], AXES, n_bootstrap=200)
    assert result.pptp is not None and result.baselines is not None
    assert result.pptp.value > result.baselines.value and result.decided
    assert result.difference is not None and result.difference.low > 0
    assert result.verdict.startswith("yes") and result.share_pptp_better == 1.0

    noisy = family("baseline", 0.84, 0.63, spread=0.08, first=4)
    result = compare([undefended, *family("pptp", 0.84, 0.63, spread=0.08, first=1), *noisy],
                     AXES, n_bootstrap=300)  # fmt: skip
    assert result.difference is not None and result.difference.low < 0 < result.difference.high
    assert result.verdict.startswith("no clear winner")


def test_two_seeds_that_agree_get_the_familys_noise() -> None:
    """A trial whose two seeds agree exactly has a 2-sample sd of 0; its interval comes from the
    family's pooled noise, so it is not exact."""
    exact = point("pptp", [0.80, 0.80], [0.60, 0.60], trial=1)
    others = family("pptp", 0.78, 0.62, spread=0.02, first=2)
    baselines = family("baseline", 0.79, 0.61, spread=0.02, first=5)
    result = compare([exact, *others, *baselines], AXES, n_bootstrap=200)
    assert result.pptp is not None and result.pptp.low < result.pptp.value < result.pptp.high


def test_the_runs_must_support_a_verdict_or_it_says_why() -> None:
    undefended = point("undefended", [0.85], [0.74])
    one_seed = [point("pptp", [0.84 - i / 100], [0.6], trial=i) for i in range(1, 4)]
    one_seed += [point("baseline", [0.7 - i / 100], [0.7], trial=i) for i in range(4, 7)]
    result = compare([undefended, *one_seed], AXES, n_bootstrap=20)
    assert not result.decided and "trained one seed each" in result.verdict
    assert "study.repeats" in result.verdict
    # with no spread to resample, a hypervolume is a point: never a zero-width interval
    lines = "\n".join(hypervolume_lines(result, "ref"))
    assert "(no interval: its trials trained one seed each) (3 trials)" in lines
    assert not re.search(r"\[(\d\.\d+), \1\]", lines)

    no_baseline = compare([undefended, *family("pptp", 0.8, 0.6, spread=0.01, first=1)], AXES,
                          n_bootstrap=20)  # fmt: skip
    assert no_baseline.baselines is None and no_baseline.difference is None
    assert no_baseline.verdict == (
        "no verdict: the runs hold no baseline trial (give a study that ran them, or a second "
        "--run)"
    )
    few = compare([*family("pptp", 0.8, 0.6, spread=0.01, first=1),
                   *family("baseline", 0.8, 0.6, spread=0.01, first=4)[:1]], AXES,
                  n_bootstrap=20)  # fmt: skip
    assert "only 1 baseline trial(s) completed; each front needs at least 3" in few.verdict


def write_run(run_dir: Path, trials: list[tuple[dict[str, object], list[float]]]) -> Path:
    """A run directory as search/run.py leaves it: study.db, state.json, space.yaml."""
    run_dir.mkdir(parents=True)
    space = {
        "study": {
            "name": "cmp-test",
            "objectives": {"test_acc": "maximize", "attack_auc": "minimize"},
        },
        "fixed": {"attack.attacks": ["loss"]},
        "params": {"protect.strength": {"type": "float", "low": 0.0, "high": 1.0}},
    }
    (run_dir / "space.yaml").write_text(yaml.safe_dump(space))
    study = optuna.create_study(
        study_name="cmp-test", storage=rundir.storage(run_dir), directions=["maximize", "minimize"]
    )
    for attrs, values in trials:
        study.add_trial(optuna.trial.create_trial(values=values, user_attrs=attrs))
    state = rundir.RunState("cmp-test", str(run_dir / "space.yaml"), "0" * 64, "sqlite:///none")
    (run_dir / "state.json").write_text(json.dumps(state.__dict__))
    return run_dir


def test_the_command_writes_figure_table_and_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def trial(
        treatment: Treatment, acc: list[float], auc: list[float]
    ) -> tuple[dict[str, object], list[float]]:
        attrs = {  # as the searcher records a trial
            TREATMENT_ATTR: treatment.to_data(),
            **treatment.flat(),
            PER_SEED: {"test_acc": acc, "attack_auc": auc},
        }
        return attrs, [float(np.mean(acc)), float(np.mean(auc))]

    smoothing = Treatment(defense="label_smoothing", knobs=(("strength", 0.3),))
    run = write_run(
        tmp_path / "run",
        [
            trial(Treatment(), [0.85, 0.86], [0.74, 0.75]),
            trial(Treatment("noise", 0.5, ("head",)), [0.84, 0.85], [0.62, 0.63]),
            trial(smoothing, [0.80, 0.82], [0.70, 0.71]),
        ],
    )
    # one trial per family: compared, drawn and written, but no verdict (exit 3)
    assert cmp.main(["--run", str(run), "--bootstrap", "50", "--no-mlflow"]) == cmp.EXIT_NO_VERDICT
    out = capsys.readouterr().out
    assert "Did PPTP beat the baselines here? no verdict: only 1 PPTP and 1 baseline" in out
    assert "baseline label_smoothing strength=0.3" in out and "noise s=0.50 head" in out
    for name in ("comparison.png", "comparison.csv", "comparison.md"):
        assert (run / name).stat().st_size > 0
    rows = (run / "comparison.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("study,trial,kind,label,seeds,on_front")


def test_a_missing_run_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmp.main(["--run", str(tmp_path / "nope")]) == 2
    assert "no study.db" in capsys.readouterr().err
