"""The Tune callback that makes sure a stop signal is not lost (:mod:`search.running.stopping`):
at every step of Tune's loop, in the driver's main thread, a signal received but not yet taken by
the stop path raises :class:`KeyboardInterrupt` again."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from search.running.stopping import raise_if_pending


class PendingStop(Callback):
    """Raises a pending stop at the start of each step of Tune's loop."""

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        raise_if_pending()
