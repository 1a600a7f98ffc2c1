"""Tests for pptp.selection: selections (construction, config round trips) and partitions."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from fixtures_layers import ALL, build, group_names
from torch import nn

from pptp.errors import ConfigError
from pptp.layers import group_parameters, layer_groups
from pptp.selection import Partition, Selection, partition, resolve


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
