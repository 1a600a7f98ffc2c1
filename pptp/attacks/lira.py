"""LiRA, the Likelihood Ratio Attack: Carlini et al. 2022, "Membership Inference Attacks From
First Principles" (IEEE S&P 2022), Algorithm 1.

Signal: the logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` of every model on every
example and query augmentation (``logit_scaled_confidence`` in ``base``). For each example ``x``
and augmentation ``a`` the reference models that trained on ``x`` (IN, ``ref_keep[r, x]``) and
those that did not (OUT) give two samples of ``phi``, modelled as Gaussians
``N(mu_in, sigma_in^2)`` and ``N(mu_out, sigma_out^2)``.

- ``lira_online``: score = ``log N(phi_obs; mu_in, sigma_in^2) - log N(phi_obs; mu_out,
  sigma_out^2)``, the log likelihood ratio of Algorithm 1, averaged over augmentations (each
  augmentation its own Gaussian pair, as in the reference code's ``generate_ours``; the mean is the
  sum of independent per-augmentation log ratios divided by ``A``, so it ranks identically).
- ``lira_offline``: only OUT references. The paper's one-sided test: ``Lambda = 1 - Pr[Z >
  phi_obs] = Pr[Z <= phi_obs]`` with ``Z ~ N(mu_out, sigma_out^2)``; score = ``log Lambda``
  (``scipy.stats.norm.logcdf``) averaged over augmentations. NOTE: the authors' released code
  (``generate_ours_offline``) scores ``-log N(phi_obs; mu_out, sigma_out^2)`` instead, a two-sided
  test that also flags examples the target fits much WORSE than the references; we follow the
  paper, whose test is the one consistent with "members are fitted better".
- ``lira_fixed_variance`` / ``lira_offline_fixed_variance``: per-example means but one global
  ``sigma_in`` and ``sigma_out`` per augmentation, shared by all examples ("fixed variance", the
  paper's recommendation with few reference models). The global sigma is the pooled
  within-example standard deviation, ``sqrt(sum of squared deviations from each example's own mean
  / number of those observations)`` over examples with >= 2 observations. (The reference code
  uses ``np.std`` of all values, which adds the spread of the per-example means; for the online
  score a common sigma only scales the log ratio, so both give the same ranking there.)

Estimators: ``mu`` is the mean of the references' ``phi`` (Algorithm 1; the reference code uses
the median), ``sigma`` the population standard deviation (``ddof=0``, as ``np.std`` in the
reference code), floored at ``1e-6`` so identical reference values give a finite score.

Fallbacks, each logged at WARNING with the number of examples concerned:

- an example with < 2 IN (OUT) references gets the global pooled sigma of its side;
- online, an example with no IN references gets ``mu_in = mu_out + gap``, where ``gap`` (per
  augmentation) is the mean of ``mu_in - mu_out`` over the examples that have both; no OUT
  references: ``mu_out = mu_in - gap``;
- offline, an example with no OUT references gets the global OUT mean and sigma (the mean and
  pooled sigma over all OUT observations);
- no example with >= 2 observations on a side (e.g. 2 complementary references): the global sigma
  of that side is the standard deviation of all its observations (the reference code's estimate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pptp.attacks.base import AttackInput, logit_scaled_confidence, per_model, register_attack

logger = logging.getLogger(__name__)

_MIN_STD = 1e-6


@dataclass(frozen=True)
class _Side:
    """Per-example Gaussian estimates of ``phi`` from one side (IN or OUT) of the references.

    ``count (n,)`` observations per example; ``mean, std (n, A)``, NaN where ``count`` is too small;
    ``global_std (A,)`` the pooled within-example standard deviation; ``global_mean (A,)`` the mean
    of all observations of the side.
    """

    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    global_mean: np.ndarray
    global_std: np.ndarray


def _side(phi: np.ndarray, mask: np.ndarray, label: str) -> _Side:
    """Gaussian estimates from ``phi (K, n, A)`` where ``mask (K, n)`` is true."""
    weights = mask[:, :, None].astype(np.float64)
    count = mask.sum(axis=0)
    total = weights.sum(axis=0)  # (n, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (weights * phi).sum(axis=0) / total
        sq_dev = (weights * (phi - np.nan_to_num(mean)) ** 2).sum(axis=0)  # (n, A)
        std = np.sqrt(sq_dev / total)
    std[count < 2] = np.nan
    if not count.any():
        raise ValueError(f"no {label} reference observations: check ref_keep")
    global_mean = (weights * phi).sum(axis=(0, 1)) / count.sum()
    pooled = count >= 2
    if pooled.any():
        global_std = np.sqrt(sq_dev[pooled].sum(axis=0) / count[pooled].sum())
    else:
        logger.warning("no example has 2 %s references: global sigma = std of all values", label)
        values = phi[mask]  # (n_obs, A)
        global_std = values.std(axis=0)
    return _Side(count, mean, std, global_mean, np.maximum(global_std, _MIN_STD))


def _std(side: _Side, *, fixed_variance: bool, label: str) -> np.ndarray:
    """``(n, A)`` standard deviations: per example, or the global one where fixed or too few."""
    if fixed_variance:
        return np.broadcast_to(side.global_std, side.mean.shape)
    few = side.count < 2
    if few.any():
        logger.warning(
            "%d examples have < 2 %s references: using the global sigma", few.sum(), label
        )
    return np.where(few[:, None], side.global_std, np.maximum(side.std, _MIN_STD))


def _signals(inputs: AttackInput) -> tuple[np.ndarray, np.ndarray]:
    """``phi`` of the target ``(n, A)`` and of the references ``(K, n, A)``."""
    target = logit_scaled_confidence(inputs.target_logits, inputs.labels)
    refs = per_model(logit_scaled_confidence, inputs.ref_logits, inputs.labels)
    return target, refs


def _online(inputs: AttackInput, *, fixed_variance: bool) -> np.ndarray:
    target, refs = _signals(inputs)
    side_in = _side(refs, inputs.ref_keep, "IN")
    side_out = _side(refs, ~inputs.ref_keep, "OUT")
    has_in, has_out = side_in.count > 0, side_out.count > 0
    both = has_in & has_out
    if not both.any():
        raise ValueError("no example has both IN and OUT references: LiRA online needs both")
    gap = (side_in.mean[both] - side_out.mean[both]).mean(axis=0)  # (A,)
    if not both.all():
        logger.warning(
            "%d examples lack IN and %d lack OUT references: mean shifted by the global gap",
            (~has_in).sum(),
            (~has_out).sum(),
        )
    mu_in = np.where(has_in[:, None], side_in.mean, side_out.mean + gap)
    mu_out = np.where(has_out[:, None], side_out.mean, side_in.mean - gap)
    std_in = _std(side_in, fixed_variance=fixed_variance, label="IN")
    std_out = _std(side_out, fixed_variance=fixed_variance, label="OUT")
    from scipy.stats import norm  # lazily: scipy.stats costs a second to import

    log_ratio = norm.logpdf(target, mu_in, std_in) - norm.logpdf(target, mu_out, std_out)
    return np.asarray(log_ratio.mean(axis=1))


def _offline(inputs: AttackInput, *, fixed_variance: bool) -> np.ndarray:
    target, refs = _signals(inputs)
    side_out = _side(refs, ~inputs.ref_keep, "OUT")
    has_out = side_out.count > 0
    if not has_out.all():
        logger.warning("%d examples have no OUT references: global OUT mean", (~has_out).sum())
    mu_out = np.where(has_out[:, None], side_out.mean, side_out.global_mean)
    std_out = _std(side_out, fixed_variance=fixed_variance, label="OUT")
    from scipy.stats import norm

    return np.asarray(norm.logcdf(target, mu_out, std_out).mean(axis=1))


@register_attack("lira_online", min_refs=2, needs_in=True)
def lira_online(inputs: AttackInput) -> np.ndarray:
    """Online LiRA, per-example IN and OUT variances; mean log likelihood ratio, ``(n,)``."""
    return _online(inputs, fixed_variance=False)


@register_attack("lira_fixed_variance", min_refs=2, needs_in=True)
def lira_fixed_variance(inputs: AttackInput) -> np.ndarray:
    """Online LiRA with global IN and OUT variances; ``(n,)``."""
    return _online(inputs, fixed_variance=True)


@register_attack("lira_offline", min_refs=1)
def lira_offline(inputs: AttackInput) -> np.ndarray:
    """Offline LiRA, one-sided test against per-example OUT Gaussians; ``(n,)`` log-probs."""
    return _offline(inputs, fixed_variance=False)


@register_attack("lira_offline_fixed_variance", min_refs=1)
def lira_offline_fixed_variance(inputs: AttackInput) -> np.ndarray:
    """Offline LiRA with a global OUT variance; ``(n,)``."""
    return _offline(inputs, fixed_variance=True)
