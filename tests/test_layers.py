"""Tests for pptp.layers: grouping invariants, derived groups and group outputs."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from fixtures_layers import ALL, build, group_names
from torch import nn

from pptp.errors import ConfigError
from pptp.layers import (
    LayerGroup,
    check_groups,
    derive_layer_groups,
    group_output_modules,
    group_parameters,
    layer_groups,
)

# --------------------------------------------------------------------------------------------
# Grouping


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_in_exactly_one_group(name: str) -> None:
    model = build(name)
    grouped = group_parameters(model)
    assert tuple(grouped) == group_names(model)
    flat = [pname for params in grouped.values() for pname, _ in params]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    assert len(flat) == len(set(flat))
    # groups are contiguous runs of the model's parameter order, in group order
    assert flat == [n for n, _ in model.named_parameters()]
    for params in grouped.values():
        assert params, "no empty group"
        for pname, param in params:
            assert param is model.get_parameter(pname)


class Toy(nn.Module):
    """conv1 -> bn1 -> relu -> fc; groups declared per test."""

    layer_groups: ClassVar[Any] = (("stem", ("conv1.*", "bn1.*")), ("head", ("fc.*",)))

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.bn1(self.conv1(x))).mean(dim=(2, 3)))


def toy_with(groups: Any) -> Toy:
    toy = Toy()
    toy.__dict__["layer_groups"] = groups  # instance attribute, as create_model stores it
    return toy


def test_toy_groups_pass_check() -> None:
    groups = check_groups(Toy())
    assert groups == (LayerGroup("stem", ("conv1.*", "bn1.*")), LayerGroup("head", ("fc.*",)))


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (
            (("stem", ("conv1.*", "bn1.*")), ("all", (".*",))),
            r"4 parameter\(s\) of Toy are in more than one layer group: conv1.weight \(stem and "
            r"all\), conv1.bias \(stem and all\), bn1.weight",
        ),
        (
            (("stem", ("conv1.*",)), ("head", ("fc.*",))),
            r"in no layer group .*bn1.weight, bn1.bias",
        ),
        ((("stem", (".*",)), ("empty", ("nothing",))), r"group\(s\) \['empty'\] .* no parameter"),
        ((("a", (".*",)), ("a", ("x",))), "declares group"),
        ((), "declares no layer groups"),
    ],
)
def test_broken_grouping_raises(groups: Any, message: str) -> None:
    toy = toy_with(groups)
    with pytest.raises(ConfigError, match=message):
        check_groups(toy)
    with pytest.raises(ConfigError, match=message):
        group_parameters(toy)


def test_single_pattern_string_is_one_pattern() -> None:
    toy = toy_with((("stem", "(conv1|bn1)\\..*"), ("head", "fc\\..*")))
    assert [len(ps) for ps in group_parameters(toy).values()] == [4, 2]


def test_derive_groups_from_top_level_children() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert derive_layer_groups(model) == (
        LayerGroup("0", (r"0(\..*)?",)),
        LayerGroup("2", (r"2(\..*)?",)),
    )
    assert layer_groups(model) == derive_layer_groups(model)  # no attribute: derived on the fly


def test_derive_groups_splits_a_single_child() -> None:
    wrapper = nn.Sequential()
    wrapper.add_module("body", nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))))
    wrapper.add_module("act", nn.ReLU())
    groups = derive_layer_groups(wrapper)
    assert [g.name for g in groups] == ["body.0.0", "body.0.1"]
    assert list(group_parameters(wrapper)) == ["body.0.0", "body.0.1"]


def test_derive_groups_puts_root_parameters_in_first_group() -> None:
    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(2, 2)
            self.token = nn.Parameter(torch.zeros(2))
            self.head = nn.Linear(2, 2)

    grouped = group_parameters(WithToken())
    assert {g: [n for n, _ in ps] for g, ps in grouped.items()} == {
        "embed": ["token", "embed.weight", "embed.bias"],  # model order: own first
        "head": ["head.weight", "head.bias"],
    }


def test_derive_groups_expands_a_features_container_into_its_stages() -> None:
    model = nn.Sequential()
    model.add_module(
        "features",
        nn.Sequential(
            nn.Conv2d(1, 2, 3),
            nn.BatchNorm2d(2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # stage 1
            nn.Conv2d(2, 2, 3),
            nn.ReLU(),
            nn.Conv2d(2, 2, 3),
            nn.MaxPool2d(2),  # stage 2
            nn.Conv2d(2, 2, 3),
            nn.ReLU(),  # stage 3 (no pooling at the end)
        ),
    )
    model.add_module("classifier", nn.Sequential(nn.Flatten(), nn.Linear(2, 2)))
    groups = derive_layer_groups(model)
    assert [g.name for g in groups] == ["features.0-1", "features.4-6", "features.8", "classifier"]
    model.__dict__["layer_groups"] = groups
    outputs = group_output_modules(model)
    assert outputs["features.0-1"] is model.features[3]  # the stage's pooling
    assert outputs["features.8"] is model.features[9]
    assert list(group_parameters(model)["features.4-6"]) == [
        ("features.4.weight", model.features[4].weight),
        ("features.4.bias", model.features[4].bias),
        ("features.6.weight", model.features[6].weight),
        ("features.6.bias", model.features[6].bias),
    ]


def test_derive_groups_keeps_four_stage_models_as_they_are() -> None:
    # four parameter-holding children (one of them a lone norm, not counted): expand the biggest
    blocks = [nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)) for _ in range(3)]
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), *blocks)
    assert [g.name for g in derive_layer_groups(model)] == ["0", "1", "2", "3", "4"]
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), *blocks[:2])
    names = [g.name for g in derive_layer_groups(model)]
    assert names == ["0", "1", "2.0", "2.1", "3"]


def test_derive_groups_needs_parameters() -> None:
    with pytest.raises(ConfigError, match="no submodule holds parameters"):
        derive_layer_groups(nn.Sequential(nn.ReLU()))


# --------------------------------------------------------------------------------------------
# Group outputs


def test_group_outputs_are_last_outermost_modules() -> None:
    toy = Toy()
    assert group_output_modules(toy) == {"stem": toy.bn1, "head": toy.fc}


def test_group_output_needs_a_module_match() -> None:
    toy = toy_with((("stem", ("conv1.*", "bn1.*")), ("head", (r"fc\.weight", r"fc\.bias"))))
    with pytest.raises(ConfigError, match=r"'head' .* matches no module name"):
        group_output_modules(toy)


@pytest.mark.parametrize("name", ALL)
def test_group_outputs_are_the_group_modules(name: str) -> None:
    model = build(name)
    outputs = group_output_modules(model)
    assert list(outputs) == list(group_names(model))
    for group, module in outputs.items():
        if "-" in group:  # a stage of a flat container (VGG): its last layer, the pooling
            last = group.split("-")[0].rsplit(".", 1)[0]
            assert isinstance(module, nn.MaxPool2d)
            assert any(module is m for n, m in model.named_modules() if n.startswith(last))
        else:
            assert module is model.get_submodule(group)


def test_resnet_group_output_shapes() -> None:
    model = build("resnet18")  # width 8
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, g=group: shapes.__setitem__(g, tuple(out.shape))
        )
        for group, module in group_output_modules(model).items()
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
    finally:
        model.train()
        for handle in handles:
            handle.remove()
    assert shapes == {
        "stem": (2, 8, 32, 32),
        "layer1": (2, 8, 32, 32),
        "layer2": (2, 16, 16, 16),
        "layer3": (2, 32, 8, 8),
        "layer4": (2, 64, 4, 4),
        "head": (2, 5),
    }
