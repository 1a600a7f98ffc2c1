"""Localisation: where in a network privacy risk and generalization sit, per layer group.

``docs/design.md#localisation-measurement``. The paper (Fang & Kim 2026, arXiv 2602.02296) *states*
that generalization and membership-privacy risk live in different regions of a network; how to
measure that is this project's *interpretation*, and which region is risky is measured here, never
assumed.

The measurement, per seed ``s`` (``train.seed = s``; the base recipe, no protection, no defense):

- ``D`` = the target's members (``pool.keep(1)[0]``), ``D1`` = a seeded half of ``D``,
  ``D2 = D \\ D1``, ``H`` = the pool's held-out test set; at most ``max_examples`` of each (a
  seeded sample) are scored.
- Model **A** trains on ``D``, model **B** on ``D1``: same recipe and seed, so the same initial
  weights. On ``D1`` (members of both) and ``H`` (members of neither) the two models agree on each
  example's membership; on ``D2`` only A has seen it.
- **Distance** (:func:`normalised_distance`): ``d = ||f - f'|| / (||f|| + ||f'||)`` between two
  feature vectors (flattened per example, eval mode), in [0, 1] and scale-free, so groups of any
  width and activation scale compare; unlike 1 - cosine it sees a change of norm.
- **Privacy risk of g** = ``log(mean_D2 d_g / ((mean_D1 d_g + mean_H d_g) / 2))``
  (:func:`log_ratio`), with ``d_g`` the distance between A's output at g and the output at g of
  A with **g's weights swapped for B's** (:func:`swapped_group`): how much more g's own weights
  differ in what they compute where A and B differ in membership than where they do not. 0 = no
  membership-specific difference; a log-ratio, so it is symmetric and needs no other scale.
- ``risk_at_output`` (reported, not ranked): the same ratio for A's and B's outputs at g as they
  are, the literal reading of the design's measurement. Each group's output depends on every group
  before it, so this measure *accumulates*: a difference planted in one group shows at every later
  group, growing toward the logits (tests/test_localize_measure.py plants one). Swapping one group
  into an otherwise identical forward pass measures what that group's weights add, which is what
  PPTP protects; groups that A and B share exactly score exactly 0.
- **Generalization of g**: A's test-accuracy drop when g's parameters and buffers are reset to
  A's weights at the end of warm-up (``train.warmup_epochs``; the initial weights when it is 0),
  every other group kept: the re-initialisation robustness test of Zhang, Bengio & Singer 2019
  ("Are All Layers Created Equal?", arXiv 1902.01996) at the warm-up checkpoint. Chosen because
  it costs no training (one evaluation per group) and asks what PPTP's operators ask: what breaks
  when this group is held at its warm-up weights (``damp`` at s = 1 freezes it there, ``anchor``
  pulls it there, ``rewind`` resets it). It overstates the cost of protecting a group, since in
  protected training the free groups adapt around it. A linear probe would measure how separable
  the group's features are, which a later group need not use; not implemented.

Limits: the risk is relative to how much g differs between A and B overall, so a group that
drifts a lot everywhere and memorises a little scores low; on data a model fits without much
memorisation (digits) every score is close to 0 and within its seed spread.

Over seeds: mean and sample standard deviation (ddof=1; 0 for one seed). Cost: two trainings
per seed (A on |D|, B on |D|/2 examples), then per group four forward passes (up to the group)
over the scored examples and one test-set evaluation: seconds next to the trainings.

Modules, in the order of the work:

- :mod:`~pptp.localize.measure`: the two scores of every group for any two trained models
  (:func:`privacy_risk`, :func:`generalization`; the tests plant a memorising group through them);
- :mod:`~pptp.localize.experiment`: :func:`localize` trains A and B per seed, scores them and
  aggregates over seeds;
- :mod:`~pptp.localize.result`: :class:`LocalizationResult`, saved as JSON only (never pickle)
  with the identity of the data and model it belongs to, which :func:`check_matches` compares
  with a study's config;
- :mod:`~pptp.localize.report`: the printed table, the CSV and the chart.
"""

from __future__ import annotations

from pptp.localize.experiment import (
    MIN_MEMBERS,
    Progress,
    check_localizable,
    localize,
    split_members,
)
from pptp.localize.measure import (
    PrivacyRisk,
    generalization,
    group_state_keys,
    log_ratio,
    normalised_distance,
    output_distances,
    privacy_risk,
    swapped_group,
)
from pptp.localize.report import CSV_COLUMNS, localization_table, plot_localization, write_csv
from pptp.localize.result import (
    FORMAT,
    IDENTITY_KEYS,
    VERSION,
    GroupScore,
    LocalizationResult,
    check_matches,
    recipe_digest,
)

__all__ = [
    "CSV_COLUMNS",
    "FORMAT",
    "IDENTITY_KEYS",
    "MIN_MEMBERS",
    "VERSION",
    "GroupScore",
    "LocalizationResult",
    "PrivacyRisk",
    "Progress",
    "check_localizable",
    "check_matches",
    "generalization",
    "group_state_keys",
    "localization_table",
    "localize",
    "log_ratio",
    "normalised_distance",
    "output_distances",
    "plot_localization",
    "privacy_risk",
    "recipe_digest",
    "split_members",
    "swapped_group",
    "write_csv",
]
