"""Which protection operators compose with which baseline defenses, decided from declarations.

Every operator and defense declares on its registry entry what it does to training
(:class:`~pptp.hooks.Needs`). A pair is refused when one of :data:`CONFLICTS` holds between the
operator's declaration and the defense's; every other pair composes, and :data:`NOTES` says how
where that is not obvious. Nothing is built, so ``search/`` can check a space's pairs before a
study starts (:func:`check_pair`), and :func:`pptp.train.train` checks again before it trains.
:func:`pair_table` lists every pair of ``OPERATORS x DEFENSES``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pptp.defenses import DEFENSES
from pptp.errors import ConfigError
from pptp.hooks import Needs
from pptp.operators import OPERATORS


@dataclass(frozen=True)
class Rule:
    """Holds for an (operator, defense) pair whose operator declares ``operator`` and whose
    defense declares ``defense`` (both :class:`~pptp.hooks.Needs` field names); ``why`` says
    what happens then."""

    operator: str
    defense: str
    why: str

    def holds(self, operator: Needs, defense: Needs) -> bool:
        return bool(getattr(operator, self.operator)) and bool(getattr(defense, self.defense))


#: pairs that cannot compose, and why
CONFLICTS: tuple[Rule, ...] = (
    Rule(
        "writes_grads",
        "rebuilds_grads",
        "Opacus rebuilds every .grad from its own per-sample gradients at step time, discarding "
        "the protected gradients the operator wrote; DP-SGD already clips and noises the "
        "protected groups",
    ),
    Rule(
        "per_example_grads",
        "batch_level_loss",
        "the defense's objective is batch-level (RelaxLoss: |mean CE - alpha|, with a sign that "
        "flips per batch), so a per-example clipped gradient of the loss is not defined",
    ),
    Rule("loss", "loss", "both replace the training loss"),
)

#: how pairs that compose do so, where it is not obvious
NOTES: tuple[Rule, ...] = (
    Rule(
        "fine_tune",
        "restores_weights",
        "the defense's weights are restored at the end of the training phase; the operator "
        "starts from them, and the defense no longer acts in the fine-tune phase",
    ),
    Rule("fine_tune", "loss", "the fine-tune phase trains on the defense's loss too"),
    Rule(
        "fine_tune",
        "optimizer",
        "the fine-tune phase uses the defense's optimizer options (weight decay) too",
    ),
    Rule(
        "fine_tune",
        "rebuilds_grads",
        "fine-tune steps run through the same private optimizer (protected groups frozen): "
        "clipped, noised and counted by the accountant",
    ),
    Rule(
        "grad_terms",
        "rebuilds_grads",
        "the operator's data-independent gradient term is added after privatisation (no "
        "privacy cost, not clipped away)",
    ),
    Rule(
        "forward_hooks",
        "rebuilds_grads",
        "per-sample gradients are taken through the noisy forward pass",
    ),
    Rule(
        "scales_lr",
        "rebuilds_grads",
        "the privatised gradient of the protected groups is applied at the scaled rate",
    ),
    Rule(
        "per_example_grads",
        "loss",
        "per-example gradients are of the defense's own per-example loss (the loop's backward)",
    ),
)


@dataclass(frozen=True)
class Pair:
    """One row of :func:`pair_table`: ``reason`` says why a refused pair is refused, or how an
    allowed pair composes (``"independent"`` when the two touch different things)."""

    operator: str
    defense: str
    allowed: bool
    reason: str


def pair(operator: str, defense: str) -> Pair:
    """The verdict on ``operator`` with ``defense`` (unknown names raise :class:`ConfigError`)."""
    op, de = OPERATORS[operator].needs, DEFENSES[defense].needs
    refused = [r.why for r in CONFLICTS if r.holds(op, de)]
    if refused:
        return Pair(operator, defense, False, "; ".join(refused))
    notes = [r.why for r in NOTES if r.holds(op, de)]
    return Pair(operator, defense, True, "; ".join(notes) or "independent")


def check_pair(operator: str, defense: str) -> None:
    """Raise :class:`ConfigError` naming both and why, unless ``operator`` composes with
    ``defense``."""
    verdict = pair(operator, defense)
    if not verdict.allowed:
        raise ConfigError(
            f"protect.operator {operator!r} does not compose with defense.name {defense!r}: "
            f"{verdict.reason}. Choose another defense for {operator!r} or another operator "
            f"for {defense!r}"
        )


def pair_table() -> tuple[Pair, ...]:
    """Every pair of ``OPERATORS x DEFENSES``, operators and defenses in sorted order."""
    return tuple(pair(o, d) for o in sorted(OPERATORS) for d in sorted(DEFENSES))
