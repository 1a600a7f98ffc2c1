"""Every check that needs a GPU, in one run of at most 8 minutes on one GPU.

    python bench/gpu_check.py                  # a CUDA machine (a lent one: bench/gpu_check.sh)
    python bench/gpu_check.py --cpu-smoke      # the same code paths on the CPU, tiny sizes (CI)
    python bench/gpu_check.py --parts peak,throughput

Parts (``bench/gpu/``), each in its own process with its own time budget, in this order:

1. ``peak``: the bf16 matrix-product rate of this machine (8192^3, CUDA events), measured;
2. ``throughput``: ``pptp.train.train`` on synthetic CIFAR-shaped tensors held on the GPU,
   ResNet-18: fp32, bf16 + channels_last, and with ``torch.compile``; images/s and the fraction
   of the measured bf16 peak (FLOP per image counted by ``torch.utils.flop_counter``);
3. ``fractional``: trials per hour with 1 trial per GPU against 4 trials at 0.25 GPU, through Ray
   Tune's fractional GPU resources as ``search/run.py`` schedules them;
4. ``study``: a short ResNet-18 study end to end through ``search/run.py`` (a generated space on
   digits resized to 32x32, or CIFAR-10 when ``--data-dir`` holds it), which must end with a
   Pareto front.

Nothing is downloaded. A part that outlives its budget is stopped (SIGINT, then SIGKILL to its
process group) and recorded as ``timeout`` with what it measured so far; a failing part does not
stop the others; the whole run keeps to ``--budget`` seconds. Figures go to ``gpu_check.json`` and
``gpu_check.txt`` (the tables, also printed last), with one ``part-<name>.log`` per part, in
``--out``, else ``$OUT`` (the device tool's folder), else ``runs/gpu-check/<timestamp>/``.

In ``--cpu-smoke`` mode Ray is given one logical GPU, so the fractional scheduling runs as it
would on a GPU, and the trials train on the CPU; ``torch.compile`` is skipped (pptp compiles on
CUDA only) and bf16 is off (pptp's autocast is CUDA-only): the table says so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata as md
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [p for p in (str(BENCH), str(REPO)) if p not in sys.path]

from gpu.report import Part, render, summarise  # noqa: E402

from pptp.fileio import atomic_write  # noqa: E402

#: parts in running order with their budgets in seconds on one H200: estimates made before any
#: GPU run (bench/README.md), to be replaced by measured times
BUDGETS_GPU = {"peak": 45, "throughput": 170, "fractional": 130, "study": 130}
BUDGETS_SMOKE = {"peak": 60, "throughput": 120, "fractional": 150, "study": 240}
TOTAL_GPU, TOTAL_SMOKE = 470, 560  # the whole run; the limit is 8 minutes on one GPU
STOP_GRACE_S = 15  # after SIGINT, before SIGKILL
MIN_PART_S = 10  # a part is not started with less time left than this


def part_command(name: str, *, mode: str, result: Path, data_dir: str | None) -> list[str]:
    """The command that runs part ``name`` alone (this script with the internal ``--child``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--mode", mode]
    return cmd + ["--result", str(result)] + (["--data-dir", data_dir] if data_dir else [])


def run_command(
    cmd: Sequence[str], *, log: Path, result: Path, budget_s: float, grace_s: float = STOP_GRACE_S
) -> Part:
    """Run one part's command in its own process group, output to ``log``; stop it at
    ``budget_s`` (:func:`stop`). Its figures are what it last wrote to ``result`` (JSON)."""
    result.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            code = None
            stop(proc, grace_s)
    seconds = time.perf_counter() - t0
    figures = json.loads(result.read_text()) if result.exists() else {}
    result.unlink(missing_ok=True)
    if code is None:
        status, reason = "timeout", f"stopped at its budget of {budget_s:.0f}s"
    elif code == 0:
        status, reason = "ok", ""
    else:
        status = "failed"
        reason = figures.get("error") or _last_line(log, code)
    return Part(status, seconds, budget_s, reason, figures)


def stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGINT to the part's process group (Ctrl-C: Ray and search/run.py shut down cleanly),
    then, after ``grace_s``, SIGKILL to whatever is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _last_line(log: Path, code: int) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return f"exit status {code}: {lines[-1] if lines else 'no output'}"[:500]


def run_parts(
    names: Sequence[str],
    *,
    mode: str,
    out: Path,
    budgets: Mapping[str, float],
    total_s: float,
    data_dir: str | None,
    command: Callable[..., list[str]] = part_command,
    on_part: Callable[[dict[str, Part]], object] | None = None,
) -> dict[str, Part]:
    """Each part in turn, ``command(name, mode=, result=, data_dir=)`` in a process of its own;
    each gets its budget or what is left of ``total_s``, whichever is less. ``on_part`` sees the
    outcomes so far after each part (the figures are written then, not only at the end)."""
    deadline = time.perf_counter() + total_s
    outcomes: dict[str, Part] = {}
    for name in names:
        left = deadline - time.perf_counter()
        budget = min(budgets[name], left)
        if budget < MIN_PART_S:
            reason = f"{left:.0f}s of the {total_s:.0f}s budget left"
            outcomes[name] = Part("not run", 0.0, budgets[name], reason, {})
        else:
            print(f"[{_stamp()}] {name}: started (budget {budget:.0f}s)", flush=True)
            result = out / f".part-{name}.json"
            cmd = command(name, mode=mode, result=result, data_dir=data_dir)
            outcomes[name] = run_command(
                cmd, log=out / f"part-{name}.log", result=result, budget_s=budget
            )
        o = outcomes[name]
        print(
            f"[{_stamp()}] {name}: {o.status} after {o.seconds:.0f}s"
            + (f" ({o.reason})" if o.reason else ""),
            flush=True,
        )
        if on_part is not None:
            on_part(outcomes)
    return outcomes


def _stamp() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S")


def header_lines(argv: Sequence[str]) -> list[str]:
    """Provenance without touching the GPU (the parts record the device)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (no git here)"
    versions = []
    for name in ("torch", "ray", "optuna", "mlflow", "opacus"):
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            versions.append(f"{name} missing")
    return [
        f"command: {' '.join([os.path.basename(sys.executable), 'bench/gpu_check.py', *argv])}",
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}; git commit {commit}; "
        f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs",
        ", ".join(versions),
    ]


def output_dir(arg: str | None) -> Path:
    """``--out``, else ``$OUT`` (the device tool returns it), else runs/gpu-check/<timestamp>."""
    chosen = arg or os.environ.get("OUT")
    if chosen:
        path = Path(chosen)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = REPO / "runs" / "gpu-check" / stamp
    path.mkdir(parents=True, exist_ok=True)
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/gpu_check.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (CI)")
    p.add_argument(
        "--parts",
        default=",".join(BUDGETS_GPU),
        help=f"comma-separated subset of {', '.join(BUDGETS_GPU)} (default: all, in that order)",
    )
    p.add_argument("--out", help="folder for the figures (default $OUT, else runs/gpu-check/)")
    p.add_argument(
        "--budget", type=float, help="seconds for the whole run (default 470; smoke 560)"
    )
    p.add_argument(
        "--part-budget", type=float, help="seconds for each part run (default: the part's own)"
    )
    p.add_argument("--data-dir", help="where CIFAR-10 may be (cifar-10-batches-py/); optional")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [n for n in args.parts.split(",") if n not in BUDGETS_GPU]
    if unknown:
        p.error(f"--parts: unknown part {unknown[0]!r}; known: {', '.join(BUDGETS_GPU)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        import logging

        from gpu.parts import run_part

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        return run_part(args.child, args.mode, Path(args.result), data_dir=args.data_dir)
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    if mode == "gpu" and not _cuda_visible():
        print(
            "error: no CUDA device is visible; run with --cpu-smoke for the CPU code paths",
            file=sys.stderr,
        )
        return 2
    budgets = dict(BUDGETS_SMOKE if args.cpu_smoke else BUDGETS_GPU)
    if args.part_budget:
        budgets = dict.fromkeys(budgets, args.part_budget)
    total = args.budget or (TOTAL_SMOKE if args.cpu_smoke else TOTAL_GPU)
    out = output_dir(args.out)
    names = [n for n in BUDGETS_GPU if n in args.parts.split(",")]
    header = header_lines(sys.argv[1:] if argv is None else list(argv))
    print("\n".join(header) + f"\nfigures in {out}", flush=True)
    t0 = time.perf_counter()

    def write(outcomes: dict[str, Part]) -> str:
        """gpu_check.json and gpu_check.txt as they stand: rewritten after every part, so that
        a run cut short (the device tool's limit) still leaves its figures in ``out``."""
        summary = summarise(outcomes)
        record = {
            "check": "gpu_check",
            "mode": mode,
            "header": header,
            "budget_s": total,
            "wall_s": time.perf_counter() - t0,
            "parts": {n: asdict(o) for n, o in outcomes.items()},
            "summary": summary,
        }
        atomic_write(out / "gpu_check.json", json.dumps(record, indent=1, default=str))
        text = render(outcomes, summary, [f"gpu_check ({mode})", *header])
        atomic_write(out / "gpu_check.txt", text + "\n")
        return text

    outcomes = run_parts(
        names,
        mode=mode,
        out=out,
        budgets=budgets,
        total_s=total,
        data_dir=args.data_dir,
        on_part=write,
    )
    print("\n" + write(outcomes))
    return 0 if all(o.status == "ok" for o in outcomes.values()) else 1


def _cuda_visible() -> bool:
    """Whether a CUDA device is visible, asked in a child process so that this one holds no CUDA
    context while the parts measure."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


if __name__ == "__main__":
    sys.exit(main())
