"""The study's report page (search/report.py, search/reporting/): what it draws from a run
directory, offline.

Hand-made studies (tests/fixtures_pick.make_run) plus an undefended and a baseline trial; the
MLflow side (ROC arrays, attaching the page) is in tests/test_publish.py, the page in a real
browser in tests/test_browser.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from fixtures_localize import fake_result, tiny_config
from fixtures_pick import make_run

from search import report
from search.reporting.figures import front_figure
from search.reporting.inputs import gather
from search.reporting.page import FRONT_DIV, render
from search.study.reader import open_run


def _add_trial(run_dir: Path, *, acc: float, auc: float, attrs: dict[str, Any]) -> None:
    run = open_run(run_dir)
    params = {"protect.operator": "damp", "protect.strength": 0.0, "protect.split": 1}
    run.study.add_trial(
        optuna.trial.create_trial(
            params=params,
            distributions={k: run.space.params[k] for k in params},
            values=[acc, auc],
            user_attrs={"test_acc": acc, "attack_auc": auc, "protected_groups": "fc1", **attrs},
            constraints={"test_acc>=0.1": 0.1 - acc},
        )
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """5 PPTP trials (4 on the front), 1 failed, the undefended model and a DP-SGD baseline
    whose two seeds disagree."""
    path = make_run(tmp_path, failed=1)
    _add_trial(path, acc=0.96, auc=0.85,
               attrs={"operator": "damp", "strength": 0.0, "defense": "none"})  # fmt: skip
    _add_trial(
        path, acc=0.80, auc=0.52,
        attrs={"operator": "none", "strength": 0.0, "defense": "dpsgd",
               "per_seed": {"test_acc": [0.78, 0.82], "attack_auc": [0.51, 0.53]}},
    )  # fmt: skip
    return path


def _traces(fig: Any) -> dict[str, Any]:
    return {t.name: t for t in fig.data}


def test_front_draws_every_trial_by_kind_and_highlights_the_study_front(run_dir: Path) -> None:
    run = open_run(run_dir)
    inputs = gather(run, client=None, unreachable="was not asked (test)")
    traces = _traces(front_figure(inputs))
    n_front = len(run.study.best_trials)
    assert set(traces) == {
        "PPTP trials (5)", "baseline dpsgd (1)", "undefended (1)", f"Pareto front ({n_front})",
    }  # fmt: skip
    front = traces[f"Pareto front ({n_front})"]
    assert sorted(front.x) == sorted(t.values[1] for t in run.study.best_trials)
    # the baseline's error bars are its seed spread (sample sd of 0.78, 0.82 = 0.0283)
    baseline = traces["baseline dpsgd (1)"]
    assert baseline.error_y.array[0] == pytest.approx(0.028284, abs=1e-5)
    hover = traces["undefended (1)"].hovertext[0]
    assert "t06 undefended" in hover and "groups: -" in hover and "defense: none" in hover
    assert "seeds: 1 (no spread)" in hover
    assert "seeds: 2" in baseline.hovertext[0] and "operator: none" in baseline.hovertext[0]
    pptp_hover = traces["PPTP trials (5)"].hovertext[0]
    assert "t00 damp s=0.10 fc1" in pptp_hover and "strength 0.1" in pptp_hover


def test_page_is_self_contained_and_says_what_is_missing(run_dir: Path) -> None:
    inputs = gather(open_run(run_dir), client=None, unreachable="did not answer (test)")
    page = render(inputs, generated="now")
    assert page.count("plotly.js v") >= 1  # plotly's bundle, inlined
    assert not re.search(r"<script[^>]+src=", page)  # nothing fetched from the network
    assert page.index(f'id="{FRONT_DIV}"') < page.index('id="slice-')  # front first
    assert "ROC curves of the finalists: the MLflow store sqlite:///unused.db did not" in page
    assert "Failed trials (1)" in page
    assert "No localisation steered this study" in page
    assert "None yet" in page  # no picked config


def test_picked_config_and_localisation_are_shown(run_dir: Path, tmp_path: Path) -> None:
    loc = fake_result(tiny_config("mlp"), {"fc1": 0.01, "fc2": 0.002, "head": 0.03})
    path = loc.save(tmp_path / "loc" / "localization.json")
    run = open_run(run_dir)
    run.study.set_user_attr("localization", str(path))
    (run_dir / "picked.yaml").write_text(
        "# Picked by search/pick.py\nstudy: {name: tiny-trial2}\nfixed: {train.seed: 0}\n"
    )
    inputs = gather(open_run(run_dir), client=None)
    assert inputs.picked_trial == 2 and inputs.localization == loc
    traces = _traces(front_figure(inputs))
    assert traces["picked for production"].text == ("t02 damp s=0.40 fc1-fc3",)
    page = render(inputs)
    assert 'id="layer-risk"' in page and "tiny-trial2" in page
    run.study.set_user_attr("localization", str(tmp_path / "moved.json"))
    moved = gather(open_run(run_dir), client=None)
    assert any(m.startswith("layer-risk chart: no localisation result") for m in moved.missing)


def test_report_command_without_mlflow(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--run", str(run_dir), "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    page = run_dir / "report.html"
    assert page.is_file() and page.stat().st_size > 1_000_000  # plotly.js inlined
    assert f"report      {page}" in out
    assert "MLflow      left as it is (--no-mlflow)" in out
    assert "missing     ROC curves of the finalists" in out
    assert report.main(["--run", str(run_dir / "nothing")]) == 2  # bad input: exit status 2


def test_an_empty_study_has_nothing_to_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.report import EXIT_NOTHING_TO_REPORT, main

    run = make_run(tmp_path, points=())
    assert main(["--run", str(run), "--no-mlflow"]) == EXIT_NOTHING_TO_REPORT
    out = capsys.readouterr().out
    assert "nothing to report" in out and "no finished trial" in out
    assert "pick" not in out and not (run / "report.html").exists()
