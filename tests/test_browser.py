"""What a person sees, checked in a real browser: a finished two-trial study in the MLflow UI and
its report page, in headless Chromium (tests/fixtures_browser.py).

The study runs through ``search/run.py`` (Ray, Optuna, MLflow; the tiny digits recipe of
tests/test_search.py), then ``pptp-search report`` names and describes its runs, saves the
runs-table views and writes the report. ``pptp-search ui``'s server (:class:`search.ui.MlflowUi`)
serves the store on a free port of 127.0.0.1, and the test checks what a person looks for:

- the study's runs table opens directly (not MLflow 3's GenAI overview), through the saved view:
  objectives and the description as columns, the trials with their descriptive names;
- in the plain runs table the trials are nested under the study's run: expanding it shows them;
- the Pareto filter ``tags.pareto = 'true'`` typed into the search box leaves the Pareto trials;
- the study's run holds ``pareto_front.png`` (shown in its Artifacts tab) and its description;
- ``report.html`` (``file://``) draws the front with as many points as the study's front.

Screenshots go to the test's temporary folder; their paths and the stage times are printed
(``pytest -s``). Every server and browser started here is stopped by PID.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from fixtures_browser import headless_chromium, wait_for
from fixtures_ray import ray_tmp
from fixtures_space import TINY_STUDY_FIXED

from search.reporting.page import FRONT_DIV
from search.study import rundir
from search.tracking.links import Links
from search.tracking.saved_views import PARETO_FILTER
from search.ui import MlflowUi

SPACE = (
    """
study:
  name: browser
  objectives: {{test_acc: maximize, attack_auc: minimize}}
  sampler: random
  seed: 0
  n_trials: 2
  max_concurrent: 2
  resources: {{cpus: 1, gpus: 0}}
  enqueue:
    - {{protect.operator: damp, protect.strength: 0.0, protect.split: 1}}
    - {{protect.operator: noise, protect.strength: 0.5, protect.split: 2}}
"""
    + TINY_STUDY_FIXED
    + """params:
  protect.operator: {{type: categorical, choices: [damp, noise]}}
  protect.strength: {{type: float, low: 0.0, high: 1.0}}
  protect.split: {{type: int, low: 1, high: 3}}
  protect.direction: {{type: categorical, choices: [suffix]}}
