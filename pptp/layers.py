"""Layer groups: the named, ordered units of a model and the parameters in each.

A **layer group** is a named, ordered unit of a model (CIFAR ResNet-18: ``stem, layer1, layer2,
layer3, layer4, head``), declared as regex patterns matched with :func:`re.fullmatch` against dotted
module and parameter names, as timm's ``group_matcher`` does
(``docs/design.md#layer-groups-and-selections``, ``docs/style.md``). Every parameter belongs to
exactly one group; :func:`check_groups` enforces it.

Where groups come from (one code path, :func:`layer_groups`):

- a model class declares ``layer_groups: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]]``;
- :func:`pptp.models.create_model` stores derived groups (:func:`derive_layer_groups`: the stages
  inside a model's containers) on torchvision models as the same attribute;
- any other module without the attribute gets derived groups on the fly (not stored).

Which groups PPTP protects is a selection (:mod:`pptp.selection`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from pptp.errors import ConfigError

logger = logging.getLogger(__name__)

_MAX_NAMES_IN_ERROR = 25


@dataclass(frozen=True)
class LayerGroup:
    """A named group: a parameter or module is in it when its dotted name fullmatches a pattern."""

    name: str
    patterns: tuple[str, ...]

    def matches(self, dotted_name: str) -> bool:
        return any(re.fullmatch(p, dotted_name) for p in self.patterns)


def subtree_pattern(module_name: str) -> str:
    """Pattern matching a module and everything under it: ``layer1`` -> ``layer1(\\..*)?``."""
    return re.escape(module_name) + r"(\..*)?"


# --------------------------------------------------------------------------------------------
# Groups of a model


def layer_groups(model: nn.Module) -> tuple[LayerGroup, ...]:
    """The model's ordered layer groups.

    Read from ``model.layer_groups`` (a class attribute of hand-written models, an instance
    attribute set by ``create_model`` on torchvision models): a sequence of ``(name, patterns)``
    pairs or :class:`LayerGroup` objects. A module without the attribute gets
    :func:`derive_layer_groups`.
    """
    declared = getattr(model, "layer_groups", None)
    if declared is None:
        return derive_layer_groups(model)
    groups = tuple(_as_layer_group(entry) for entry in declared)
    names = [g.name for g in groups]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{type(model).__name__} declares group(s) twice: {duplicates}")
    if not groups:
        raise ConfigError(f"{type(model).__name__} declares no layer groups")
    return groups


def _as_layer_group(entry: LayerGroup | tuple[str, Sequence[str]]) -> LayerGroup:
    if isinstance(entry, LayerGroup):
        return entry
    name, patterns = entry
    if isinstance(patterns, str):  # a lone pattern, not a tuple of its characters
        patterns = (patterns,)
    return LayerGroup(name, tuple(patterns))


#: derived grouping expands containers until it has this many groups (lone norm layers, such as
#: ViT's final LayerNorm or ResNet's ``bn1``, are not counted)
MIN_DERIVED_GROUPS = 4

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

#: pooling layers: in a flat container of single layers (VGG's ``features``) they end a stage
_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)


@dataclass
class _Unit:
    """A group being derived: the modules it covers (subtree patterns), parameters registered
    directly on an expanded ancestor (``extra``), and the module it may expand into (None when it
    covers several modules or one without parameter-holding children)."""

    name: str
    modules: list[str]
    extra: list[str]
    module: nn.Module | None
    size: int  # parameter-holding modules inside (which group to expand first)
    norm: bool = False  # a lone normalisation layer (not counted toward MIN_DERIVED_GROUPS)

    def group(self) -> LayerGroup:
        patterns = [subtree_pattern(m) for m in self.modules] + [re.escape(p) for p in self.extra]
        return LayerGroup(self.name, tuple(patterns))


def derive_layer_groups(model: nn.Module) -> tuple[LayerGroup, ...]:
    """Groups for a model that declares none: the stages of its containers, in order.

    Start from the model's parameter-holding top-level children (one group each, in
    registration order: torchvision ``resnet18`` gives ``conv1, bn1, layer1, ..., layer4, fc``).
    While there are fewer than :data:`MIN_DERIVED_GROUPS` groups besides lone normalisation
    layers, expand the group that holds the most parameter-holding modules into the stages
    inside it:

    - a container of single layers that has pooling layers (VGG's and AlexNet's ``features``)
      splits into stages that each end at a pooling layer, named by their first and last
      parameter-holding layer (``features.0-1``; the group's output is the stage's last module);
    - any other container splits into its parameter-holding children (MobileNet's and
      EfficientNet's ``features.0, features.1, ...``, ConvNeXt's stages and downsampling layers,
      DenseNet's dense blocks and transitions, ViT's encoder layers).

    Parameters registered directly on an expanded module (ViT's ``class_token`` on the root, its
    ``pos_embedding`` on the encoder) join the *first* of its groups, since such tokens and
    embeddings are used at the input. Registration order is taken as forward order; that holds
    for torchvision's classifiers. Hand-written models declare their groups instead.
    """
    sizes = _sizes(model)
    units = _expand(model, "", [], sizes)
    if not units:
        raise ConfigError(
            f"cannot derive layer groups for {type(model).__name__}: no submodule holds "
            "parameters; declare a layer_groups class attribute"
        )
    while True:
        expandable = [u for u in units if u.module is not None]
        if not expandable or sum(not u.norm for u in units) >= MIN_DERIVED_GROUPS:
            break
        target = max(expandable, key=lambda u: u.size)
        i = units.index(target)
        assert target.module is not None
        units[i : i + 1] = _expand(target.module, target.name + ".", target.extra, sizes)
    return tuple(u.group() for u in units)


def _sizes(model: nn.Module) -> dict[str, int]:
    """``module name -> number of parameter-holding modules in its subtree`` (root: ``""``)."""
    owners = [n for n, m in model.named_modules() if any(True for _ in m.parameters(False))]
    return {
        name: sum(1 for o in owners if name == "" or o == name or o.startswith(name + "."))
        for name, _ in model.named_modules()
    }


def _expand(module: nn.Module, prefix: str, extra: list[str], sizes: dict[str, int]) -> list[_Unit]:
    """The groups inside ``module`` (dotted name ``prefix`` with a trailing dot, or ``""``)."""
    children = list(module.named_children())
    holders = [(n, c) for n, c in children if sizes[prefix + n] > 0]
    if not holders:
        return []
    own = [prefix + n for n, _ in module.named_parameters(recurse=False)]
    flat = all(sizes[prefix + n] == 1 and not any(True for _ in c.children()) for n, c in holders)
    if flat and any(isinstance(c, _POOLS) for _, c in children[:-1]):
        units = _stages(children, prefix, sizes)
    else:
        units = [
            _Unit(
                prefix + n,
                [prefix + n],
                [],
                c if any(sizes[f"{prefix}{n}.{g}"] for g, _ in c.named_children()) else None,
                sizes[prefix + n],
                norm=isinstance(c, _NORMS),
            )
            for n, c in holders
        ]
    first = units[0]
    first.extra = [*extra, *own, *first.extra]
    return units


def _stages(
    children: list[tuple[str, nn.Module]], prefix: str, sizes: dict[str, int]
) -> list[_Unit]:
    """Split a flat container's children into runs that end at a pooling layer."""
    runs: list[list[str]] = [[]]
    for name, child in children:
        runs[-1].append(name)
        if isinstance(child, _POOLS):
            runs.append([])
    units: list[_Unit] = []
    for run in runs:
        holders = [n for n in run if sizes[prefix + n] > 0]
        if not holders:
            if units:  # parameter-free layers after the last stage belong to it
                units[-1].modules += [prefix + n for n in run]
            continue
        name = prefix + (holders[0] if len(holders) == 1 else f"{holders[0]}-{holders[-1]}")
        units.append(_Unit(name, [prefix + n for n in run], [], None, len(holders)))
    return units


