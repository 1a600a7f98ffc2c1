"""search.study.failures names the real cause of a failed trial; the fault suite's injection
(tests/faultinject) parses its variable; search.running.progress tells the time left."""

from __future__ import annotations

import pytest
import torch
from faultinject import pptp_faults as faults

from pptp.errors import ModelAtChance
from pptp.train import TrainingDiverged
from search.running.progress import duration, eta, stamp
from search.study.failures import REASON_CHARS, exception_reason, worker_death_reason

# what Tune's error.txt holds after a worker was SIGKILLed (Ray 2.60), trimmed
KILLED = """Failure # 1 (occurred at 2026-11-30_11-50-38)
The actor died unexpectedly before finishing this task.
\tclass_name: ImplicitFunc
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit \
detail: Worker unexpectedly exits with a connection error code 2. End of file. Some common causes \
include: (1) the process was killed by the OOM killer due to high memory usage, (2) ray stop \
--force was called, or (3) the worker crashed unexpectedly due to SIGSEGV."""

RAISED = """Failure # 1
ray.exceptions.RayTaskError(CommandError): ray::ImplicitFunc.train() (pid=1)
  File "x.py", line 1, in f
alembic.util.exc.CommandError: Online migration expected to match one row; 0 found"""


@pytest.mark.parametrize(
    ("error", "start"),
    [
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried"),
            "out of memory (OutOfMemoryError): CUDA",
        ),
        (MemoryError(), "out of memory (MemoryError)"),
        (TrainingDiverged("training loss is nan at epoch 3\nmore"), "TrainingDiverged: training"),
        (ModelAtChance("target model at chance level: x"), "ModelAtChance: target model at"),
        (RuntimeError("DefaultCPUAllocator: can't allocate: out of memory"), "out of memory ("),
    ],
)
def test_exception_reason_names_the_cause(error: BaseException, start: str) -> None:
    reason = exception_reason(error)
    assert reason.startswith(start) and "\n" not in reason


def test_exception_reason_with_where_and_cut() -> None:
    reason = exception_reason(ValueError("x" * 2000), where="seed 2/3 (train.seed 1)")
    assert reason.startswith("seed 2/3 (train.seed 1): ValueError: xxx")
    assert len(reason) == REASON_CHARS and reason.endswith("...")


def test_worker_death_reasons() -> None:
    killed = worker_death_reason(KILLED)
    assert killed.startswith("worker process died (ActorDiedError: Worker unexpectedly exits")
    assert "SIGKILL" in killed and "Some common causes" not in killed
    oom = worker_death_reason(
        "Failure # 1\nray.exceptions.OutOfMemoryError: Task was killed due to the node running "
        "low on memory. Memory on the node was 1.9GB"
    )
    assert oom.startswith("out of memory: Ray's memory monitor killed the worker")
    raised = worker_death_reason(RAISED)
    assert raised.startswith("CommandError: Online migration expected")
    assert "outside the trial's error handling" in raised
    assert worker_death_reason("").startswith("worker process died (Ray recorded no error")


def test_fault_hook_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = faults.parse("raise@1; slow@*=2.5;kill@3")
    assert parsed == (
        faults.Fault("raise", 1),
        faults.Fault("slow", None, 2.5),
        faults.Fault("kill", 3),
    )
    for bad in ("explode@1", "raise", "raise@x"):
        with pytest.raises(ValueError, match="PPTP_TEST_FAULT"):
            faults.parse(bad)
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.faults_for(1) == ()
    monkeypatch.setenv(faults.ENV, "raise@1;slow@*")
    assert [f.kind for f in faults.faults_for(1)] == ["raise", "slow"]
    assert [f.kind for f in faults.faults_for(2)] == ["slow"]
    with pytest.raises(RuntimeError, match="injected"):
        faults.on_epoch_fault(faults.faults_for(1)[:1], first=True)
    faults.on_epoch_fault(faults.faults_for(1)[:1], first=False)  # only after the first epoch


def test_progress_times() -> None:
    assert duration(45) == "45s" and duration(190) == "3m10s" and duration(7500) == "2h05m"
    assert eta(60, 2, 6) == "~2m00s left"
    assert eta(0, 0, 6) == "? left" and eta(10, 6, 6) == "done"
    assert stamp(75) == "[01:15]" and stamp(3725) == "[1:02:05]"
