"""RMIA, the Relative Membership Inference Attack: Zarifzadeh et al. 2024, "Low-Cost High-Power
Membership Inference Attacks" (ICML 2024), §3 (the pairwise likelihood ratio and ``Score_MIA``).

For an example ``x`` and a population example ``z``:

    LR_theta(x, z) = (Pr(x | theta) / Pr(x)) / (Pr(z | theta) / Pr(z))
    Score_MIA(x)   = Pr_{z ~ Z}[ LR_theta(x, z) > gamma ]

- ``Pr(x | theta)``: the target's softmax probability of the true label, averaged over the query
  augmentations (``n_aug``).
- ``Pr(x)``: the same probability averaged over reference models (each averaged over augmentations
  first). ``rmia_online``: over all reference models, IN and OUT alike. ``rmia_offline``: only
  over OUT reference models, then the paper's linear correction for the missing IN models,
  ``Pr(x) = ((1 + a) * Pr_OUT(x) + (1 - a)) / 2`` (the paper's offline approximation). The paper
  tunes ``a`` per dataset (by attacking one reference model with the others); the default 0.3 is
  the default ``offline_a`` of the authors' Privacy Meter code. ``a = 1`` uses ``Pr_OUT`` as is.
- ``Z``: ``inputs.population`` (indices into the examples), by default every example. The paper
  draws ``z`` from population data; an attacker holding the pool but not the target's membership
  has nothing narrower. ``Pr(z)`` uses the same rule (online/offline) as ``Pr(x)``.

Because one ``Z`` serves every ``x``, ``Score_MIA(x)`` is the fraction of the population whose
ratio ``Pr(z | theta) / Pr(z)`` lies below ``(Pr(x | theta) / Pr(x)) / gamma``: a non-decreasing
function of ``x``'s own ratio for any ``gamma``. The population therefore sets the resolution of
the score (``1 / |Z|`` steps) and its scale, not the order of examples. We compute it exactly so,
with ratios in log space, one sort of the population and ``np.searchsorted``: ``O((n + m) log m)``
time and ``O(n + m)`` memory, never an ``n x m`` matrix. ``max_population`` optionally subsamples
``Z`` (seeded) to reproduce the paper's finite-``Z`` setting; the default uses all of it, which
costs nothing extra here and gives the finest resolution. ``x`` itself, when in ``Z``, never counts
for ``gamma >= 1`` (its ratio with itself is 1).

An example with no OUT reference model (offline) gets the mean ``Pr_OUT`` over all OUT
observations of all examples, logged at WARNING.
"""

from __future__ import annotations

import logging

import numpy as np

from pptp.attacks.base import AttackInput, logsumexp, register_attack, true_class_log_prob

logger = logging.getLogger(__name__)

DEFAULT_OFFLINE_A = 0.3


def _log_pr(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log Pr(x | model)``, the log of the mean of ``p_y`` over augmentations: ``(n,)``."""
    log_p = true_class_log_prob(logits, labels)
    return np.asarray(logsumexp(log_p, axis=1) - np.log(log_p.shape[1]))


def _ref_log_pr(inputs: AttackInput) -> np.ndarray:
    """``log Pr(x | reference r)``, ``(K, n)``."""
    return np.stack([_log_pr(logits, inputs.labels) for logits in inputs.ref_logits])


def _log_pr_online(inputs: AttackInput) -> np.ndarray:
    """``log Pr(x)`` = log of the mean over all reference models, ``(n,)``."""
    ref = _ref_log_pr(inputs)
    return np.asarray(logsumexp(ref, axis=0) - np.log(ref.shape[0]))


def _log_pr_offline(inputs: AttackInput, a: float) -> np.ndarray:
    """``log Pr(x)`` from OUT references, linearly corrected: ``((1+a) P_out + 1 - a) / 2``."""
    ref = _ref_log_pr(inputs)
    out = ~inputs.ref_keep
    n_out = out.sum(axis=0)
    masked = np.where(out, ref, -np.inf)
    has_out = n_out > 0
    log_p_out = np.empty(ref.shape[1])
    log_p_out[has_out] = logsumexp(masked[:, has_out], axis=0) - np.log(n_out[has_out])
    if not has_out.all():
        if not has_out.any():
            raise ValueError("no OUT reference observations: offline RMIA needs OUT references")
        logger.warning("%d examples have no OUT references: global mean Pr_OUT", (~has_out).sum())
        log_p_out[~has_out] = logsumexp(masked) - np.log(n_out.sum())
    with np.errstate(divide="ignore"):  # a = 1 makes the constant term log 0 = -inf
        return np.asarray(np.logaddexp(np.log((1 + a) / 2) + log_p_out, np.log((1 - a) / 2)))


def _population(inputs: AttackInput, max_population: int | None, seed: int) -> np.ndarray:
    """Indices of ``Z``: ``inputs.population`` or all examples, subsampled if asked."""
    if inputs.population is None:
        population = np.arange(inputs.n_examples)
    else:
        population = np.asarray(inputs.population)
    if max_population is not None:
        if max_population < 1:
            raise ValueError(f"max_population must be >= 1 or None, got {max_population}")
        if population.size > max_population:
            rng = np.random.default_rng(seed)
            population = rng.choice(population, size=max_population, replace=False)
    return population


def _score(
    inputs: AttackInput,
    log_pr_x: np.ndarray,
    *,
    gamma: float,
    max_population: int | None,
    seed: int,
) -> np.ndarray:
    """``Score_MIA``: fraction of ``z`` with ``LR(x, z) > gamma``, in ``[0, 1]``, ``(n,)``."""
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    log_ratio = _log_pr(inputs.target_logits, inputs.labels) - log_pr_x  # log(Pr(x|θ)/Pr(x))
    z = np.sort(log_ratio[_population(inputs, max_population, seed)])
    # LR(x, z) > gamma  <=>  log_ratio_z < log_ratio_x - log(gamma): count strictly smaller.
    below = np.searchsorted(z, log_ratio - np.log(gamma), side="left")
    return below / z.size


@register_attack("rmia_online", min_refs=2, needs_in=True)
def rmia_online(
    inputs: AttackInput, *, gamma: float = 1.0, max_population: int | None = None, seed: int = 0
) -> np.ndarray:
    """Online RMIA, ``Pr(x)`` over all reference models; scores in ``[0, 1]``, ``(n,)``."""
    return _score(
        inputs, _log_pr_online(inputs), gamma=gamma, max_population=max_population, seed=seed
    )


@register_attack("rmia_offline", min_refs=1)
def rmia_offline(
    inputs: AttackInput,
    *,
    a: float = DEFAULT_OFFLINE_A,
    gamma: float = 1.0,
    max_population: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Offline RMIA, ``Pr(x)`` from OUT references with parameter ``a``; ``(n,)`` in ``[0, 1]``."""
    if not 0 <= a <= 1:
        raise ValueError(f"offline RMIA parameter a must lie in [0, 1], got {a}")
    return _score(
        inputs, _log_pr_offline(inputs, a), gamma=gamma, max_population=max_population, seed=seed
    )