def _assign(
    model: nn.Module, groups: Sequence[LayerGroup]
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Parameters per group; raises unless each parameter matches exactly one group."""
    assigned: dict[str, list[tuple[str, nn.Parameter]]] = {g.name: [] for g in groups}
    orphans: list[str] = []
    doubles: list[str] = []
    for pname, param in model.named_parameters():
        hits = [g.name for g in groups if g.matches(pname)]
        if len(hits) > 1:
            doubles.append(f"{pname} ({' and '.join(hits)})")
        elif not hits:
            orphans.append(pname)
        else:
            assigned[hits[0]].append((pname, param))
    if doubles:
        raise ConfigError(
            f"{len(doubles)} parameter(s) of {type(model).__name__} are in more than one layer "
            f"group: {shorten_names(doubles)}; make the groups' patterns disjoint"
        )
    if orphans:
        raise ConfigError(
            f"{len(orphans)} parameter(s) of {type(model).__name__} are in no layer group "
            f"(groups: {', '.join(g.name for g in groups)}): {shorten_names(orphans)}"
        )
    empty = [name for name, params in assigned.items() if not params]
    if empty:
        raise ConfigError(
            f"layer group(s) {empty} of {type(model).__name__} match no parameter; "
            "fix their patterns"
        )
    return assigned


def group_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """``{group: [(param_name, param), ...]}`` in group order, parameters in model order.

    Raises :class:`ConfigError` naming the parameter and groups when a parameter is in no group
    or in two, and naming the group when a group has no parameter.
    """
    return _assign(model, layer_groups(model))


def check_groups(model: nn.Module) -> tuple[LayerGroup, ...]:
    """Assert every parameter lands in exactly one group (see :func:`group_parameters`)."""
    groups = layer_groups(model)
    _assign(model, groups)
    return groups


def group_output_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{group: module}``: the module whose forward output is "the group's output".

    Rule: among the modules whose dotted names fullmatch one of the group's patterns, keep the
    *outermost* ones (no ancestor also matched by the group) and take the *last* in registration
    order (``model.named_modules()``). ResNet-18's ``layer2`` group gives the ``layer2``
    Sequential; a group declared as ``("conv1", "bn1")`` gives ``bn1``, so a forward hook there
    sees the output before any parameter-free activation that follows. Registration order is
    taken as forward order. Used for forward hooks: feature noise and per-group localisation
    features.
    """
    out: dict[str, nn.Module] = {}
    for group in layer_groups(model):
        matched: list[str] = []
        last: nn.Module | None = None
        for mname, module in model.named_modules():
            if not mname or not group.matches(mname):
                continue
            if any(mname.startswith(m + ".") for m in matched):
                continue
            matched.append(mname)
            last = module
        if last is None:
            raise ConfigError(
                f"layer group {group.name!r} of {type(model).__name__} matches no module name "
                f"(patterns {list(group.patterns)}), so it has no output to hook; add a pattern "
                "that matches the group's module"
            )
        out[group.name] = last
    return out


def shorten_names(names: Sequence[str]) -> str:
    """``names`` for an error message: the first 25, comma separated, then how many more."""
    shown = ", ".join(names[:_MAX_NAMES_IN_ERROR])
    more = len(names) - _MAX_NAMES_IN_ERROR
    return f"{shown}, ... ({more} more)" if more > 0 else shown
