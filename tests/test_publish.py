"""After a study (search/reporting/publish.py): trial runs named and described, saved views, the
localisation linked, the report attached; idempotent; a store that does not answer is left
alone and the page says what is missing."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures_localize import fake_result as fake_localization
from fixtures_localize import tiny_config
from fixtures_pick import make_run
from fixtures_tracking import fake_result, fresh_store, run_trial, start
from mlflow.tracking import MlflowClient

from search.reporting.publish import (
    TAG_LOCALIZATION_RUN_ID,
    TAG_LOCALIZATION_URL,
    find_localization_run,
    publish_study,
)
from search.study.naming import TAG_NOTE
from search.study.reader import open_run
from search.tracking.saved_views import PARETO_VIEW, SHARED_VIEW_TAG, TRIALS_VIEW
from search.tracking.study_tracker import StudyTracker
from search.ui import free_port

POINTS = [(0.95, 0.80, 0.05), (0.93, 0.62, 0.02), (0.85, 0.70, 0.004)]  # trial 2 off the front


def _study(tmp_path: Path) -> tuple[Path, MlflowClient, StudyTracker, list[str]]:
    """A run directory whose three trials have real MLflow child runs (with roc.npz)."""
    uri = fresh_store(tmp_path / "store")
    tracker = StudyTracker(uri, "tiny", run_dir=tmp_path / "run")
    start(tracker)
    run_ids = [
        run_trial(tracker, i, fake_result(test_acc=acc, auc=auc))
        for i, (acc, auc, _) in enumerate(POINTS)
    ]
    tracker.finish()
    run_dir = make_run(
        tmp_path, POINTS, tracking_uri=uri, parent_run_id=tracker.parent_run_id,
        experiment_id=tracker.experiment_id, run_ids=run_ids,
    )  # fmt: skip
    return run_dir, MlflowClient(uri), tracker, run_ids


def test_publish_names_describes_links_and_attaches(tmp_path: Path) -> None:
    run_dir, client, tracker, run_ids = _study(tmp_path)
    published = publish_study(run_dir)
    assert (published.renamed, published.described) == (3, 3)
    names = [client.get_run(r).info.run_name for r in run_ids]
    assert names == ["t00 damp s=0.10 fc1", "t01 anchor s=0.25 fc1+fc2", "t02 damp s=0.40 fc1-fc3"]
    first_lines = [client.get_run(r).data.tags[TAG_NOTE].splitlines()[0] for r in run_ids]
    assert first_lines == [
        "acc 0.950 · AUC 0.800 · 1 seed",
        "acc 0.930 · AUC 0.620 · 1 seed",
        "acc 0.850 · AUC 0.700 · 1 seed",
    ]
    assert "Not on the Pareto front." in client.get_run(run_ids[2]).data.tags[TAG_NOTE]
    parent_link = f"#/experiments/{tracker.experiment_id}/runs/{tracker.parent_run_id}"
    assert (
        f"[study run]({parent_link}?workflowType=machine_learning)"
        in (client.get_run(run_ids[0]).data.tags[TAG_NOTE])
    )
    experiment = client.get_experiment(tracker.experiment_id)
    assert {SHARED_VIEW_TAG + TRIALS_VIEW, SHARED_VIEW_TAG + PARETO_VIEW} <= set(experiment.tags)
    parent = client.get_run(tracker.parent_run_id)
    note = parent.data.tags[TAG_NOTE]
    assert note.startswith("3 trials (0 failed), 2 on the Pareto front\n\nStudy **tiny**")
    assert "viewStateShareKey=pptp-pareto" in note and "artifacts/report.html" in note
    assert "report.html" in {f.path for f in client.list_artifacts(tracker.parent_run_id)}
    assert (run_dir / "report.html").is_file()
    assert published.attached and not published.missing
    assert published.links is not None and published.links.views
    summary = published.summary()
    assert "3 trial runs renamed, 3 descriptions written" in summary
    assert f"ui --run {run_dir} --open" in summary

    again = publish_study(run_dir)  # idempotent: nothing left to change
    assert (again.renamed, again.described) == (0, 0)


def test_publish_reads_the_finalists_roc_arrays(tmp_path: Path) -> None:
    from search.reporting.inputs import gather

    run_dir, client, _, _ = _study(tmp_path)
    inputs = gather(open_run(run_dir), client=client)
    front = {c.trial for c in inputs.roc}
    assert front == {0, 1}  # the Pareto trials (no undefended trial in this study)
    assert {c.attack for c in inputs.roc} == {"loss", "lira"}
    assert all(c.fpr.shape == c.tpr.shape == (5,) for c in inputs.roc)


def test_a_store_that_does_not_answer_is_left_alone(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    run_dir = make_run(tmp_path, tracking_uri=uri, experiment_id="1", parent_run_id="abc")
    published = publish_study(run_dir)
    assert published.problem is not None and published.problem.startswith("did not answer")
    assert not published.attached and published.links is None
    assert any("ROC curves of the finalists" in m for m in published.missing)
    assert (run_dir / "report.html").is_file()


def test_the_localisation_that_steered_the_study_is_linked(tmp_path: Path) -> None:
    run_dir, client, tracker, _ = _study(tmp_path)
    loc = fake_localization(tiny_config("mlp"), {"fc1": 0.01, "head": 0.03})
    path = loc.save(tmp_path / "loc" / "localization.json")
    other = fake_localization(tiny_config("mlp"), {"fc1": 0.02, "head": 0.01})
    other_path = other.save(tmp_path / "other" / "localization.json")
    experiment = client.create_experiment(
        "tiny-localize", artifact_location=(tmp_path / "loc-artifacts").as_uri()
    )
    ids = []
    for file in (other_path, path):  # same model and dataset: told apart by content
        run = client.create_run(
            experiment, tags={"pptp.kind": "localize", "model": "mlp", "dataset": "digits"}
        )
        client.log_artifact(run.info.run_id, str(file))
        ids.append(run.info.run_id)
    assert find_localization_run(client, path) == ids[1]
    open_run(run_dir).study.set_user_attr("localization", str(path))
    published = publish_study(run_dir)
    assert published.localization_run_id == ids[1]
    tags = client.get_run(tracker.parent_run_id).data.tags
    assert tags[TAG_LOCALIZATION_RUN_ID] == ids[1]
    assert tags[TAG_LOCALIZATION_URL] == (
        f"#/experiments/{experiment}/runs/{ids[1]}?workflowType=machine_learning"
    )
    back = client.get_run(ids[1]).data.tags["steered/tiny"]
    assert back.startswith(f"#/experiments/{tracker.experiment_id}/runs/")
    assert "the localisation that steered this study" in tags[TAG_NOTE]
    assert json.loads(path.read_text())["model"] == "mlp"


def test_names_given_while_trials_run_match_the_names_at_the_end(tmp_path: Path) -> None:
    """A trial names its run from its config before it trains (search.study.naming.planned_name,
    its groups resolved on the model); publishing the study names it from what Optuna recorded:
    the two agree, so nothing is renamed."""
    from fixtures_pick import params_of

    from search.study.naming import planned_name
    from search.study.trials import finished

    run = open_run(make_run(tmp_path))
    for trial in finished(run.study, run.objectives):
        cfg = run.space.trial_config(params_of(trial.number))
        assert planned_name(trial.number, cfg, run.space) == trial.name


def test_the_report_reads_who_leaks_from_mlflow(tmp_path: Path) -> None:
    import dataclasses

    import numpy as np

    from pptp.exposure import ExposedRecord, Exposure
    from search.reporting.inputs import gather
    from search.reporting.page import render

    uri = fresh_store(tmp_path / "store")
    tracker = StudyTracker(uri, "tiny", run_dir=tmp_path / "run")
    start(tracker)
    record = (ExposedRecord(1, 3, 103, 2.5, 1),)
    thumbs = np.full((1, 1, 4, 4), 0.5, np.float32)
    exposures = [
        Exposure("lira", False, record, {0: 0.0, 1: 0.125}, {0: 9, 1: 8}, thumbs),  # images
        Exposure("loss", True, record, {0: float("nan")}, {0: 17}),  # a table: no thumbnails
        None,  # off the front: not read
    ]
    run_ids = [
        run_trial(tracker, i, dataclasses.replace(fake_result(test_acc=a, auc=u), exposure=e))
        for i, ((a, u, _), e) in enumerate(zip(POINTS, exposures, strict=True))
    ]
    tracker.finish()
    run_dir = make_run(
        tmp_path, POINTS, tracking_uri=uri, parent_run_id=tracker.parent_run_id,
        experiment_id=tracker.experiment_id, run_ids=run_ids,
    )  # fmt: skip
    inputs = gather(open_run(run_dir), client=MlflowClient(uri))
    by_trial = {e.trial: e for e in inputs.exposed}
    assert set(by_trial) == {0, 1}
    assert by_trial[0].grid is not None and by_trial[0].grid[:4] == b"\x89PNG"
    assert by_trial[0].class_tpr == (("0", "9", "0.0000"), ("1", "8", "0.1250"))
    assert by_trial[1].grid is None and by_trial[1].class_tpr == (("0", "17", ""),)
    page = render(inputs)
    assert page.count("<img alt='most exposed members of trial") == 1 and "not resolved" in page
