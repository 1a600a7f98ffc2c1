"""Localisation (pptp/localize.py) and its command (search/localize.py), on the bundled digits.

Tiny recipes (200 members, a few epochs): the point is the contract (every group scored, finite,
deterministic, attributed to the right group, clear errors), not the figures.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pptp.config import TrialConfig
from pptp.errors import ConfigError
from pptp.layers import group_output_modules, group_parameters, layer_groups
from pptp.localize import (
    CSV_COLUMNS,
    GroupScore,
    LocalizationResult,
    check_matches,
    format_table,
    generalization,
    localize,
    log_ratio,
    plot_localization,
    privacy_risk,
    recipe_digest,
    split_members,
    write_csv,
)
from pptp.train import build_model, build_pool, train

MODELS = {"mlp": 32, "small_cnn": 8}


def tiny_config(model: str, **flat: object) -> TrialConfig:
    """200 members (D1 and D2: 100 each), 200 held-out test images, 4 epochs on the CPU."""
    base = {
        "data.name": "digits",
        "data.pool_size": 400,
        "data.test_size": 200,
        "data.val_size": 0,
        "model.name": model,
        "model.width": MODELS[model],
        "model.norm": "batch",
        "train.epochs": 4,
        "train.batch_size": 32,
        "train.warmup_epochs": 1,
        "train.crop_pad": 1,
        "train.device": "cpu",
    }
    return TrialConfig.from_flat({**base, **flat})


def fake_result(cfg: TrialConfig, risks: dict[str, float]) -> LocalizationResult:
    """A result with the given mean risks (groups in the given order), one seed."""
    groups = tuple(
        GroupScore(
            group=g,
            privacy_risk_mean=r,
            privacy_risk_std=0.01,
            generalization_mean=0.1 * i,
            generalization_std=0.02,
            risk_at_output_mean=r,
            risk_at_output_std=0.01,
            per_seed_privacy_risk=(r,),
            per_seed_generalization=(0.1 * i,),
            per_seed_risk_at_output=(r,),
            distance_d1=(0.2,),
            distance_d2=(0.2 * math.exp(r),),
            distance_held_out=(0.2,),
        )
        for i, (g, r) in enumerate(risks.items())
    )
    return LocalizationResult(
        model=cfg.model.name,
        dataset=cfg.data.name,
        config=cfg.to_flat(),
        recipe_digest=recipe_digest(cfg),
        seeds=(0,),
        groups=groups,
        test_acc_a=(0.9,),
        test_acc_b=(0.8,),
        sizes={"members": 200, "d1": 100, "d2": 100, "held_out": 200},
    )


# --------------------------------------------------------------------------------------------
# The measurement on trained models


@pytest.fixture(scope="module", params=sorted(MODELS))
def two_seeds(request: pytest.FixtureRequest) -> tuple[TrialConfig, LocalizationResult]:
    cfg = tiny_config(request.param)
    return cfg, localize(cfg, seeds=(0, 1))


def test_every_group_scored_and_finite(two_seeds: tuple[TrialConfig, LocalizationResult]) -> None:
    cfg, result = two_seeds
    pool = build_pool(cfg.data)
    names = [g.name for g in layer_groups(build_model(cfg.model, pool, seed=0))]
    assert [g.group for g in result.groups] == names
    assert result.seeds == (0, 1)
    assert result.sizes["members"] == 200 and result.sizes["d1"] == result.sizes["d2"] == 100
    for g in result.groups:
        per_seed = (g.per_seed_privacy_risk, g.per_seed_generalization, g.per_seed_risk_at_output)
        values = [v for seq in per_seed for v in seq]
        values += [*g.distance_d1, *g.distance_d2, *g.distance_held_out]
        assert len(g.per_seed_privacy_risk) == 2
        assert all(math.isfinite(v) for v in values), g
        assert all(0.0 <= d <= 1.0 for d in (*g.distance_d1, *g.distance_d2))
        assert -1.0 <= min(g.per_seed_generalization) <= max(g.per_seed_generalization) <= 1.0
        # mean and sample std over seeds
        assert g.privacy_risk_mean == pytest.approx(np.mean(g.per_seed_privacy_risk))
        assert g.privacy_risk_std == pytest.approx(np.std(g.per_seed_privacy_risk, ddof=1))
        assert g.generalization_std == pytest.approx(np.std(g.per_seed_generalization, ddof=1))
        # the risk is the log-ratio of the distances it reports
        assert g.per_seed_privacy_risk[0] == pytest.approx(
            log_ratio(g.distance_d1[0], g.distance_d2[0], g.distance_held_out[0])
        )
    assert all(0.0 <= a <= 1.0 for a in (*result.test_acc_a, *result.test_acc_b))
    ranked = result.ranked()
    assert [r.privacy_risk_mean for r in ranked] == sorted(
        (g.privacy_risk_mean for g in result.groups), reverse=True
    )
    assert result.rank(ranked[0].group) == 1 and len(result.ranked(2)) == 2


def test_deterministic_under_a_seed(two_seeds: tuple[TrialConfig, LocalizationResult]) -> None:
    """Seed 1 alone gives exactly what seed 1 gave next to seed 0."""
    cfg, result = two_seeds
    again = localize(cfg, seeds=(1,))
    for g, h in zip(result.groups, again.groups, strict=True):
        assert h.per_seed_privacy_risk == (g.per_seed_privacy_risk[1],)
        assert h.per_seed_generalization == (g.per_seed_generalization[1],)
        assert h.distance_d2 == (g.distance_d2[1],)
        assert h.privacy_risk_std == 0.0
    assert again.test_acc_a == (result.test_acc_a[1],)


def _plant(model_name: str, target: str) -> tuple[nn.Module, nn.Module, dict[str, torch.Tensor]]:
    """B trained on D1; A = B whose ``target`` group alone then trains on D2 (the rest frozen).

    The plant holds the group's output on D1 where it was (an MSE term), so what the group
    learns is specific to D2: memorisation. Without that term the fine-tuning also moves the
    group everywhere, which is no membership signal and which the score rightly discounts.
    """
    cfg = tiny_config(model_name, **{"train.epochs": 6})
    pool = build_pool(cfg.data)
    d1, d2 = split_members(np.flatnonzero(pool.keep(1)[0]), 0)
    model_b = build_model(cfg.model, pool, seed=0)
    train(model_b, pool, d1, cfg.train)
    model_a = copy.deepcopy(model_b)
    model_a.eval()  # BatchNorm statistics stay; only the target's weights move
    captured: dict[str, torch.Tensor] = {}
    hook = group_output_modules(model_a)[target].register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("out", out)
    )
    x1, x2, y2 = pool.x[d1], pool.x[d2], pool.y[d2]
    with torch.no_grad():
        model_a(x1)
        held = captured["out"].detach()
    params = [p for _, p in group_parameters(model_a)[target]]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    for _ in range(60):
        loss = F.cross_entropy(model_a(x2), y2)
        model_a(x1)
        loss = loss + F.mse_loss(captured["out"], held) / held.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    hook.remove()
    return model_a, model_b, {"d1": x1, "d2": x2, "h": pool.x_test}


@pytest.mark.parametrize(("model_name", "target"), [("mlp", "fc2"), ("small_cnn", "block3")])
def test_planted_memorising_group_ranks_first(model_name: str, target: str) -> None:
    model_a, model_b, x = _plant(model_name, target)
    risk = privacy_risk(model_a, model_b, x["d1"], x["d2"], x["h"])
    scores = dict(zip(risk.groups, risk.risk, strict=True))
    assert max(scores, key=scores.__getitem__) == target, scores
    assert scores[target] > 0.02
    # the groups A and B share score exactly 0: the swap measures what a group's weights add ...
    assert all(v == 0.0 for g, v in scores.items() if g != target)
    # ... while A's and B's outputs differ at every group after the plant (the cumulative view)
    after = risk.groups[risk.groups.index(target) + 1 :]
    at_output = dict(zip(risk.groups, risk.risk_at_output, strict=True))
    assert all(at_output[g] != 0.0 for g in after)


def test_generalization_is_zero_for_the_current_weights_and_restores_the_model() -> None:
    cfg = tiny_config("mlp")
    pool = build_pool(cfg.data)
    model = build_model(cfg.model, pool, seed=0)
    early = copy.deepcopy(model.state_dict())
    train(model, pool, np.flatnonzero(pool.keep(1)[0]), cfg.train)
    before = copy.deepcopy(model.state_dict())
    same = generalization(model, before, pool.x_test, pool.y_test)
    assert set(same) == {"fc1", "fc2", "fc3", "head"}
    assert all(v == 0.0 for v in same.values())
    drops = generalization(model, early, pool.x_test, pool.y_test)
    assert all(math.isfinite(v) for v in drops.values())
    assert max(drops.values()) > 0.0  # resetting some group to its initial weights hurts
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------------------------
# Bad input


class OneGroup(nn.Module):
    layer_groups = (("all", (r"lin(\..*)?",)),)

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def test_single_group_model_is_an_error() -> None:
    model, x = OneGroup(), torch.zeros(4, 1, 8, 8)
    with pytest.raises(ConfigError, match="single layer group"):
        privacy_risk(model, copy.deepcopy(model), x, x, x)
    with pytest.raises(ConfigError, match="single layer group"):
        generalization(model, model.state_dict(), x, torch.zeros(4, dtype=torch.long))


def test_member_set_too_small_to_halve_is_an_error() -> None:
    cfg = tiny_config("mlp", **{"data.pool_size": 6})  # 3 members
    with pytest.raises(ConfigError, match=r"3 examples.*at least 4"):
        localize(cfg, seeds=(0,))
    with pytest.raises(ConfigError, match="at least 4"):
        split_members(np.arange(3), 0)


def test_bad_seeds_are_errors() -> None:
    cfg = tiny_config("mlp")
    with pytest.raises(ConfigError, match="at least one seed"):
        localize(cfg, seeds=())
    with pytest.raises(ConfigError, match="repeat"):
        localize(cfg, seeds=(1, 1))


def test_split_members_halves_and_covers() -> None:
    members = np.arange(10, 31)
    d1, d2 = split_members(members, 3)
    assert len(d1) == 10 and len(d2) == 11
    assert sorted([*d1, *d2]) == list(members)
    assert np.array_equal(d1, split_members(members, 3)[0])
    assert not np.array_equal(d1, split_members(members, 4)[0])


# --------------------------------------------------------------------------------------------
# Results: JSON, identity, table, CSV, chart


def test_json_round_trip(tmp_path: Path) -> None:
    cfg = tiny_config("small_cnn")
    result = fake_result(
        cfg, {"block1": 0.1, "block2": -0.2, "block3": 0.3, "block4": 0.0, "head": 0.25}
    )
    path = result.save(tmp_path / "sub" / "localization.json")
    loaded = LocalizationResult.load(path)
    assert loaded == result
    assert json.loads(path.read_text())["format"] == "pptp.localization"
    assert [g.group for g in loaded.ranked(2)] == ["block3", "head"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no localisation result.*search/localize.py"):
        LocalizationResult.load(tmp_path / "missing.json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"study": "x"}))
    with pytest.raises(ConfigError, match="not a localisation result"):
        LocalizationResult.load(other)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        LocalizationResult.load(broken)
    data = fake_result(tiny_config("mlp"), {"fc1": 0.0, "head": 0.1}).to_json()
    del data["groups"][0]["privacy_risk_mean"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="not a valid localisation result"):
        LocalizationResult.load(bad)


def test_check_matches_names_what_differs(caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config("small_cnn")
    result = fake_result(cfg, {"block1": 0.1, "head": 0.2})
    check_matches(result, cfg)
    check_matches(result, cfg.replace(**{"train.seed": 7, "train.device": "auto"}))
    with pytest.raises(ConfigError, match=r"model.name = 'small_cnn' there, 'mlp' here"):
        check_matches(result, tiny_config("mlp", **{"model.width": 8}))
    with pytest.raises(ConfigError, match=r"model.width"):
        check_matches(result, cfg.replace(**{"model.width": 16}))
    with pytest.raises(ConfigError, match=r"data.name = 'digits' there, 'mnist' here"):
        check_matches(result, cfg.replace(**{"data.name": "mnist"}))
    with pytest.raises(ConfigError, match=r"data.seed"):
        check_matches(result, cfg.replace(**{"data.seed": 1}))
    check_matches(result, cfg.replace(**{"train.epochs": 9}))  # another recipe: a warning
    assert "train.epochs" in caplog.text


def test_table_csv_and_chart(tmp_path: Path) -> None:
    cfg = tiny_config("small_cnn")
    result = fake_result(
        cfg, {"block1": 0.1, "block2": -0.2, "block3": 0.3, "block4": 0.0, "head": 0.25}
    )
    table = format_table(result)
    lines = table.splitlines()
    for g in result.groups:
        assert any(line.startswith(g.group) for line in lines)
    assert "+0.3000 ± 0.0100" in table
    rows = write_csv(result, tmp_path / "l.csv").read_text().splitlines()
    assert rows[0].split(",") == list(CSV_COLUMNS)
    assert len(rows) == 1 + len(result.groups)
    png = plot_localization(result, tmp_path / "l.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = dataclasses.replace(result, groups=result.groups[:2])  # degenerate spreads still plot
    plot_localization(one, tmp_path / "one.png")


# --------------------------------------------------------------------------------------------
# The command


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
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

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
