"""Models whose layer groups the tests of :mod:`pptp.layers` and :mod:`pptp.selection` check:
every hand-written model and three torchvision ones (a flat VGG, MobileNet's stages, ResNet)."""

from __future__ import annotations

import functools

from torch import nn

from pptp.layers import layer_groups
from pptp.models import MODELS, create_model

ALL = [*sorted(MODELS), "torchvision.vgg11_bn", "torchvision.mobilenet_v3_small"]
ALL.append("torchvision.resnet18")


@functools.cache
def build(name: str) -> nn.Module:
    """Model ``name`` for 5 classes of 3x32x32 images (cached: tests must not modify it)."""
    width = 8 if name == "resnet18" else None
    return create_model(name, num_classes=5, in_channels=3, image_size=32, width=width)


def group_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(g.name for g in layer_groups(model))
