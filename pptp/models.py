"""Models registry with ordered layer groups (timm's style;
``docs/design.md#layer-groups-and-selections``).

``create_model(name, ...)`` builds either a hand-written model from :data:`MODELS` or any
torchvision classification model by the name ``torchvision.<name>``. Every model it returns
carries ``layer_groups`` (ordered ``(name, patterns)`` pairs read by :mod:`pptp.layers`), has
been checked so that each parameter lands in exactly one group, and has run one dry forward pass
on a ``(1, in_channels, image_size, image_size)`` input, so a model that cannot take the data's
shape fails here with a :class:`ConfigError`, not in the middle of training.

Hand-written models (all accept any ``in_channels`` and ``image_size``, e.g. 1x8x8 digits,
1x28x28 MNIST, 3x32x32 CIFAR):

===========  ========================================================  ==========================
name         architecture (``w`` = ``width``)                          groups
===========  ========================================================  ==========================
resnet18     CIFAR ResNet-18 (He et al. 2016, arXiv 1512.03385): 3x3   stem, layer1..layer4, head
             stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2],
             widths w, 2w, 4w, 8w; w=64 gives 11.17M parameters
small_cnn    4 x (3x3 conv, norm, ReLU), widths w, w, 2w, 2w, 2x2      block1..block4, head
             max-pool after blocks 1-3 while the map stays >= 2x2;
             w=32 gives 0.066M parameters
mlp          flatten, 3 x (linear, norm, ReLU) of width w=256          fc1, fc2, fc3, head
===========  ========================================================  ==========================

Every ``head`` is adaptive average pooling (convolutional models) and a linear layer, so the
``head`` module's output is the logits.

``norm`` (:data:`NORMS`): ``"batch"`` (BatchNorm), ``"group"`` (GroupNorm, see
:func:`group_norm`) or ``"none"``. The GroupNorm variants exist because BatchNorm mixes the
examples of a batch, so per-example gradients (DP-SGD, the ``noise`` operator) are ill-defined
with it. In the MLP the norm acts on the hidden features
(BatchNorm1d / GroupNorm over the feature vector). Layers followed by a norm have no bias (the
norm's shift replaces it); with ``"none"`` they have one.

torchvision models: ``torchvision.models.get_model(name, weights=None, num_classes=...)`` (never
pretrained weights; nothing is downloaded). See :func:`create_torchvision_model` for how the input
conv is adapted, how ``norm`` applies and how groups are derived.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from pptp.checkpoint import load_init
from pptp.config import DataConfig, ModelConfig
from pptp.data import Pool, dataset_spec
from pptp.datasets import DataFacts
from pptp.errors import ConfigError
from pptp.imports import is_import_path
from pptp.layers import check_groups, derive_layer_groups, subtree_pattern
from pptp.own_model import create_own_model, dry_run
from pptp.registry import Registry

logger = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision."
GroupSpec = tuple[tuple[str, tuple[str, ...]], ...]


# --------------------------------------------------------------------------------------------
# Normalisation layers


@dataclass(frozen=True)
class Norm:
    """How a model normalises: builders for conv maps ``(N, C, H, W)`` and features ``(N, C)``.

    ``layer_bias`` says whether the conv / linear layer before the norm needs its own bias.
    """

    name: str
    conv: Callable[[int], nn.Module]
    features: Callable[[int], nn.Module]
    layer_bias: bool


MIN_CHANNELS_PER_GROUP = 8


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups, at most 32, that keep >= 8 channels in each group.

    32 groups is the default of Wu & He 2018 (arXiv 1803.08494), for wide layers (256 channels
    and up). Narrow layers get fewer: on a 1x1 map, or on an MLP's (N, C) features, a group of k
    values is normalised to zero mean and unit variance, so it keeps only k - 1 degrees of
    freedom, and with 2 per group only a sign (such models did not learn digits). Examples:
    8 channels -> 1 group, 32 -> 4, 64 -> 8, 72 -> 9, 256 -> 32.
    """
    limit = max(1, min(32, channels // MIN_CHANNELS_PER_GROUP))
    groups = max(g for g in range(1, limit + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _identity(channels: int) -> nn.Module:
    return nn.Identity()


NORMS: Registry[Norm] = Registry("norm")
NORMS.register("batch")(Norm("batch", nn.BatchNorm2d, nn.BatchNorm1d, layer_bias=False))
NORMS.register("group")(Norm("group", group_norm, group_norm, layer_bias=False))
NORMS.register("none")(Norm("none", _identity, _identity, layer_bias=True))


# --------------------------------------------------------------------------------------------
# Registry


class ModelFactory(Protocol):
    """Builds a model; ``width=None`` means the model's default width."""

    def __call__(
        self, *, num_classes: int, in_channels: int, image_size: int, width: int | None, norm: Norm
    ) -> nn.Module: ...


MODELS: Registry[ModelFactory] = Registry("model")


def list_models(pattern: str | None = None, *, include_torchvision: bool = False) -> list[str]:
    """Sorted model names, optionally filtered by an ``fnmatch`` pattern (``"res*"``).

    Hand-written models only, unless ``include_torchvision``: then also every torchvision
    classification model as ``torchvision.<name>``.
    """
    names = list(MODELS)
    if include_torchvision:
        names += [TORCHVISION_PREFIX + n for n in _torchvision_names()]
    if pattern is not None:
        names = fnmatch.filter(names, pattern)
    return sorted(names)


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: int | None = None,
    norm: str = "batch",
) -> nn.Module:
    """Build model ``name`` for ``(in_channels, image_size, image_size)`` inputs.

    Returns a module in training mode whose ``forward`` maps ``(N, in_channels, image_size,
    image_size)`` to logits ``(N, num_classes)`` and whose ``layer_groups`` cover every
    parameter exactly once. Raises :class:`ConfigError` for an unknown name or norm, a
    non-positive size, ``width`` on a torchvision model, or a model that cannot take the shape.
    """
    for key, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("image_size", image_size),
        ("width", width),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    resolved = NORMS[norm]
    if name.startswith(TORCHVISION_PREFIX):
        if width is not None:
            raise ConfigError(f"width applies to hand-written models only, not {name}")
        model = create_torchvision_model(
            name.removeprefix(TORCHVISION_PREFIX),
            num_classes=num_classes,
            in_channels=in_channels,
            norm=resolved.name,
        )
    else:
        model = MODELS[name](
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            width=width,
            norm=resolved,
        )
    groups = check_groups(model)
    dry_run(model, name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    logger.info(
        "created %s (norm=%s): %d parameters, groups %s",
        name,
        resolved.name,
        sum(p.numel() for p in model.parameters()),
        ", ".join(g.name for g in groups),
    )
    return model


def build_model(cfg: ModelConfig, pool: Pool, *, seed: int) -> nn.Module:
    """The model a model config names, for ``pool``'s input shape ``(C, H, W)`` and classes,
    initialised from ``seed`` (``torch.manual_seed``), then from ``cfg.init`` (pptp.checkpoint)."""
    torch.manual_seed(seed)
    _, channels, height, _ = pool.x.shape
    facts = DataFacts(pool.num_classes, channels, height, table=pool.table)
    model = model_from_config(cfg, facts)
    return model if cfg.init is None else load_init(model, cfg.init)


def model_from_config(cfg: ModelConfig, facts: DataFacts) -> nn.Module:
    """A registered model (:func:`create_model`) or a user's factory named by import path
    (:func:`pptp.own_model.create_own_model`), checked by one dry forward either way."""
    if not is_import_path(cfg.name):
        return create_model(
            cfg.name,
            num_classes=facts.num_classes,
            in_channels=facts.channels,
            image_size=facts.image_size,
            width=cfg.width,
            norm=cfg.norm,
        )
    model = create_own_model(cfg, facts)
    dry_run(
        model,
        cfg.name,
        num_classes=facts.num_classes,
        in_channels=facts.channels,
        image_size=facts.image_size,
    )
    return model


def check_model(cfg: ModelConfig, data: DataConfig) -> nn.Module | None:
    """Build a user's model (or one with ``init``) on the CPU for ``data``'s facts: a bad factory,
    groups, output shape or checkpoint stops the command (:class:`ConfigError`) before training."""
    if not is_import_path(cfg.name) and cfg.init is None:
        return None
    model = model_from_config(cfg, dataset_spec(data).facts(data.image_size))
    return model if cfg.init is None else load_init(model, cfg.init)


# --------------------------------------------------------------------------------------------
# Hand-written models


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a shortcut (1x1 conv + norm when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, *, stride: int, norm: Norm) -> None:
        super().__init__()
        bias = norm.layer_bias
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = norm.conv(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.norm2 = norm.conv(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), norm.conv(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _head(features: int, num_classes: int) -> nn.Sequential:
    """Global average pool ``(N, C, H, W) -> (N, C)`` then a linear layer to logits."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(features, num_classes))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stride-1 stem, no max-pool, stages of 2 BasicBlocks.

    Feature maps for a 32x32 input: stem and layer1 32x32 (w channels), layer2 16x16 (2w),
    layer3 8x8 (4w), layer4 4x4 (8w). Stride-2 convs with padding 1 keep a 1x1 map at 1x1, so
    any image size works.
    """

    layer_groups: ClassVar[GroupSpec] = tuple(
        (g, (subtree_pattern(g),)) for g in ("stem", "layer1", "layer2", "layer3", "layer4", "head")
    )

    def __init__(self, *, num_classes: int, in_channels: int, width: int, norm: Norm) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=norm.layer_bias),
            norm.conv(width),
            nn.ReLU(),
        )
        widths = (width, 2 * width, 4 * width, 8 * width)
        c_in = width
        for i, c_out in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            stage = nn.Sequential(
                BasicBlock(c_in, c_out, stride=stride, norm=norm),
                BasicBlock(c_out, c_out, stride=1, norm=norm),
            )
            self.add_module(f"layer{i}", stage)
            c_in = c_out
        self.head = _head(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.head(x)


class SmallCNN(nn.Module):
    """Four conv-norm-ReLU blocks (widths w, w, 2w, 2w) and a pooled linear head.

    Blocks 1-3 end in a 2x2 max-pool while the pooled map stays at least 2x2 (decided from
    ``image_size`` at construction), so 32x32 goes 16, 8, 4 and 8x8 goes 4, 2, 2: the last
    block never normalises a 1x1 map. The head's adaptive pool takes what remains to 1x1.
    """

    layer_groups: ClassVar[GroupSpec] = tuple(
        (g, (subtree_pattern(g),)) for g in ("block1", "block2", "block3", "block4", "head")
    )

    def __init__(
        self, *, num_classes: int, in_channels: int, image_size: int, width: int, norm: Norm
    ) -> None:
        super().__init__()
        widths = (width, width, 2 * width, 2 * width)
        c_in, size = in_channels, image_size
        for i, c_out in enumerate(widths, start=1):
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm.layer_bias),
                norm.conv(c_out),
                nn.ReLU(),
            ]
            if i < len(widths) and size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            self.add_module(f"block{i}", nn.Sequential(*layers))
            c_in = c_out
        self.head = _head(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 5):
            x = getattr(self, f"block{i}")(x)
        return self.head(x)


class MLP(nn.Module):
    """Flatten ``(N, C, H, W) -> (N, C*H*W)``, 3 linear-norm-ReLU layers (width w), linear head."""

    layer_groups: ClassVar[GroupSpec] = tuple(
        (g, (subtree_pattern(g),)) for g in ("fc1", "fc2", "fc3", "head")
    )

    def __init__(
        self, *, num_classes: int, in_channels: int, image_size: int, width: int, norm: Norm
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        d_in = in_channels * image_size * image_size
        for i in range(1, 4):
            layer = nn.Sequential(
                nn.Linear(d_in, width, bias=norm.layer_bias), norm.features(width), nn.ReLU()
            )
            self.add_module(f"fc{i}", layer)
            d_in = width
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for i in range(1, 4):
            x = getattr(self, f"fc{i}")(x)
        return self.head(x)


@MODELS.register("resnet18")
def resnet18(
    *, num_classes: int, in_channels: int, image_size: int, width: int | None, norm: Norm
) -> nn.Module:
    """CIFAR ResNet-18, default width 64 (11.17M parameters with 10 classes)."""
    return ResNet18(num_classes=num_classes, in_channels=in_channels, width=width or 64, norm=norm)


@MODELS.register("small_cnn")
def small_cnn(
    *, num_classes: int, in_channels: int, image_size: int, width: int | None, norm: Norm
) -> nn.Module:
    """Four-conv CNN, default width 32 (0.066M parameters on 3-channel input, 10 classes)."""
    return SmallCNN(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        width=width or 32,
        norm=norm,
    )


@MODELS.register("mlp")
def mlp(
    *, num_classes: int, in_channels: int, image_size: int, width: int | None, norm: Norm
) -> nn.Module:
    """Three-hidden-layer MLP, default width 256."""
    return MLP(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        width=width or 256,
        norm=norm,
    )


# --------------------------------------------------------------------------------------------
# torchvision models


# builder options that make a classifier return plain logits in training mode too (no auxiliary
# heads) and keep today's initialisation without a FutureWarning
_TORCHVISION_OPTIONS: dict[str, dict[str, bool]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _torchvision_names() -> list[str]:
    import torchvision  # lazily: importing it costs seconds (torch._dynamo) and few models need it

    return sorted(torchvision.models.list_models(module=torchvision.models))


def create_torchvision_model(
    name: str, *, num_classes: int, in_channels: int, norm: str = "batch"
) -> nn.Module:
    """A randomly initialised torchvision classifier with derived layer groups.

    - Built by ``torchvision.models.get_model(name, weights=None, num_classes=num_classes)``;
      ``googlenet`` and ``inception_v3`` also get ``aux_logits=False`` (plain logits in
      training mode) and ``init_weights=True``.
    - ``in_channels != 3``: the first ``nn.Conv2d`` in registration order (the input conv of
      every torchvision classifier) is changed in place to take ``in_channels`` inputs; its
      other hyper-parameters and its bias stay. Its weights come from the model's own
      initialisation: the first ``in_channels`` input channels of the original weights when
      fewer than 3, the 3 channels repeated cyclically when more (extra channels then start as
      copies). A grouped first conv or a model without one raises :class:`ConfigError`.
    - ``norm="batch"`` keeps the model as built; ``norm="group"`` applies Opacus'
      ``ModuleValidator.fix``, which swaps every BatchNorm for a GroupNorm with
      ``gcd(32, channels)`` groups (Opacus' rule, which can leave 1 channel per group, unlike
      :func:`group_norm`) and makes any other layer Opacus cannot handle compatible;
      ``norm="none"`` raises, use a torchvision variant without BatchNorm (e.g. ``vgg11``).
    - Groups: :func:`pptp.layers.derive_layer_groups` (the parameter-holding top-level
      children, with containers such as ``features`` expanded into their stages until there
      are at least four: ``mobilenet_v3_small`` gives ``features.0`` .. ``features.12`` and
      ``classifier``, ``vgg11_bn`` five pooling-delimited stages ``features.0-1`` ..
      ``features.22-26`` and ``classifier``, ``resnet18`` its 7 top-level children), stored on
      the instance as ``layer_groups``.

    Some classifiers need inputs larger than small images (e.g. ViT expects 224x224, VGG's five
    max-pools need 32x32); :func:`create_model`'s dry run reports that as a ConfigError.
    """
    known = _torchvision_names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}? " if close else ""
        raise ConfigError(
            f"unknown torchvision classification model {name!r}; {hint}known: {', '.join(known)}"
        )
    if norm not in ("batch", "group"):
        raise ConfigError(
            f"norm {norm!r} is not available for torchvision models; use 'batch' or 'group' "
            "(or a torchvision variant without BatchNorm)"
        )
    options = _TORCHVISION_OPTIONS.get(name, {})
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    if in_channels != 3:
        _adapt_input_conv(model, in_channels, name)
    if norm == "group":
        from opacus.validators import ModuleValidator  # 1 s import, only needed here

        model = ModuleValidator.fix(model)
    spec = tuple((g.name, g.patterns) for g in derive_layer_groups(model))
    setattr(model, "layer_groups", spec)  # noqa: B010 (nn.Module.__setattr__ is typed for tensors)
    return model


def _adapt_input_conv(model: nn.Module, in_channels: int, name: str) -> None:
    """Make the first ``nn.Conv2d`` take ``in_channels`` (see create_torchvision_model)."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ConfigError(
            f"torchvision.{name} has no Conv2d input layer to adapt to {in_channels} "
            "channels; use 3-channel inputs"
        )
    conv_name, conv = first
    if conv.groups != 1 or conv.in_channels != 3:
        raise ConfigError(
            f"cannot adapt torchvision.{name}'s first conv {conv_name!r} ({conv}) to "
            f"{in_channels} input channels; use 3-channel inputs"
        )
    # same module, new input width: every other hyper-parameter and the bias stay as built
    index = [c % 3 for c in range(in_channels)]
    conv.weight = nn.Parameter(conv.weight.detach()[:, index].clone())
    conv.in_channels = in_channels
    logger.info("torchvision.%s: input conv %r takes %d channels", name, conv_name, in_channels)
