"""pptp.localize.measure: a group planted to memorise D2 ranks first and groups A and B share
score exactly 0; resetting a group to its current weights costs nothing and restores the model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_localize import tiny_config
from torch import nn

from pptp.data import build_pool
from pptp.errors import ConfigError
from pptp.layers import group_output_modules, group_parameters
from pptp.localize import generalization, privacy_risk, split_members
from pptp.models import build_model
from pptp.train import train


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
