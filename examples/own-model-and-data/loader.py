"""A data loader of your own: any function of no arguments returning ``(x, y)`` or
``(x, y, x_test, y_test)`` as tensors or NumPy arrays.

The space names it ``data.name: examples/own-model-and-data/loader.py:load_wine``. ``x`` of
shape ``(n, F)`` is a table (standardised with the pool's statistics, trained with the MLP or a
model of your own); ``(n, H, W)`` or ``(n, C, H, W)`` are images. Labels are integers 0..K-1.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_wine


def load_wine_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's wine table: 178 wines, 13 chemical measurements, 3 cultivars."""
    wine = load_wine()
    return torch.tensor(wine.data, dtype=torch.float32), torch.tensor(wine.target)
