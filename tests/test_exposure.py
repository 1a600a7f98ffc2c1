"""Who leaks (pptp/exposure.py): the most exposed members, per-class TPR at 1% FPR at one global
threshold, thumbnails; the trial's artifacts and the report's section."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import torch
from fixtures_tracking import fake_result
from PIL import Image

from pptp.exposure import ExposedRecord, Exposure, most_exposed, thumbnail_grid
from search.tracking.trial_tracker import write_trial_artifacts


def _pool(n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` examples alternating member / non-member, labels 0..3; class 3's members leak."""
    member = np.arange(n) % 2 == 0
    labels = (np.arange(n) // 2) % 4
    rng = np.random.default_rng(0)
    scores = rng.random(n)
    scores[member & (labels == 3)] += 1.0  # above every non-member
    return scores, member, labels


def test_the_most_exposed_are_the_highest_scored_members_of_the_population() -> None:
    scores, member, labels = _pool()
    canary = np.zeros(len(scores), bool)
    canary[0] = True
    scores[0] = 99.0  # a canary member scored highest: left out (canaries are audited apart)
    out = most_exposed(scores, member, labels, np.arange(len(scores)) + 1000,
                       population=~canary, attack="loss", top=5)  # fmt: skip
    assert [r.rank for r in out.records] == [1, 2, 3, 4, 5]
    assert all(member[r.pool_index] and r.label == 3 for r in out.records)
    assert out.records[0].pool_index != 0
    assert [r.score for r in out.records] == sorted((r.score for r in out.records), reverse=True)
    assert out.records[0].dataset_index == out.records[0].pool_index + 1000
    # one threshold at 1% of the 200 non-members: class 3 leaks entirely, the others barely
    assert out.class_tpr[3] == 1.0 and max(out.class_tpr[c] for c in (0, 1, 2)) < 0.1
    assert out.class_members == {0: 49, 1: 50, 2: 50, 3: 50}  # the canary was a 0


def test_inverted_scores_and_unresolved_fpr() -> None:
    scores, member, labels = _pool()
    out = most_exposed(-scores, member, labels, np.arange(400), attack="relax", inverted=True)
    assert out.inverted and out.class_tpr[3] == 1.0
    few = most_exposed(scores[:100], member[:100], labels[:100], np.arange(100), attack="loss")
    assert all(math.isnan(v) for v in few.class_tpr.values())  # 50 non-members: 1% unresolved
    table = list(csv.reader(io.StringIO(few.class_csv())))
    assert table[0] == ["label", "members", "tpr@1%fpr"] and table[1][2] == ""


def test_thumbnails_come_back_in_zero_one_and_make_a_grid() -> None:
    scores, member, labels = _pool(40)
    mean, std = torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), 0.25)
    raw = torch.rand(40, 1, 6, 6)
    out = most_exposed(scores, member, labels, np.arange(40), attack="loss",
                       images=(raw - mean) / std, normalisation=(mean, std), top=10)  # fmt: skip
    assert out.thumbnails is not None and out.thumbnails.shape == (10, 1, 6, 6)
    first = out.records[0].pool_index
    np.testing.assert_allclose(out.thumbnails[0], raw[first].numpy(), atol=1e-6)
    png = thumbnail_grid(out, columns=5, scale=2)
    assert png is not None
    picture = Image.open(io.BytesIO(png))
    assert picture.size == (2 * (5 * 8 + 2), 2 * (2 * 8 + 2))  # 5 x 2 tiles of 6 + 2 padding
    assert thumbnail_grid(most_exposed(scores, member, labels, np.arange(40), attack="l")) is None


def test_a_trial_writes_who_leaks(tmp_path: Path) -> None:
    record = ExposedRecord(1, 7, 1007, 3.5, 2)
    thumbs = np.zeros((1, 1, 4, 4), np.float32)
    exposure = Exposure("lira", False, (record,), {2: 0.25}, {2: 8}, thumbs)
    result = fake_result(epochs=1)
    written = write_trial_artifacts(dataclasses.replace(result, exposure=exposure), tmp_path)
    names = [p.name for p in written]
    assert {"exposed.csv", "class_tpr.csv", "exposed.png"} <= set(names)
    rows = list(csv.DictReader((tmp_path / "exposed.csv").open()))
    assert rows == [{"rank": "1", "pool_index": "7", "dataset_index": "1007", "score": "3.5",
                     "label": "2", "attack": "lira"}]  # fmt: skip
    assert (tmp_path / "class_tpr.csv").read_text().splitlines()[1] == "2,8,0.2500"


def test_the_report_shows_who_leaks(tmp_path: Path) -> None:
    from fixtures_pick import make_run

    from search.reporting.inputs import Exposed, gather
    from search.reporting.page import render
    from search.study.reader import open_run

    inputs = gather(open_run(make_run(tmp_path)), client=None)
    assert "No who-leaks files were read" in render(inputs)
    png = b"\x89PNG\r\n\x1a\nfake"
    shown = dataclasses.replace(
        inputs, exposed=(Exposed(2, png, (("0", "40", "0.0250"), ("1", "38", ""))),)
    )
    page = render(shown)
    assert "<h2>Who leaks</h2>" in page and "data:image/png;base64,iVBORw0KGgpmYWtl" in page
    assert "0.0250" in page and "not resolved" in page
