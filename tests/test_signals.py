"""Per-example signals: shapes, queries that follow training, float32, agreement, bad values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pptp.config import ModelConfig, TrialConfig
from pptp.data import Pool
from pptp.models import build_model
from pptp.signals import QUERIES, Signals, compute_signals, query_names, resolve_queries

SHIFTS = ("shift+x", "shift-x", "shift+y")


@pytest.mark.parametrize(
    "queries", [("clean",), ("clean", *SHIFTS), ("clean", "flip", *SHIFTS), ("clean", "flip")]
)
def test_shapes_and_clean_query_first(digits_pool: Pool, queries: tuple[str, ...]) -> None:
    model = build_model(ModelConfig(name="mlp", width=16), digits_pool, seed=0).eval()
    x, y = digits_pool.x[:50], digits_pool.y[:50]
    signals = compute_signals(model, x, y, queries=queries, batch_size=16)
    assert signals.logits.shape == (50, len(queries), 10) and signals.logits.dtype == np.float32
    with torch.no_grad():
        clean = model(x).numpy()
        for i, name in enumerate(queries):
            expected = model(QUERIES[name](x)).numpy()
            np.testing.assert_allclose(signals.logits[:, i], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(signals.logits[:, 0], clean, rtol=1e-5, atol=1e-5)
    expected_loss = torch.nn.functional.cross_entropy(
        torch.from_numpy(clean).double(), y, reduction="none"
    ).numpy()
    np.testing.assert_allclose(signals.loss, expected_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(signals.confidence, np.exp(-expected_loss), rtol=1e-5)
    assert model.training is False  # the model's mode is restored


def test_queries_must_start_clean_and_be_known(digits_pool: Pool) -> None:
    model = build_model(ModelConfig(name="mlp", width=16), digits_pool, seed=0)
    x, y = digits_pool.x[:8], digits_pool.y[:8]
    with pytest.raises(ValueError, match="must start with 'clean'"):
        compute_signals(model, x, y, queries=("flip", "clean"))
    with pytest.raises(ValueError, match="unknown query 'rotate'; known: clean, flip"):
        compute_signals(model, x, y, queries=("clean", "rotate"))


def test_signals_are_float32_inside_a_callers_autocast(digits_pool: Pool) -> None:
    model = build_model(ModelConfig(name="mlp", width=16), digits_pool, seed=0)
    x, y = digits_pool.x[:64], digits_pool.y[:64]
    plain = compute_signals(model, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = compute_signals(model, x, y)
        with torch.no_grad():
            rounded = model(x).float().numpy()  # what bf16 autocast would have produced
    np.testing.assert_array_equal(inside.logits, plain.logits)
    assert not np.allclose(rounded, plain.logits[:, 0], rtol=1e-6, atol=0)  # bf16 rounds


def test_shift_query_moves_pixels_and_fills_with_zero() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = QUERIES["shift+x"](x)
    assert torch.equal(out[..., 1:], x[..., :-1]) and torch.all(out[..., 0] == 0)
    down = QUERIES["shift+y"](x)
    assert torch.equal(down[..., 1:, :], x[..., :-1, :]) and torch.all(down[..., 0, :] == 0)
    assert torch.equal(QUERIES["flip"](x), x.flip(-1))


@pytest.mark.parametrize(
    ("flat", "expected"),
    [
        # follow training (attack.query_augment: null, the default)
        ({"train.augment": False}, ("clean",)),
        ({"train.augment": True, "train.crop_pad": 1}, ("clean", *SHIFTS)),  # digits: no flip
        ({"train.augment": True, "train.crop_pad": 0}, ("clean",)),
        ({"data.name": "cifar10", "train.augment": True}, ("clean", "flip", *SHIFTS)),
        ({"data.name": "cifar10", "train.augment": True, "train.crop_pad": 0}, ("clean", "flip")),
        ({"data.name": "cifar10", "train.augment": False}, ("clean",)),
        # forced
        ({"train.augment": False, "attack.query_augment": True}, ("clean", *SHIFTS)),
        ({"data.name": "cifar10", "attack.query_augment": True}, ("clean", "flip", *SHIFTS)),
        ({"train.augment": True, "attack.query_augment": False}, ("clean",)),
    ],
)
def test_queries_follow_training(flat: dict[str, object], expected: tuple[str, ...]) -> None:
    assert resolve_queries(TrialConfig.from_flat(flat)) == expected


def test_query_names_order_and_registry() -> None:
    assert query_names(flip=True, shifts=True) == ("clean", "flip", *SHIFTS)
    assert set(query_names(flip=True, shifts=True)) == set(QUERIES)


def test_non_finite_logits_are_an_error(digits_pool: Pool) -> None:
    model = build_model(ModelConfig(name="mlp", width=16), digits_pool, seed=0)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        compute_signals(model, digits_pool.x[:8], digits_pool.y[:8])


def test_signals_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="n_examples"):
        Signals(logits=np.zeros((4, 10)), labels=np.zeros(4, dtype=np.int64))
