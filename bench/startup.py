"""Start-up: how long ``--help`` and a refused space file take, the two things a person waits
for before anything runs.

    .venv/bin/python bench/startup.py                       # this checkout, min of 5 runs
    .venv/bin/python bench/startup.py --before ../old-tree  # side by side with another checkout

Each command runs in a fresh interpreter (this venv's Python) from the checkout's root; the
figure is the fastest of ``--repeat`` wall-clock runs, the two checkouts interleaved so that a
busy machine slows both alike. The refused spaces: a misspelt key (refused on the file's
structure) and an unknown operator name (refused against the operator registry, which imports
torch).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BAD_SPACES = {
    "misspelt key": "study:\n  name: x\nfixed:\n  train.epochz: 3\n",
    "unknown operator": "study:\n  name: x\nfixed:\n  protect.operator: nois\n",
}
HELP = ("run", "pick", "compare", "report", "ui", "sync", "localize")


def commands(folder: Path) -> list[tuple[str, list[str]]]:
    out = [(f"{name} --help", [f"search/{name}.py", "--help"]) for name in HELP]
    for what, text in BAD_SPACES.items():
        path = folder / f"{what.replace(' ', '-')}.yaml"
        path.write_text(text)
        out.append((f"run, {what}", ["search/run.py", "--space", str(path)]))
    return out


def wall(cwd: Path, argv: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start, done.returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, help="another checkout to time side by side")
    p.add_argument("--repeat", type=int, default=5, help="runs per command (the fastest counts)")
    args = p.parse_args()
    trees = {"this checkout": ROOT}
    if args.before:
        trees = {"before": args.before.resolve(), "after": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'command':28s}" + "".join(f"{name:>16s}" for name in trees) + "   exit")
        for label, argv in commands(Path(tmp)):
            best = dict.fromkeys(trees, float("inf"))
            codes = {}
            for _ in range(args.repeat):
                for name, tree in trees.items():
                    seconds, codes[name] = wall(tree, argv)
                    best[name] = min(best[name], seconds)
            cells = "".join(f"{best[n]:>14.2f} s" for n in trees)
            print(f"{label:28s}{cells}   {','.join(str(c) for c in codes.values())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