"""
)

ROW = ".ag-row"
NAME_CELL = "[col-id='attributes.`Run Name`'] a"

__all__ = ["ray_tmp"]  # the fixture, imported for its use below


class Shots:
    """Numbered screenshots in one folder; remembers their paths."""

    def __init__(self, driver: Any, folder: Path) -> None:
        self.driver, self.folder, self.paths = driver, folder, []
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        path = self.folder / f"{len(self.paths) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.paths.append(path)
        return path


def _row_names(driver: Any) -> list[str]:
    return [e.text for e in driver.find_elements("css selector", f"{ROW} {NAME_CELL}")]


def _headers(driver: Any) -> list[str]:
    return [
        e.get_attribute("col-id") for e in driver.find_elements("css selector", ".ag-header-cell")
    ]


def _open(driver: Any, url: str) -> None:
    """Load ``url`` afresh (a hash change alone may keep the single-page app's old view)."""
    driver.get(url)
    driver.refresh()


def _front_traces(driver: Any) -> dict[str, int]:
    """The report's front figure as ``{trace name: number of points}``, read from plotly."""
    data = driver.execute_script(
        f"const d = document.getElementById('{FRONT_DIV}');"
        "return d && d.data && d.data.map(t => [t.name, (t.x || []).length]);"
    )
    return dict(data) if data else {}


@pytest.mark.slow
def test_a_finished_study_in_the_mlflow_ui_and_its_report(tmp_path: Path, ray_tmp: str) -> None:
    from search.report import main as report_main
    from search.run import main as run_main

    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    space = tmp_path / "browser.yaml"
    space.write_text(SPACE.format(bank=tmp_path / "bank"))
    run, store = tmp_path / "run", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert run_main(["--space", str(space), "--output", str(run), "--tracking-uri", store]) == 0
    stages["study (2 trials)"] = time.perf_counter() - t0
    assert report_main(["--run", str(run)]) == 0
    stages["pptp-search report"] = time.perf_counter() - t0 - sum(stages.values())

    study = optuna.load_study(study_name="browser", storage=rundir.storage(run))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2, [t.user_attrs.get("fail_reason") for t in study.trials]
    front = {t.number for t in study.best_trials}
    state = rundir.read_state(run)
    assert state.experiment_id and state.parent_run_id
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    names = {t.number: client.get_run(t.user_attrs["mlflow_run_id"]).info.run_name
             for t in complete}  # fmt: skip
    assert names == {0: "t00 undefended", 1: "t01 noise s=0.50 fc3+head"}  # mlp: fc1-3, head
    front_names = sorted(names[n] for n in front)

    shots_dir = tmp_path / "screenshots"
    with MlflowUi(store) as ui, headless_chromium(tmp_path / "chromium-profile") as driver:
        stages["UI and browser started"] = time.perf_counter() - t0 - sum(stages.values())
        shot = Shots(driver, shots_dir)
        links = Links(state.experiment_id, state.parent_run_id, ui.base, views=True)

        # 1. the plain runs table, as a first visit finds it (no GenAI page): trials nested under
        #    the study's run
        driver.get(links.runs_table(view=None))
        parent_row = f"{ROW}[row-id='{state.parent_run_id}']"
        wait_for("the study's run", lambda: driver.find_elements("css selector", parent_row))
        # the runs grid, at the runs URL: MLflow did not send us to its GenAI overview
        assert f"#/experiments/{state.experiment_id}/runs?" in driver.current_url
        assert "Model training" in driver.find_element("tag name", "body").text
        driver.find_element("css selector", f"{parent_row} [col-id='attributes.`Run Name`'] "
                            "button").click()  # fmt: skip
        wait_for("the nested trials after expanding the study's run",
                 lambda: set(names.values()) <= set(_row_names(driver)))  # fmt: skip
        shot("runs-table-nested")

        # 2. the study's runs table through the saved view: trials flat, objectives as columns
        driver.get(links.runs_table())
        wait_for("the trials in the runs table",
                 lambda: set(names.values()) <= set(_row_names(driver)))  # fmt: skip
        assert "/runs" in driver.current_url and "viewStateShareKey=pptp-trials" in (
            driver.current_url
        )
        body = driver.find_element("tag name", "body").text
        assert "Model training" in body and "PPTP: every trial" in body
        headers = _headers(driver)
        for column in ("attributes.`Description`", "metrics.`test_acc`",
                       "metrics.`attack_auc`", "tags.`pareto`"):  # fmt: skip
            assert column in headers, headers
        described = wait_for(  # the description column: objectives and their spread
            "the trials' descriptions",
            lambda: [e.text for e in driver.find_elements(
                "css selector", f"{ROW} [col-id='attributes.`Description`']")
                if e.text.startswith("acc ") and " · 1 seed" in e.text],
        )  # fmt: skip
        assert len(described) == len(complete), described
        shot("runs-table-view")

        # 3. the Pareto filter typed into the search box
        box = driver.find_element("css selector", "input[placeholder*='metrics.rmse']")
        box.clear()
        box.send_keys(PARETO_FILTER + "\n")
        wait_for("the Pareto trials only",
                 lambda: sorted(_row_names(driver)) == front_names)  # fmt: skip
        assert "searchFilter=tags.pareto" in driver.current_url
        shot("pareto-filter")

        # 4. the study's run: the Pareto plot and the report among its artifacts, its description
        _open(driver, links.run(artifact="pareto_front.png"))
        wait_for(
            "pareto_front.png shown in the Artifacts tab",
            lambda: "pareto_front.png" in driver.find_element("tag name", "body").text
            and [i for i in driver.find_elements("css selector", "img[src^='blob:']")
                 if driver.execute_script("return arguments[0].naturalWidth", i) > 100],
        )  # fmt: skip
        shot("parent-artifact-pareto-front")
        _open(driver, links.run(artifact="report.html"))
        frame = wait_for("report.html previewed in the Artifacts tab",
                         lambda: driver.find_elements("css selector", "iframe"))  # fmt: skip
        driver.switch_to.frame(frame[0])
        inside = wait_for("the report's front inside MLflow", lambda: _front_traces(driver))
        driver.switch_to.default_content()
        assert inside[f"Pareto front ({len(front)})"] == len(front)
        shot("parent-artifact-report")
        _open(driver, links.run())
        wait_for(
            "the study's description",
            lambda: "Study browser" in driver.find_element("tag name", "body").text,
        )
        shot("parent-run-description")
        # its links are relative to the UI's address (the port is not known when they are
        # written); MLflow opens them in a new tab, which lands on the saved view
        for more in driver.find_elements("xpath", "//*[text()='Show more']"):
            more.click()  # the description starts folded
        link = wait_for(
            "the description's link to the trials",
            lambda: driver.find_element("link text", "every trial, objectives as columns"),
        )
        assert link.get_attribute("href") == links.runs_table()
        home = driver.current_window_handle
        link.click()
        tab = wait_for(
            "the link's new tab", lambda: [h for h in driver.window_handles if h != home]
        )
        driver.switch_to.window(tab[0])
        wait_for(
            "the trials, through the description's link",
            lambda: set(names.values()) <= set(_row_names(driver)),
        )
        driver.close()
        driver.switch_to.window(home)

        # 5. the report page, offline: the front drawn with the study's front
        driver.get((run / "report.html").as_uri())
        traces = wait_for("plotly's data on the report page", lambda: _front_traces(driver))
        first = driver.execute_script("return document.querySelector('.plotly-graph-div').id")
        assert first == FRONT_DIV
        assert traces[f"Pareto front ({len(front)})"] == len(front)
        trials = sum(n for name, n in traces.items() if not name.startswith("Pareto front"))
        assert trials == len(complete)
        shot("report-front")
        stages["browser checks"] = time.perf_counter() - t0 - sum(stages.values())

    total = time.perf_counter() - t0
    print(f"\nbrowser test wall time {total:.1f} s: " + ", ".join(
        f"{k} {v:.1f} s" for k, v in stages.items()))  # fmt: skip
    print("screenshots:\n" + "\n".join(f"  {p}" for p in shot.paths))
