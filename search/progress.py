"""Progress lines while a study runs: one when a trial starts, one when it ends (Tune callback)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ray.tune import Callback

from search.samplers import TRIAL_NUMBER
from search.space import Objective


class Progress(Callback):
    """Prints ``[mm:ss] trial 7 done (5/12): test_acc 0.9512, attack_auc 0.5731, 14s``."""

    def __init__(self, *, total: int, objectives: Sequence[Objective]) -> None:
        self.total = total
        self.objectives = tuple(objectives)
        self.start = time.monotonic()
        self.ended = 0

    def _stamp(self) -> str:
        seconds = int(time.monotonic() - self.start)
        return f"[{seconds // 60:02d}:{seconds % 60:02d}]"

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        config = dict(trial.config)
        number = config.pop(TRIAL_NUMBER, "?")
        shown = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in config.items())
        print(f"{self._stamp()} trial {number} started: {shown}", flush=True)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self.ended += 1
        number = trial.config.get(TRIAL_NUMBER, "?")
        head = f"{self._stamp()} trial {number} done ({self.ended}/{self.total})"
        if result.get("failed"):
            print(f"{head}: FAILED: {result.get('fail_reason')}", flush=True)
            return
        values = ", ".join(f"{o.metric} {_short(result.get(o.metric))}" for o in self.objectives)
        print(f"{head}: {values}, {result.get('seconds', 0):.0f}s", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ended += 1
        number = trial.config.get(TRIAL_NUMBER, "?")
        print(
            f"{self._stamp()} trial {number} crashed ({self.ended}/{self.total}); see "
            f"{trial.path or 'the Ray logs'}",
            flush=True,
        )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
