"""Torch threads follow the CPUs a training was given (pptp/threads.py), whatever the environment.

The search's trials and reference tasks are checked end to end in tests/test_search.py (a study
under ``OMP_NUM_THREADS=2`` with 1 CPU per trial trains with 1 thread); here, the rule and the
in-process entry points (pick's re-training, localisation).
"""

from __future__ import annotations

import pytest
import torch

from pptp.threads import process_cpus, threads_for, torch_threads


@pytest.mark.parametrize(
    ("cpus", "threads"), [(0.25, 1), (0.5, 1), (1, 1), (1.99, 1), (2, 2), (2.5, 2)]
)
def test_threads_are_the_cpus_rounded_down_at_least_one(cpus: float, threads: int) -> None:
    assert threads_for(cpus) == threads


@pytest.mark.parametrize("cpus", [0, -1, float("nan")])
def test_no_cpus_is_refused(cpus: float) -> None:
    with pytest.raises(ValueError, match="positive number of CPUs"):
        threads_for(cpus)


def test_the_block_runs_with_its_threads_and_the_count_is_restored() -> None:
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other) as n:
        assert n == other and torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(other):  # restored on an error too
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_process_cpus_counts_the_affinity_mask() -> None:
    import os

    assert 1 <= process_cpus() <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert process_cpus() == len(os.sched_getaffinity(0))


def test_a_training_records_the_threads_it_ran_with() -> None:
    from pptp.config import TrialConfig
    from pptp.data import build_pool
    from pptp.models import build_model
    from pptp.train import train

    cfg = TrialConfig.from_flat(
        {
            "data.pool_size": 60,
            "data.test_size": 30,
            "data.val_size": 0,
            "model.name": "mlp",
            "model.width": 8,
            "model.norm": "none",
            "train.epochs": 1,
            "train.augment": False,
            "train.warmup_epochs": 0,
            "train.device": "cpu",
        }
    )
    pool = build_pool(cfg.data)
    with torch_threads(1):
        result = train(build_model(cfg.model, pool, seed=0), pool, list(range(30)), cfg.train)
    assert result.extras["torch_threads"] == 1.0
