"""Per-example signals: shapes, query augmentations, agreement with the model, bad values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pptp.config import ModelConfig
from pptp.data import Pool
from pptp.signals import Signals, compute_signals, query_augmentations
from pptp.train import build_model


@pytest.mark.parametrize(
    ("augment", "flip", "n_aug"), [(False, False, 1), (True, False, 4), (True, True, 5)]
)
def test_shapes_and_clean_query_first(
    digits_pool: Pool, augment: bool, flip: bool, n_aug: int
) -> None:
    model = build_model(ModelConfig(name="mlp", width=16), digits_pool, seed=0).eval()
    x, y = digits_pool.x[:50], digits_pool.y[:50]
    signals = compute_signals(model, x, y, augment=augment, flip=flip, batch_size=16)
    assert signals.logits.shape == (50, n_aug, 10) and signals.logits.dtype == np.float32
    with torch.no_grad():
        clean = model(x).numpy()
    np.testing.assert_allclose(signals.logits[:, 0], clean, rtol=1e-5, atol=1e-5)
    expected_loss = torch.nn.functional.cross_entropy(
        torch.from_numpy(clean).double(), y, reduction="none"
    ).numpy()
    np.testing.assert_allclose(signals.loss, expected_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(signals.confidence, np.exp(-expected_loss), rtol=1e-5)
    assert model.training is False  # the model's mode is restored


def test_shift_query_moves_pixels_and_fills_with_zero() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    shift_right = query_augmentations(augment=True, flip=False)[1]
    out = shift_right(x)
    assert torch.equal(out[..., 1:], x[..., :-1]) and torch.all(out[..., 0] == 0)


def test_non_finite_logits_are_an_error(digits_pool: Pool) -> None:
    model = build_model(ModelConfig(name="mlp", width=16), digits_pool, seed=0)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        compute_signals(model, digits_pool.x[:8], digits_pool.y[:8])


def test_signals_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="n_examples"):
        Signals(logits=np.zeros((4, 10)), labels=np.zeros(4, dtype=np.int64))
