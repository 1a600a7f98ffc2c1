"""A model of your own: a small CNN that pptp-search builds from the data's facts.

The space names it ``model.name: examples/own-model-and-data/model.py:build`` (a file path, or an
importable ``package.module:build``). pptp-search calls ``build(facts, **model.kwargs)``: ``facts``
carries ``num_classes``, ``channels``, ``image_size`` (and ``features`` for tables); the module
must map ``(N, channels, image_size, image_size)`` to logits ``(N, num_classes)``.
"""

from __future__ import annotations

from torch import nn


class TinyCNN(nn.Module):
    """Two conv blocks (each halves the image) and a linear head on a 2x2 map; GroupNorm, so
    per-example gradients are defined."""

    def __init__(self, channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(4, 2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.conv2(self.conv1(x))))


def build(facts, width: int = 16) -> nn.Module:
    """The factory the space names: ``facts`` from the data, ``width`` from ``model.kwargs``."""
    return TinyCNN(facts.channels, facts.num_classes, width)
