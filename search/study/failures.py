"""Why a trial failed, in one line that names the real cause (Optuna ``fail_reason``, MLflow tag).

A failed trial is a data point: its reason is what a user reads in the Pareto
table's failed count, in ``trials.csv`` and in the MLflow UI, so it must say what happened:

- :func:`exception_reason`: an exception raised inside the trial (training, attack, our own
  checks): ``out of memory (OutOfMemoryError): CUDA out of memory ...``,
  ``TrainingDiverged: training loss is nan at epoch 3``, ``ModelAtChance: target model at chance
  level ...``;
- :func:`worker_death_reason`: the trial's process died (SIGKILL, the kernel's or Ray's
  out-of-memory killer, a segfault) and Ray Tune recorded the error text of the Ray error it
  got; the reason keeps Ray's own words (``worker process died (ActorDiedError: ...)``);
- :data:`INTERRUPTED_REASON`: the driver stopped while the trial ran (kill -9, Ctrl-C).

Reasons are at most :data:`REASON_CHARS` characters; the full traceback goes to the trial's MLflow
run as ``traceback.txt`` (and to the run directory's trial record, :mod:`search.study.records`).
"""

from __future__ import annotations

import re

#: longest reason kept (MLflow tags allow more; a reason is read in one line)
REASON_CHARS = 500

INTERRUPTED_REASON = "interrupted: the driver stopped while the trial ran"


def _cut(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def is_out_of_memory(error: BaseException) -> bool:
    """``MemoryError``, ``torch.OutOfMemoryError`` (CUDA and MPS), or a message saying so."""
    if isinstance(error, MemoryError):
        return True
    try:
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover - torch is a dependency
        pass
    return "out of memory" in str(error).lower()


def exception_reason(error: BaseException, *, where: str = "") -> str:
    """``[where: ][out of memory (]Type[)]: first line of the message``, cut to REASON_CHARS.

    ``where`` names the part of the trial that failed (``seed 2 (train.seed 2)`` with repeats).
    """
    name = type(error).__name__
    kind = f"out of memory ({name})" if is_out_of_memory(error) else name
    first = _first_line(str(error))
    text = f"{kind}: {first}" if first else kind
    return _cut(f"{where}: {text}" if where else text)


def worker_death_reason(error_text: str | None) -> str:
    """The reason of a trial whose process died, from the text of the error Tune recorded.

    ``error_text`` is Tune's error file (``trial.get_error()``): the Ray error and Ray's
    explanation. Ray's memory monitor killing the worker is a ``ray.exceptions.OutOfMemoryError``
    (reason ``out of memory: ...``). Any other death (SIGKILL, the kernel's out-of-memory killer,
    a segfault) reaches Ray as a lost connection (``ActorDiedError``, "Worker unexpectedly exits
    with a connection error code 2. End of file."): Ray cannot tell which, so the reason quotes
    Ray's exit detail and names the usual causes. A trainable that raised past the trial's own
    error handling (``RayTaskError(X)``) is named by its exception, not as a death.
    """
    lines = (error_text or "").strip().splitlines()
    text = "\n".join(line for line in lines if not line.startswith("Failure #")).strip()
    if not text:
        return "worker process died (Ray recorded no error text; see the Ray logs)"
    raised = re.search(r"RayTaskError\((\w+)\)", text)
    if raised:  # not a death: the trainable raised outside the trial's own error handling
        cause = raised.group(1)
        messages = re.findall(rf"^[\w.]*\b{cause}: (.+)$", text, flags=re.M)
        message = messages[-1].strip() if messages else "see traceback.txt"
        return _cut(f"{cause}: {message} (raised outside the trial's error handling)")
    names = re.findall(r"\bray\.exceptions\.(\w+)", text)
    if names:
        name = names[-1]
    elif "actor died" in text.lower():  # Tune's error.txt keeps Ray's message, not its class
        name = "ActorDiedError"
    else:
        name = "RayError"
    if name == "OutOfMemoryError" or "running low on memory" in text.lower():
        return _cut(
            "out of memory: Ray's memory monitor killed the worker "
            f"({_sentence(text, 'OutOfMemoryError')})"
        )
    detail = _exit_detail(text)
    return _cut(
        f"worker process died ({name}: {detail}); killed (SIGKILL, the kernel's out-of-memory "
        "killer) or crashed: see dmesg and the Ray worker logs"
    )


def _exit_detail(text: str) -> str:
    """Ray's ``Worker exit detail: ...`` up to its list of common causes, else the first
    sentence after the exception name."""
    match = re.search(r"Worker exit detail:\s*(.*?)(?:\s+Some common causes|$)", text, re.S)
    if match and match.group(1).strip():
        return " ".join(match.group(1).split())
    return _sentence(text, "")


def _sentence(text: str, after: str) -> str:
    """The first sentence of ``text`` after ``after`` (whitespace collapsed)."""
    rest = text.split(after, 1)[1] if after and after in text else text
    rest = " ".join(rest.lstrip(": ").split())
    end = rest.find(". ")
    return rest[: end + 1] if end >= 0 else rest
