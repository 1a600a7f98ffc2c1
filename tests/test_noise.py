"""search.study.noise: the pooled seed spread of a study and the t-interval of a difference,
against hand-computed values."""

from __future__ import annotations

import math

import pytest
from fixtures_trials import trial

from search.study.noise import pooled_noise


def test_pooled_sd_and_half_width_known_answer() -> None:
    a = trial(0, {"test_acc": 0.81}, per_seed={"test_acc": [0.80, 0.82]})  # SS 0.0002
    b = trial(1, {"test_acc": 0.71}, per_seed={"test_acc": [0.70, 0.70, 0.73]})  # SS 0.0006
    single = trial(2, {"test_acc": 0.9})  # one seed: no spread to pool
    failed = trial(3, {}, per_seed={"test_acc": [0.1, 0.9]}, state="FAIL")
    noise = pooled_noise([a, b, single, failed], "test_acc")
    assert noise is not None and (noise.df, noise.trials, noise.seeds) == (3, 2, 5)
    assert noise.sd == pytest.approx(math.sqrt(0.0008 / 3))
    # t(0.975, 3) = 3.182446
    assert noise.half_width(2, 2) == pytest.approx(3.182446 * math.sqrt(0.0008 / 3), rel=1e-5)
    assert noise.beyond(a, b) and not noise.beyond(
        a, trial(4, {}, per_seed={"test_acc": [0.79, 0.80]})
    )
    assert pooled_noise([single], "test_acc") is None


def test_two_seeds_that_agree_do_not_make_a_small_difference_real() -> None:
    """The README's case: two seeds at 0.816 and 0.816 (sd 0.000) against 0.821: a 2-sample sd
    of 0 would call 0.005 real; the study's pooled spread does not."""
    trials = [
        trial(0, {}, per_seed={"test_acc": [0.816, 0.816]}),
        trial(1, {}, per_seed={"test_acc": [0.821, 0.818]}),
        *(trial(i, {}, per_seed={"test_acc": [0.80 + d, 0.80 - d]}) for i, d in
          enumerate((0.004, 0.006, 0.003, 0.005, 0.007), start=2)),
    ]  # fmt: skip
    noise = pooled_noise(trials, "test_acc")
    assert noise is not None and noise.df == 7
    assert not noise.beyond(trials[0], trials[1])
