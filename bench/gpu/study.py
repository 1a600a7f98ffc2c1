"""Part ``study``: a short ResNet-18 study end to end through ``search/run.py`` (a generated space,
its own run folder, MLflow store and reference bank), which must end with a Pareto front.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu.workload import REPO, Recorder, Sizes
from pptp.config import DataConfig
from pptp.data import check_data
from pptp.errors import DataUnavailableError

logger = logging.getLogger("gpu_check")


def study_data(sizes: Sizes, data_dir: str | None) -> dict[str, Any]:
    """The ``fixed.data`` section: CIFAR-10 (a 10,000-image pool) when it is on disk under
    ``data_dir``, else scikit-learn's bundled digits resized to ``study_image_size`` (nothing is
    ever downloaded)."""
    if data_dir is not None and sizes.mode == "gpu":
        cifar = DataConfig(
            name="cifar10", data_dir=data_dir, test_size=2000, val_size=500, pool_size=10000
        )
        try:
            check_data(cifar)
            keys = ("name", "data_dir", "test_size", "val_size", "pool_size")
            return {k: getattr(cifar, k) for k in keys}
        except DataUnavailableError as error:  # not on disk: the bundled digits (said in the log)
            logger.info("CIFAR-10 not used (%s); digits instead", str(error).splitlines()[0])
    return {"name": "digits", "image_size": sizes.study_image_size}


def study_space(sizes: Sizes, data: dict[str, Any], *, bank_dir: Path) -> dict[str, Any]:
    """A space file (as a mapping) for a short ResNet-18 study: the undefended baseline and a
    ``noise`` trial enqueued, the rest sampled; references trained into ``bank_dir``."""
    crop_pad = 4 if data["name"] == "cifar10" else max(1, sizes.study_image_size // 16)
    return {
        "study": {
            "name": f"gpu-check-{sizes.mode}",
            "objectives": {"test_acc": "maximize", "attack_auc": "minimize"},
            "sampler": "random",
            "seed": 0,
            "n_trials": sizes.study_trials,
            "max_concurrent": sizes.study_concurrent,
            "resources": {"cpus": sizes.study_cpus, "gpus": sizes.study_gpus},
            "enqueue": [
                {
                    "protect.operator": "damp",
                    "protect.strength": 0.0,
                    "protect.split": 1,
                    "protect.direction": "prefix",
                },
                {
                    "protect.operator": "noise",
                    "protect.strength": 0.5,
                    "protect.split": 2,
                    "protect.direction": "suffix",
                },
            ][: sizes.study_trials],
        },
        "fixed": {
            "data": data,
            "model": {"name": "resnet18", "width": sizes.study_width, "norm": "group"},
            "train": {
                "epochs": sizes.study_epochs,
                "batch_size": sizes.study_batch_size,
                "lr": 0.05,
                "crop_pad": crop_pad,
                "device": "auto",
            },
            "attack": {"n_references": sizes.study_references, "bank_dir": str(bank_dir)},
        },
        "params": {
            "protect.operator": {
                "type": "categorical",
                "choices": ["noise", "damp", "anchor", "rewind", "feature_noise"],
            },
            "protect.strength": {"type": "float", "low": 0.0, "high": 1.0},
            "protect.split": {"type": "int", "low": 1, "high": 5},
            "protect.direction": {"type": "categorical", "choices": ["prefix", "suffix"]},
        },
    }


_FIRST_TRIAL = re.compile(r"trial \d+ started")


def study(sizes: Sizes, rec: Recorder, *, data_dir: str | None = None) -> None:
    """``python search/run.py --space <generated>`` with its own run directory, MLflow store
    (SQLite) and reference bank in a temporary folder; passes when it exits 0 with a non-empty
    Pareto front (read back from the run's Optuna storage and ``pareto_front.csv``)."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix="gpu-check-study-"))
    try:
        space = study_space(sizes, study_data(sizes, data_dir), bank_dir=work / "bank")
        path = work / "space.yaml"
        path.write_text(yaml.safe_dump(space, sort_keys=False))
        rec["space"] = space
        run_dir = work / "run"
        cmd = [
            sys.executable,
            str(REPO / "search" / "run.py"),
            "--space",
            str(path),
            "--output",
            str(run_dir),
            "--tracking-uri",
            f"sqlite:///{work / 'mlflow.db'}",
        ]
        rec["command"] = " ".join(cmd)
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", RAY_AUTH_MODE="disabled")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        t0 = time.perf_counter()
        first_trial = None
        with subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                elapsed = time.perf_counter() - t0
                print(f"[{elapsed:6.1f}s] {line}", end="", flush=True)
                if first_trial is None and _FIRST_TRIAL.search(line):
                    first_trial = elapsed
                    rec["first_trial_started_s"] = first_trial
        rec["exit_code"] = proc.returncode
        rec["wall_s"] = time.perf_counter() - t0
        rec.update(read_study(run_dir, space["study"]["name"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"search/run.py exited with status {proc.returncode}")
    if not rec["pareto_size"]:
        raise RuntimeError("the study ended with an empty Pareto front")


def read_study(run_dir: Path, name: str) -> dict[str, Any]:
    """Trial states and the Pareto front of a finished run directory (Optuna's public API)."""
    import csv

    import optuna

    out: dict[str, Any] = {"pareto_size": 0, "states": {}, "front": []}
    db = run_dir / "study.db"
    if not db.exists():
        return out
    found = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    states: dict[str, int] = {}
    for t in found.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    out["states"] = states
    out["pareto_size"] = len(found.best_trials) if states.get("COMPLETE") else 0
    front_csv = run_dir / "pareto_front.csv"
    if front_csv.exists():
        with front_csv.open() as f:
            out["front"] = list(csv.DictReader(f))
    return out
