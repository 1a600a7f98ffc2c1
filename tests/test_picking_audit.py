"""search.picking.audit: the comparison of screening, re-trained and adaptive numbers."""

from __future__ import annotations

import math

import pytest
from fixtures_pick import OBJECTIVES

from search.picking.audit import Audit, Comparison, audit_seeds


def test_comparison_gap_is_paired_on_shared_seeds() -> None:
    screening = {"test_acc": 0.9, "attack_auc": 0.55}
    retrained = Audit("re-train", (1, 2), ({"attack_auc": 0.56}, {"attack_auc": 0.58}))
    adaptive = Audit("adaptive", (1, 2), ({"attack_auc": 0.60}, {"attack_auc": 0.66}))
    paired = Comparison(0, 0, screening, retrained, adaptive)
    assert paired.gap("attack_auc") == pytest.approx(((0.60 - 0.56) + (0.66 - 0.58)) / 2)
    assert "paired" in paired.gap_note()
    alone = Comparison(0, 0, screening, None, adaptive)
    assert alone.gap("attack_auc") == pytest.approx(0.63 - 0.55)
    table = paired.table(OBJECTIVES)
    assert "0.6300 ± 0.0424" in table and "+0.0600" in table
    assert adaptive.std("attack_auc") == pytest.approx(math.sqrt(0.0018))
    summary = paired.summary_metrics()
    assert summary["gap/attack_auc"] == pytest.approx(0.06)
    assert "gap/test_acc" not in summary


def test_audit_cells_and_seeds() -> None:
    one = Audit("re-train", (3,), ({"test_acc": 0.9},))
    assert one.cell("test_acc") == "0.9000"  # one seed: no spread shown
    assert one.cell("attack_auc") == "-" and math.isnan(one.std("test_acc"))
    assert audit_seeds(0, 3) == (1, 2, 3) and audit_seeds(5, 0) == ()
