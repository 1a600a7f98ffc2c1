"""Threshold attacks: a score from the target model's output alone, no reference models.

Each attack thresholds one metric of the target's prediction on the UNAUGMENTED query
(augmentation index 0), as the papers do; the other augmentations are ignored. Higher = member.

- ``loss``: Yeom et al. 2018, "Privacy Risk in Machine Learning: Analyzing the Connection to
  Overfitting" (CSF 2018), the loss-threshold adversary (member iff the loss is small): score =
  ``-CE = log p_y``.
- ``confidence``: score = ``p_y``, the probability of the true class (Song & Mittal 2021's
  confidence-based attack ``I_conf``). In exact arithmetic it ranks examples as ``loss`` does
  (``exp`` is monotone); in float64 ``p_y`` rounds to 1 for very confident examples, which ties
  them, so ``loss`` is the resolution-preserving form.
- ``entropy``: score = ``-H(p) = sum_j p_j log p_j`` (Song & Mittal 2021's entropy-based
  attack ``I_entr``).
- ``modified_entropy``: Song & Mittal 2021, "Systematic Evaluation of Privacy Risks of Machine
  Learning Models" (USENIX Security 2021), the modified prediction entropy:
  ``Mentr(p, y) = -(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)``; score = ``-Mentr``.

All from log-softmax in float64. ``log(1 - p_y)`` uses ``logsumexp_{j != y} z_j - logsumexp z``
(exact); ``log(1 - p_j)`` for ``j != y`` uses ``log(-expm1(log p_j))``, floored at the log of the
smallest normal float so a wrong class predicted with ``p_j = 1.0`` gives a huge finite Mentr, not
``inf``.
"""

from __future__ import annotations

import numpy as np

from pptp.attacks.base import (
    AttackInput,
    log_softmax,
    logit_scaled_confidence,
    register_attack,
    true_class_log_prob,
)

_LOG_TINY = float(np.log(np.finfo(np.float64).tiny))


def _unaugmented(inputs: AttackInput) -> np.ndarray:
    """The target's logits on the unaugmented query, kept 3-D: ``(n, 1, C)``."""
    return inputs.target_logits[:, :1, :]


@register_attack("loss")
def loss(inputs: AttackInput) -> np.ndarray:
    """Score ``log p_y`` = minus the cross-entropy loss, ``(n,)``."""
    return true_class_log_prob(_unaugmented(inputs), inputs.labels)[:, 0]


@register_attack("confidence")
def confidence(inputs: AttackInput) -> np.ndarray:
    """Score ``p_y`` in ``[0, 1]``, ``(n,)``."""
    return np.exp(true_class_log_prob(_unaugmented(inputs), inputs.labels)[:, 0])


@register_attack("entropy")
def entropy(inputs: AttackInput) -> np.ndarray:
    """Score ``-H(p)`` in ``[-log C, 0]`` nats, ``(n,)``."""
    log_p = log_softmax(_unaugmented(inputs))[:, 0, :]
    return np.sum(np.exp(log_p) * log_p, axis=-1)


@register_attack("modified_entropy")
def modified_entropy(inputs: AttackInput) -> np.ndarray:
    """Score ``-Mentr`` (Song & Mittal 2021, eq. 3), ``(n,)``; ``Mentr >= 0``."""
    logits = _unaugmented(inputs)
    labels = inputs.labels
    log_p = log_softmax(logits)[:, 0, :]  # (n, C)
    p = np.exp(log_p)
    log_p_y = true_class_log_prob(logits, labels)[:, 0]
    # log(1 - p_y) = log p_y - phi, exact (phi = log p_y - log(1 - p_y)).
    log_1m_p_y = log_p_y - logit_scaled_confidence(logits, labels)[:, 0]
    true_term = -np.exp(log_1m_p_y) * log_p_y
    with np.errstate(divide="ignore"):
        log_1m_p = np.maximum(np.log(-np.expm1(log_p)), _LOG_TINY)
    is_true = np.arange(log_p.shape[-1]) == labels[:, None]
    other_terms = -np.sum(np.where(is_true, 0.0, p * log_1m_p), axis=-1)
    return -(true_term + other_terms)
