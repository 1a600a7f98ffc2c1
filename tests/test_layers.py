"""Tests for pptp.layers: grouping invariants, group outputs, selections and partitions."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import pytest
import torch
import yaml
from torch import nn

from pptp.errors import ConfigError
from pptp.layers import (
    LayerGroup,
    Partition,
    Selection,
    check_groups,
    derive_layer_groups,
    group_output_modules,
    group_parameters,
    layer_groups,
    partition,
    resolve,
)
from pptp.models import MODELS, create_model

ALL = [*sorted(MODELS), "torchvision.vgg11_bn", "torchvision.mobilenet_v3_small"]
ALL.append("torchvision.resnet18")


@functools.cache
def build(name: str) -> nn.Module:
    width = 8 if name == "resnet18" else None
    return create_model(name, num_classes=5, in_channels=3, image_size=32, width=width)


def group_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(g.name for g in layer_groups(model))


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
            r"parameter 'conv1.weight' of Toy is in more than one layer group: \['stem', 'all'\]",
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


# --------------------------------------------------------------------------------------------
# Selections and partitions


def assert_complementary(model: nn.Module, part: Partition) -> None:
    names = [n for n, _ in model.named_parameters()]
    assert not set(part.protected) & set(part.free)
    assert sorted(part.protected + part.free) == sorted(names)
    assert list(part.protected) == [n for n in names if n in part.protected]  # model order
    assert list(part.mask) == list(group_names(model))
    assert part.protected_groups == tuple(g for g, on in part.mask.items() if on)


@pytest.mark.parametrize("name", ALL)
def test_split_partitions(name: str) -> None:
    model = build(name)
    names = group_names(model)
    grouped = group_parameters(model)
    n = len(names)
    for k in range(n + 1):
        for direction, expected in (("prefix", names[:k]), ("suffix", names[n - k :])):
            part = partition(model, Selection(split=k, direction=direction))
            assert_complementary(model, part)
            assert part.protected_groups == expected
            assert resolve(Selection(split=k, direction=direction), model) == expected
            assert set(part.protected) == {p for g in expected for p, _ in grouped[g]}
    assert partition(model, Selection.prefix(0)).protected == ()
    assert partition(model, Selection.suffix(0)).protected == ()
    assert partition(model, Selection.prefix(n)).free == ()
    assert partition(model, Selection.suffix(n)).free == ()


@pytest.mark.parametrize("name", ALL)
def test_mask_and_pattern_partitions(name: str) -> None:
    model = build(name)
    names = group_names(model)
    chosen = names[::2]
    part = partition(model, Selection.mask(*reversed(chosen)))  # order given does not matter
    assert_complementary(model, part)
    assert part.protected_groups == chosen
    assert part.mask == {g: g in chosen for g in names}
    # the chosen groups' own patterns, as a pattern selection, protect the same parameters
    patterns = [p for g in layer_groups(model) if g.name in chosen for p in g.patterns]
    assert partition(model, Selection.matching(*patterns)) == part
    assert partition(model, Selection.mask()).protected == ()


def test_patterns_protect_part_of_a_group() -> None:
    model = build("resnet18")
    part = partition(model, Selection.matching(r"layer1\.0"))
    assert_complementary(model, part)
    assert part.protected_groups == ("layer1",)
    assert part.protected
    assert all(p.startswith("layer1.0.") for p in part.protected)
    assert any(p.startswith("layer1.1.") for p in part.free)


def test_patterns_match_parameter_names_too() -> None:
    model = build("mlp")
    part = partition(model, Selection.matching(r".*\.bias", r"fc1"))
    assert set(part.protected) == {
        n for n, _ in model.named_parameters() if n.endswith(".bias") or n.startswith("fc1.")
    }
    assert part.mask == {"fc1": True, "fc2": True, "fc3": True, "head": True}


def test_param_groups_feed_an_optimizer() -> None:
    model = build("small_cnn")
    part = partition(model, Selection.prefix(2))
    groups = part.param_groups(model, lr=0.1)
    assert [g["protected"] for g in groups] == [True, False]
    assert [len(g["params"]) for g in groups] == [len(part.protected), len(part.free)]
    optimizer = torch.optim.SGD(groups)
    assert optimizer.param_groups[0]["protected"] is True
    assert optimizer.param_groups[1]["lr"] == 0.1
    # nothing protected: an empty protected group is still accepted
    empty = partition(model, Selection.prefix(0)).param_groups(model, lr=0.1)
    torch.optim.SGD(empty)


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (Selection.prefix(7), r"split 7 is outside \[0, 6\] .*stem, layer1, .*head"),
        (Selection.suffix(-1), r"split -1 is outside \[0, 6\]"),
        (Selection.mask("layer1", "layer9"), r"unknown layer group\(s\) \['layer9'\].* stem"),
        (Selection.matching("layer1", "nothing"), "pattern 'nothing' matches no module.*layer1"),
    ],
)
def test_selection_errors_against_model(selection: Selection, message: str) -> None:
    model = build("resnet18")
    with pytest.raises(ConfigError, match=message):
        partition(model, selection)
    with pytest.raises(ConfigError, match=message):
        resolve(selection, model)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of split .* got none"),
        ({"split": 1, "direction": "prefix", "groups": ("head",)}, "got split, groups"),
        ({"groups": ("head",), "patterns": ("head",)}, "got groups, patterns"),
        ({"split": 1, "direction": "middle"}, "unknown selection direction 'middle'"),
        ({"split": 1}, "unknown selection direction None"),
        ({"groups": ("head",), "direction": "prefix"}, "only applies to split"),
        ({"split": "2", "direction": "prefix"}, "split must be an integer"),
        ({"split": True, "direction": "prefix"}, "split must be an integer"),
        ({"patterns": ("layer(",)}, "is not a regex"),
    ],
)
def test_selection_errors_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Selection(**kwargs)


@pytest.mark.parametrize(
    "selection",
    [
        Selection.prefix(0),
        Selection.suffix(3),
        Selection.mask("stem", "head"),
        Selection.mask(),
        Selection.matching(r"layer1\.0", r".*\.bias"),
    ],
)
def test_selection_config_round_trip(selection: Selection) -> None:
    config = selection.to_config()
    assert Selection.from_mapping(config) == selection
    assert Selection.from_mapping(yaml.safe_load(yaml.safe_dump(config))) == selection


def test_selection_normalises_names() -> None:
    assert Selection(groups="head") == Selection(groups=["head"]) == Selection.mask("head")  # type: ignore[arg-type]
    assert Selection(groups="head").groups == ("head",)  # type: ignore[arg-type]
    assert hash(Selection(patterns=["a"])) == hash(Selection.matching("a"))  # type: ignore[arg-type]


def test_selection_from_flat_values() -> None:
    assert Selection.from_config(split=2.0, direction="suffix") == Selection.suffix(2)  # type: ignore[arg-type]
    assert Selection.from_config(groups="head") == Selection.mask("head")
    # a config's default direction rides along with groups / patterns and is ignored there
    assert Selection.from_config(groups=("head",), direction="prefix") == Selection.mask("head")
    assert Selection.from_config(patterns="a", direction="suffix") == Selection.matching("a")
    with pytest.raises(ConfigError, match="unknown selection direction None"):
        Selection.from_config(split=1)
    assert Selection.from_config(patterns=["a", "b"]) == Selection.matching("a", "b")
    assert Selection.from_mapping(yaml.safe_load("split: 2\ndirection: prefix\n")).split == 2
    with pytest.raises(ConfigError, match=r"unknown selection key\(s\) \['splt'\]"):
        Selection.from_mapping({"splt": 2})
    with pytest.raises(ConfigError, match="must be strings"):
        Selection.from_config(groups=[1, 2])  # type: ignore[list-item]
