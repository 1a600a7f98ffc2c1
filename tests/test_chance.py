"""The chance-level rule: known answers, the error's message, NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pptp.chance import chance_level, require_above_chance
from pptp.errors import ModelAtChance


def test_balanced_ten_classes_large_test_set() -> None:
    labels = np.repeat(np.arange(10), 1000)  # n = 10,000, p = 0.1
    level = chance_level(labels)
    assert level.majority == 0.1 and level.n == 10_000
    # 3 standard errors = 3 sqrt(0.09 / 10000) = 0.009 < 5% of (1 - p) = 0.045
    assert level.threshold == pytest.approx(0.145)
    with pytest.raises(ModelAtChance):
        require_above_chance(0.12, labels, what="target model")  # MobileNet's 0.10-0.12
    require_above_chance(0.2, labels, what="target model")


def test_small_test_set_uses_the_binomial_margin() -> None:
    labels = np.array([0] * 33 + [1] * 30 + [2] * 237)  # n = 300, majority 237 / 300 = 0.79
    level = chance_level(labels)
    margin = 3 * math.sqrt(0.79 * 0.21 / 300)  # 0.0706 > 0.05 * 0.21
    assert level.majority == pytest.approx(0.79)
    assert level.threshold == pytest.approx(0.79 + margin)
    with pytest.raises(ModelAtChance):
        require_above_chance(0.85, labels, what="x")  # above the majority rate, within the margin
    require_above_chance(0.87, labels, what="x")


def test_threshold_is_at_most_one() -> None:
    assert chance_level(np.array([1, 1, 1, 0])).threshold == 1.0  # nothing is clearly above


def test_message_names_the_model_accuracy_and_chance() -> None:
    labels = np.repeat(np.arange(10), 30)
    with pytest.raises(ModelAtChance) as info:
        require_above_chance(0.11, labels, what="reference model 3 of bank entry bank/abc")
    message = str(info.value)
    assert message.startswith(
        "reference model 3 of bank entry bank/abc at chance level: test accuracy 0.1100, "
        "chance 0.1000 (majority class of 300 test examples)"
    )


def test_nan_accuracy_is_not_above_chance() -> None:
    with pytest.raises(ModelAtChance, match="test accuracy nan"):
        require_above_chance(math.nan, np.arange(10), what="target model")


def test_labels_must_be_a_non_empty_vector() -> None:
    with pytest.raises(ValueError, match="non-empty 1-D"):
        chance_level(np.array([], dtype=np.int64))
