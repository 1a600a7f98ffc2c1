"""The model card of a shipped model: what was measured about its recipe and what was not.

A short markdown file logged beside the registered model (``model_card.md``) and used as the
model version's description. Its numbers come from the pick's audit
(:class:`~search.picking.audit.Comparison`) and the production training
(:class:`pptp.production.Production`); the shipped model's test accuracy is the line
``test accuracy of the shipped model: 0.9512`` (read back by the tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pptp.attacks import attack_names
from pptp.config import TrialConfig
from pptp.production import Production
from pptp.tables import format_cell
from pptp.treatment import planned_groups, treatment_of
from search.picking.audit import TABLE_METRICS, Comparison

SHIPPED_ACC_LINE = "test accuracy of the shipped model: "


def model_card(
    *,
    title: str,
    cfg: TrialConfig,
    production: Production,
    comparison: Comparison,
    fingerprints: Mapping[str, str],
) -> str:
    """The card's markdown (module docstring)."""
    t = cfg.train
    treatment = treatment_of(cfg, planned_groups(cfg))
    attacks = ", ".join(attack_names(cfg.attack))
    # the table's metrics this study measured (a canary or DP metric is absent without them)
    shown = [m for m in TABLE_METRICS if math.isfinite(comparison.screening.get(m, math.nan))]
    screening = ", ".join(f"{m} {format_cell(comparison.screening[m])}" for m in shown)
    lines = [
        f"# {title}",
        "",
        "## What ships",
        "",
        f"- data: `{cfg.data.name}`; model: `{cfg.model.name}`; {t.epochs} epochs, lr {t.lr:g}, "
        f"batch {t.batch_size}, seed {t.seed}; trained with: {treatment.label()}",
        f"- trained on **{production.members} examples**: every pool example (the held-out "
        f"test set of {production.n_test} examples and the validation set are not in it)"
        + (
            f", {production.canaries_restored} audit canaries with their true labels"
            if production.canaries_restored
            else ""
        ),
        f"- {SHIPPED_ACC_LINE}{production.test_acc:.4f} (held-out test set, "
        f"{production.n_test} examples)",
    ]
    if production.epsilon is not None:
        lines.append(
            f"- DP-SGD: ({production.epsilon:.3g}, {cfg.defense.delta:g})-differential privacy "
            "for this training (Opacus' accountant), a guarantee that holds whatever the attack"
        )
    lines += [
        "",
        "## What was measured",
        "",
        f"The audit trained the same recipe on **{production.audit_members} members** (a random "
        "half of the pool, the rest serving as non-members"
        + (", with deliberately mislabeled canaries" if cfg.data.canaries else "")
        + f") and attacked it with membership inference ({attacks}, "
        f"{cfg.attack.n_references} reference models):",
        "",
        f"- screening (the trial as searched): {screening}",
    ]
    for audit in (comparison.retrained, comparison.adaptive):
        if audit is not None:
            lines.append(
                f"- {audit.label} (seeds {', '.join(map(str, audit.seeds))}): "
                + ", ".join(f"{m} {audit.cell(m)}" for m in shown)
            )
    if comparison.adaptive is None:
        lines.append(
            "- no adaptive audit (references that know the defense) was run: "
            "`search/pick.py --adaptive` runs one"
        )
    lines += [
        "",
        "## What was not measured",
        "",
        "- The shipped model itself was not attacked: it trained on "
        f"{production.members} members, the audit target on {production.audit_members}. The "
        "audit estimates what this recipe leaks; it is not a measurement of this model.",
        f"- Only the attacks above ({attacks}); a stronger attack may "
        "find more. Attack numbers near 0.5 AUC mean these attacks failed, not that no "
        "attack can succeed"
        + ("" if production.epsilon is not None else " (no DP guarantee applies)")
        + ".",
        "- Accuracy on data unlike the held-out test set (another population, drift), "
        "calibration, fairness and robustness were not measured.",
        "",
        "## Fingerprints",
        "",
        *[f"- {k}: `{v}`" for k, v in fingerprints.items()],
        "",
    ]
    return "\n".join(lines)
