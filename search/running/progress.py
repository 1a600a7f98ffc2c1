"""Progress lines while a study runs, with the elapsed time and an estimate of the time left.

One whole line per event, printed and flushed at once, so several concurrent trials never
interleave partial lines (worker logs stay off the terminal unless ``--verbose``)::

    [00:06] trial 0 started: t00 undefended
    [00:07] trial 1 started: t01 noise s=0.50 last2
    [00:09] trial 0 done (1/12, ~1m05s left): test_acc 0.9865, attack_auc 0.5905, 2s
    [00:31] trial 5 done (6/36, ~9m left): test_acc 0.8147 ± 0.0018, attack_auc 0.7297 ± 0.021, 247s
    [00:12] trial 4 FAILED (2/12, ~1m02s left): worker process died: ... SIGKILL ...
    [00:14] trial 7: the audit contradicts the claimed epsilon: eps_lb 0.83 > epsilon 0.22

The last is a DP-SGD trial whose canary audit (:mod:`pptp.audit`) rejects the epsilon its
accountant claims: a broken DP claim, tagged ``dp_claim`` in MLflow as well.

A trial is named by what it tries (``describe``: the run name :mod:`search.study.naming` gives it,
so a
baseline shows its own knobs and not the protection keys the sampler drew but the trial does not
use); without ``describe``, by its sampled parameters. A seed spread is shown with two
significant digits.

The estimate assumes the remaining trials take as long as the finished ones did, at the same
concurrency: elapsed / finished x remaining. :func:`eta` serves the reference bank and the
localisation lines too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray.tune import Callback

from pptp.metric_catalogue import format_value
from search.running.samplers import DUPLICATE_OF, REUSE, TRIAL_NUMBER
from search.running.scheduler import FINAL, RUNG
from search.space import Objective
from search.study.failures import worker_death_reason


def duration(seconds: float) -> str:
    """``45s``, ``3m10s``, ``2h05m``."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(elapsed: float, done: int, total: int) -> str:
    """``~3m10s left`` (elapsed / done x remaining), ``done`` when nothing is left, ``?`` before
    the first item finished."""
    if done >= total:
        return "done"
    if done <= 0:
        return "? left"
    return f"~{duration(elapsed / done * (total - done))} left"


def stamp(elapsed: float) -> str:
    """``[mm:ss]`` (``[h:mm:ss]`` past an hour)."""
    s = int(elapsed)
    if s >= 3600:
        return f"[{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}]"
    return f"[{s // 60:02d}:{s % 60:02d}]"


def trial_error_text(trial: Any) -> str:
    """The error Tune recorded for a trial that errored (its error file's text), or ``""``."""
    try:
        error = trial.get_error()
    except Exception:  # an unreadable error file must not stop the driver
        error = None
    if error is not None:
        return str(error)
    path = getattr(trial, "error_file", None)
    if path:
        try:
            with open(path) as handle:
                return handle.read()
        except OSError:
            pass
    return ""


class Progress(Callback):
    """Prints one line when a trial starts and when it ends (see module docstring).

    ``verbosity`` -1 (``--quiet``) prints nothing.
    """

    def __init__(
        self,
        *,
        total: int,
        objectives: Sequence[Objective],
        verbosity: int = 0,
        describe: Callable[[int, Mapping[str, Any]], str] | None = None,
    ) -> None:
        self.total = total
        self.describe = describe
        self.objectives = tuple(objectives)
        self.verbosity = verbosity
        self.start = time.monotonic()
        self.ended = 0

    def _say(self, line: str) -> None:
        if self.verbosity >= 0:
            print(f"{stamp(time.monotonic() - self.start)} {line}", flush=True)

    def _count(self) -> str:
        self.ended += 1
        left = eta(time.monotonic() - self.start, self.ended, self.total)
        return f"({self.ended}/{self.total}, {left})"

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        config = dict(trial.config)
        number = config.pop(TRIAL_NUMBER, "?")
        config.pop(REUSE, None)
        twin = config.pop(DUPLICATE_OF, None)
        shown = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in config.items())
        if self.describe is not None and isinstance(number, int):
            with contextlib.suppress(Exception):  # a name never stops the study: parameters then
                shown = self.describe(number, config)
        note = (
            f" (repeats finished trial {twin}: its results are reused)" if twin is not None else ""
        )
        self._say(f"trial {number} started: {shown}{note}")

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        number = trial.config.get(TRIAL_NUMBER, "?")
        if result.get(RUNG) is not None and not result.get(FINAL, 1):  # a rung, not the end
            self._say(f"trial {number} at epoch {result[RUNG]}: {self._values(result)}")
            return
        twin = trial.config.get(DUPLICATE_OF)
        if twin is not None and not result.get("failed"):  # not a training: not counted
            self._say(f"trial {number} reused the results of finished trial {twin}")
            return
        count = self._count()
        if result.get("failed"):
            self._say(f"trial {number} FAILED {count}: {result.get('fail_reason')}")
            return
        values = self._values(result)
        self._say(f"trial {number} done {count}: {values}, {result.get('seconds', 0):.0f}s")
        contradicted = result.get("dp_contradicted")
        if isinstance(contradicted, int | float) and contradicted > 0:
            self._say(f"trial {number}: {contradiction_line(result)}")

    def _values(self, result: Mapping[str, Any]) -> str:
        return ", ".join(
            f"{o.metric} {_metric(o.metric, result.get(o.metric))}"
            + (f" ± {_spread(result[o.metric + '_sd'])}" if o.metric + "_sd" in result else "")
            for o in self.objectives
        )

    def on_trial_complete(
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        """A trial the multi-fidelity scheduler stopped ends here (its last result is a rung)."""
        last = trial.last_result or {}
        if last.get(RUNG) is not None and not last.get(FINAL, 1):
            number = trial.config.get(TRIAL_NUMBER, "?")
            self._say(
                f"trial {number} stopped {self._count()} at epoch {last[RUNG]}: dominated at "
                "this rung"
            )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        number = trial.config.get(TRIAL_NUMBER, "?")
        reason = worker_death_reason(trial_error_text(trial))
        self._say(f"trial {number} FAILED {self._count()}: {reason}")


def contradiction_line(result: Mapping[str, Any]) -> str:
    """The line a DP-SGD trial whose canary audit contradicts its accountant gets: ``the audit
    contradicts the claimed epsilon: eps_lb 0.83 > epsilon 0.22`` (means over seeds; the trial's
    MLflow tag ``dp_claim`` holds the confidence and delta)."""
    share = float(result.get("dp_contradicted", 0.0))
    seeds = "" if share >= 1 else f" ({share:.0%} of the seeds)"
    return (
        f"the audit contradicts the claimed epsilon{seeds}: eps_lb "
        f"{format_value('eps_lb', result.get('eps_lb'))} > epsilon "
        f"{format_value('epsilon', result.get('epsilon'))}"
    )


def _metric(key: str, value: Any) -> str:
    """A metric as the tables show it (the catalogue's format: ``0.5800``, not ``0.58``)."""
    return format_value(key, float(value)) if isinstance(value, int | float) else str(value)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _spread(value: Any) -> str:
    """A standard deviation with two significant digits (``0.0099``, ``0.021``)."""
    return f"{value:.2g}" if isinstance(value, float) else str(value)
