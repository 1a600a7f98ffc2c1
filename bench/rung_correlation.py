"""Is an early rung a good predictor of the end of training? Spearman rank correlations.

Reads the trials ``search_efficiency.py`` wrote (``--out``, one JSON line per trial): every trial
of a full-fidelity method was measured at the rungs (epochs 1 and 3 of 9 in its recipe) and at
the end, with the references' signals at the same epochs. For each rung and metric (test
accuracy, worst-case attack AUC) this prints Spearman's rank correlation between the rung's value
and the final one (``scipy.stats.spearmanr``), over: PPTP operators apart from rewind, the
baselines apart from early stopping, and rewind and early stopping (which change the end of
training) on their own. A group with fewer than 4 trials gets no correlation (``-``). The
samplers of one seed share their first random proposals: a trial seen twice (same treatment,
same values at every rung) counts once.

    .venv/bin/python bench/rung_correlation.py --out bench/search_efficiency.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

#: group name -> which trials it holds
GROUPS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "PPTP operators (not rewind)": lambda r: r["kind"] == "pptp" and r["operator"] != "rewind",
    "baselines (not early stopping)": lambda r: r["kind"] == "baseline"
    and r["defense"] != "early_stopping",
    "rewind": lambda r: r["operator"] == "rewind",
    "early stopping": lambda r: r["defense"] == "early_stopping",
    "all": lambda r: True,
}
MIN_TRIALS = 4


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    full, seen = [], set()
    for r in rows:  # samplers of one seed share their first random proposals: count each once
        key = json.dumps([r["operator"], r["defense"], r["rungs"], r.get("final")], sort_keys=True)
        if r["state"] == "COMPLETE" and "asha" not in r["method"] and key not in seen:
            seen.add(key)
            full.append(r)
    rungs = sorted({int(e) for r in full for e in r["rungs"]})
    header = ["group", "n"] + [f"{m} e{e}" for e in rungs for m in ("acc", "AUC")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, keep in GROUPS.items():
        group = [r for r in full if keep(r)]
        cells = [name, str(len(group))]
        for epoch in rungs:
            for metric in ("test_acc", "attack_auc"):
                pairs = [
                    (r["rungs"][str(epoch)][metric], r["final"][metric])
                    for r in group
                    if str(epoch) in r["rungs"]
                ]
                pairs = [p for p in pairs if all(math.isfinite(v) for v in p)]
                if len(pairs) < MIN_TRIALS:
                    cells.append("-")
                    continue
                rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
                cells.append(f"{rho:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/search_efficiency.jsonl"))
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(f"# {len(rows)} trials from {args.out}; Spearman rank correlation, rung vs end")
    for line in table(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
