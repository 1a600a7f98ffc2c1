"""First trials from a localisation (search/running/steering.py): valid for the space, right
groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fixtures_localize import fake_result
from optuna.distributions import CategoricalDistribution

from pptp.errors import ConfigError
from search.running.steering import enqueue_from_localization, load_for_space, localization_enqueue
from search.space import Space, contains, load_space

QUICKSTART = Path(__file__).resolve().parents[1] / "spaces" / "quickstart.yaml"
GROUPS = ("block1", "block2", "block3", "block4", "head")


def risks(*order: str) -> dict[str, float]:
    """Model-ordered risks where ``order`` lists groups from riskiest down."""
    score = {g: -1.0 for g in GROUPS}
    for i, g in enumerate(order):
        score[g] = 1.0 - 0.1 * i
    return score


def inside(space: Space, trial: dict[str, Any]) -> bool:
    return all(contains(space.params[k], v) for k, v in trial.items())


@pytest.fixture(scope="module")
def quickstart() -> Space:
    return load_space(QUICKSTART)


def test_suffix_groups_become_suffix_splits(quickstart: Space) -> None:
    result = fake_result(quickstart.base_config(), risks("head", "block4", "block3"))
    trials = enqueue_from_localization(result, quickstart)
    assert [(t["protect.split"], t["protect.direction"]) for t in trials] == [
        (1, "suffix"), (2, "suffix"), (3, "suffix"),
    ]  # fmt: skip
    for t in trials:
        assert set(t) == set(quickstart.params)
        assert inside(quickstart, t)
        assert t["protect.operator"] == "noise"  # the first choice
        assert t["protect.strength"] == 0.5  # the midpoint of [0, 1]
    # the space builds a valid trial config from each
    assert quickstart.trial_config(trials[0]).protect.split == 1


def test_prefix_and_non_contiguous(quickstart: Space) -> None:
    cfg = quickstart.base_config()
    prefix = enqueue_from_localization(fake_result(cfg, risks("block1", "block2")), quickstart)
    assert [(t["protect.split"], t["protect.direction"]) for t in prefix][:2] == [
        (1, "prefix"), (2, "prefix"),
    ]  # fmt: skip
    # block3 alone, then block3 + head: neither is a prefix or a suffix; block3..head is
    gapped = enqueue_from_localization(
        fake_result(cfg, risks("block3", "head", "block4")), quickstart
    )
    assert [(t["protect.split"], t["protect.direction"]) for t in gapped] == [(3, "suffix")]
    # top_k 1 and a middle group: nothing to enqueue
    assert enqueue_from_localization(fake_result(cfg, risks("block2")), quickstart, top_k=1) == []


def test_each_operator(quickstart: Space) -> None:
    result = fake_result(quickstart.base_config(), risks("head", "block4"))
    trials = enqueue_from_localization(result, quickstart, top_k=2, operators="each")
    dist = quickstart.params["protect.operator"]
    assert isinstance(dist, CategoricalDistribution)
    operators = dist.choices
    assert len(trials) == 2 * len(operators)
    assert {t["protect.operator"] for t in trials} == set(operators)
    assert all(inside(quickstart, t) for t in trials)
    with pytest.raises(ConfigError, match="operators"):
        enqueue_from_localization(result, quickstart, operators="all")


def _space(tmp_path: Path, params: str, *, study: str = "", model: str = "small_cnn") -> Space:
    path = tmp_path / "space.yaml"
    path.write_text(
        f"study: {{name: steer, sampler: random{study}}}\n"
        "fixed:\n  data: {name: digits}\n"
        f"  model: {{name: {model}, width: 32, norm: group}}\n"
        "  attack: {attacks: [loss]}\n"
        f"params:\n{params}"
    )
    return load_space(path)


def test_mask_mode_and_other_keys(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "  protect.groups: {type: categorical, choices: [block2, head]}\n"
        "  protect.operator: {type: categorical, choices: [damp, anchor]}\n"
        "  protect.strength: {type: float, low: 0.2, high: 1.0, step: 0.2}\n"
        "  train.lr: {type: float, low: 0.01, high: 1.0, log: true}\n"
        "  train.epochs: {type: int, low: 5, high: 25, step: 5}\n",
    )
    trials = enqueue_from_localization(fake_result(space.base_config(), risks("head")), space)
    assert trials == [{"protect.groups": "head", "protect.operator": "damp",
                       "protect.strength": 0.6, "train.lr": pytest.approx(0.1),
                       "train.epochs": 15}]  # fmt: skip
    assert inside(space, trials[0])
    assert space.trial_config(trials[0]).protect.groups == ("head",)
    # a group the space does not offer
    assert enqueue_from_localization(fake_result(space.base_config(), risks("block4")), space) == []


def test_fixed_direction(tmp_path: Path) -> None:
    space = _space(
        tmp_path,
        "  protect.split: {type: int, low: 1, high: 2}\n"
        "  protect.operator: {type: categorical, choices: [damp]}\n",
    )
    cfg = space.base_config()  # direction: prefix (the default)
    assert enqueue_from_localization(fake_result(cfg, risks("head", "block4")), space) == []
    trials = enqueue_from_localization(fake_result(cfg, risks("block1", "block2", "block3")), space)
    assert trials == [
        {"protect.split": 1, "protect.operator": "damp"},
        {"protect.split": 2, "protect.operator": "damp"},
    ]  # split 3 > high


def test_load_for_space(tmp_path: Path, quickstart: Space) -> None:
    run = fake_result(quickstart.base_config(), risks("head")).save(tmp_path / "loc.json")
    assert load_for_space({"run": str(run)}, quickstart).model == "small_cnn"
    with pytest.raises(ConfigError, match=r"study.localization.run: no localisation result"):
        load_for_space({"run": str(tmp_path / "missing.json")}, quickstart)
    with pytest.raises(ConfigError, match=r"study.localization.runs: unknown key"):
        load_for_space({"runs": str(run)}, quickstart)
    with pytest.raises(ConfigError, match=r"study.localization.run: needs the path"):
        load_for_space({}, quickstart)
    with pytest.raises(ConfigError, match=r"top_k: must be an integer"):
        load_for_space({"run": str(run), "top_k": 0}, quickstart)
    other = fake_result(
        quickstart.base_config().replace(**{"model.name": "mlp"}), {"fc1": 0.1, "head": 0.2}
    ).save(tmp_path / "other.json")
    with pytest.raises(ConfigError, match=r"another model or dataset: model.name"):
        load_for_space({"run": str(other)}, quickstart)


def test_localization_enqueue_reads_the_space(tmp_path: Path) -> None:
    params = (
        "  protect.split: {type: int, low: 1, high: 4}\n"
        "  protect.direction: {type: categorical, choices: [prefix, suffix]}\n"
    )
    assert localization_enqueue(_space(tmp_path, params)) == []
    run = fake_result(_space(tmp_path, params).base_config(), risks("head", "block4"))
    path = run.save(tmp_path / "loc.json")
    space = _space(tmp_path, params, study=f", localization: {{run: {path}, top_k: 1}}")
    assert localization_enqueue(space) == [{"protect.split": 1, "protect.direction": "suffix"}]
