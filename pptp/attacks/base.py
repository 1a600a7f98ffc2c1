"""What every membership inference attack shares: its input, its registry entry, its signals.

An attack is a pure function ``AttackInput -> scores``: the expensive part
(training the target and the reference models, querying them on every pool example) happened
before, in ``pptp.signals`` and ``pptp.bank``; here only numpy runs. Membership of the reference
models is the boolean matrix ``ref_keep[model, example]`` of the LiRA reference code.

Scores follow one convention: one float per example, shape ``(n_examples,)``, finite, and HIGHER
means MORE LIKELY A MEMBER, so ``sklearn.metrics.roc_curve(is_member, scores)`` reads them as is.

Signals computed here from logits, all in float64 and from log-softmax, never from rounded
probabilities:

- ``true_class_log_prob``: ``log p_y``, minus the cross-entropy loss;
- ``logit_scaled_confidence``: ``phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j``
  (Carlini et al. 2022's "logit scaling" of the confidence), exact even where ``p_y`` rounds to 1.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pptp.registry import Registry

logger = logging.getLogger(__name__)

AttackFn = Callable[..., np.ndarray]


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array``: no copy, and the caller's own array keeps its flags."""
    view = array.view()
    view.flags.writeable = False
    return view


def _check_finite(name: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{name} holds {n_bad} NaN or infinite values; signals must be finite")


def _as_float(name: str, array: Any, ndim: int) -> np.ndarray:
    out = np.asarray(array)
    if not np.issubdtype(out.dtype, np.floating):
        if not np.issubdtype(out.dtype, np.number):
            raise ValueError(f"{name} must be a numeric array, got dtype {out.dtype}")
        out = out.astype(np.float64)
    if out.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {out.shape}")
    _check_finite(name, out)
    return out


@dataclass(frozen=True)
class AttackInput:
    """Per-example signals of a target model and ``n_refs`` reference models on one data pool.

    Shapes (``n`` examples, ``A >= 1`` query augmentations with index 0 the unaugmented query,
    ``C >= 2`` classes, ``K >= 0`` reference models):

    - ``target_logits``: ``(n, A, C)`` float, the target model's pre-softmax outputs;
    - ``labels``: ``(n,)`` int in ``[0, C)``;
    - ``ref_logits``: ``(K, n, A, C)`` float, the same queries on each reference model;
    - ``ref_keep``: ``(K, n)`` bool, ``ref_keep[r, i]`` is whether reference ``r`` trained on ``i``;
    - ``population``: optional ``(m,)`` int indices into the ``n`` examples used as RMIA's
      population ``z``. ``None`` (the default) means every example: an attacker who holds the pool
      but not the target's membership can use nothing narrower (see ``pptp.attacks.rmia``).

    Construction validates everything (finite logits, consistent shapes, label range) and stores
    read-only views, so an ``AttackInput`` can be shared by several attacks without copies and
    without one attack changing what the next one sees.
    """

    target_logits: np.ndarray
    labels: np.ndarray
    ref_logits: np.ndarray
    ref_keep: np.ndarray
    population: np.ndarray | None = None

    def __post_init__(self) -> None:
        target = _as_float("target_logits", self.target_logits, 3)
        n, n_aug, n_classes = target.shape
        if n == 0 or n_aug == 0:
            raise ValueError(f"target_logits needs >= 1 example and query, got {target.shape}")
        if n_classes < 2:
            raise ValueError(f"target_logits needs >= 2 classes, got shape {target.shape}")
        labels = self._checked_labels(n, n_classes)
        refs = _as_float("ref_logits", self.ref_logits, 4)
        if refs.shape[1:] != target.shape:
            raise ValueError(
                f"ref_logits has shape {refs.shape}; expected (n_refs, {n}, {n_aug}, {n_classes}) "
                f"to match target_logits {target.shape}"
            )
        keep = self._checked_keep(refs.shape[0], n)
        population = self._checked_population(n)
        for name, value in (
            ("target_logits", target),
            ("labels", labels),
            ("ref_logits", refs),
            ("ref_keep", keep),
            ("population", population),
        ):
            object.__setattr__(self, name, None if value is None else _read_only(value))

    def _checked_labels(self, n: int, n_classes: int) -> np.ndarray:
        labels = np.asarray(self.labels)
        if labels.shape != (n,):
            raise ValueError(f"labels has shape {labels.shape}; expected ({n},) as target_logits")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(
                f"labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]"
            )
        return labels

    def _checked_keep(self, n_refs: int, n: int) -> np.ndarray:
        keep = np.asarray(self.ref_keep)
        if keep.shape != (n_refs, n):
            raise ValueError(
                f"ref_keep has shape {keep.shape}; expected (n_refs, n_examples) = ({n_refs}, {n}) "
                f"to match ref_logits"
            )
        if keep.dtype != np.bool_:
            if keep.size and not np.isin(keep, (0, 1)).all():
                raise ValueError(f"ref_keep must be boolean (or 0/1), got dtype {keep.dtype}")
            keep = keep.astype(bool)
        return keep

    def _checked_population(self, n: int) -> np.ndarray | None:
        if self.population is None:
            return None
        population = np.asarray(self.population)
        if population.ndim != 1 or population.size == 0:
            raise ValueError(f"population must be non-empty 1-D indices, got {population.shape}")
        if not np.issubdtype(population.dtype, np.integer):
            raise ValueError(f"population must hold integer indices, got dtype {population.dtype}")
        if population.min() < 0 or population.max() >= n:
            raise ValueError(
                f"population indices must lie in [0, {n}), got [{population.min()}, "
                f"{population.max()}]"
            )
        return population

    @classmethod
    def without_refs(cls, target_logits: np.ndarray, labels: np.ndarray) -> AttackInput:
        """Input for reference-free (threshold) attacks: zero reference models."""
        target = _as_float("target_logits", target_logits, 3)
        n, n_aug, n_classes = target.shape
        return cls(
            target_logits=target,
            labels=labels,
            ref_logits=np.zeros((0, n, n_aug, n_classes), dtype=target.dtype),
            ref_keep=np.zeros((0, n), dtype=bool),
        )

    @property
    def n_examples(self) -> int:
        return int(self.target_logits.shape[0])

    @property
    def n_refs(self) -> int:
        return int(self.ref_logits.shape[0])


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    ``fn(inputs, **options) -> scores (n_examples,)``, higher = member. ``min_refs`` is the number
    of reference models it needs (0 for threshold attacks); ``needs_in`` says whether it uses
    reference models that trained on the scored example (the "online" setting of LiRA and RMIA),
    so a caller with only OUT references (offline bank) can pick the attacks that apply.
    """

    name: str
    fn: Callable[[AttackInput], np.ndarray]
    min_refs: int
    needs_in: bool

    def __call__(self, inputs: AttackInput, **options: Any) -> np.ndarray:
        fn: AttackFn = self.fn
        return fn(inputs, **options)


ATTACKS: Registry[AttackSpec] = Registry("attack")


def require_refs(name: str, inputs: AttackInput, min_refs: int) -> None:
    """Raise ``ValueError`` if ``inputs`` holds fewer than ``min_refs`` reference models."""
    if inputs.n_refs < min_refs:
        raise ValueError(
            f"attack {name!r} needs at least {min_refs} reference models, got {inputs.n_refs}"
        )


def register_attack(
    name: str, *, min_refs: int = 0, needs_in: bool = False
) -> Callable[[AttackFn], AttackFn]:
    """Decorator: register ``fn`` in :data:`ATTACKS` under ``name``.

    The registered (and returned) function checks the reference count before the attack runs and
    that the attack returned ``(n_examples,)`` finite scores after, so both the registry entry and
    a direct call of the module-level function are checked.
    """

    def add(fn: AttackFn) -> AttackFn:
        @functools.wraps(fn)
        def checked(inputs: AttackInput, **options: Any) -> np.ndarray:
            require_refs(name, inputs, min_refs)
            scores = np.asarray(fn(inputs, **options), dtype=np.float64)
            if scores.shape != (inputs.n_examples,):
                raise AssertionError(f"attack {name!r} returned shape {scores.shape}")
            _check_finite(f"scores of attack {name!r}", scores)
            return scores

        ATTACKS.register(name)(AttackSpec(name, checked, min_refs, needs_in))
        return checked

    return add


# ---------------------------------------------------------------------------------------------
# Signals from one model's logits (n, A, C) and labels (n,) -> (n, A); ``per_model`` maps them over
# the reference models.


def logsumexp(values: np.ndarray, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """``log(sum(exp(values)))`` along ``axis``, shifted by the maximum; ``-inf`` entries allowed.

    Three times faster than ``scipy.special.logsumexp`` on logits (no weights, no sign handling).
    Every slice must hold at least one finite value.
    """
    peak = np.max(values, axis=axis, keepdims=True)
    total = np.log(np.sum(np.exp(values - peak), axis=axis, keepdims=True)) + peak
    return np.squeeze(total, axis=axis) if axis is not None else total.reshape(())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log p`` over the last axis, float64, stable for any logit scale."""
    z = np.asarray(logits, dtype=np.float64)
    return z - logsumexp(z, axis=-1)[..., None]


def _true_class_logit(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.take_along_axis(z, labels[:, None, None], axis=-1)[..., 0]


def true_class_log_prob(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log p_y`` (minus the cross-entropy loss): ``(n, A, C), (n,) -> (n, A)``."""
    z = np.asarray(logits, dtype=np.float64)
    return _true_class_logit(z, labels) - logsumexp(z, axis=-1)


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``phi = log p_y - log(1 - p_y)``: ``(n, A, C), (n,) -> (n, A)``.

    Computed as ``z_y - logsumexp_{j != y} z_j`` (the softmax normaliser cancels), which stays
    exact where ``p_y`` rounds to 1 in floating point and ``log(1 - p_y)`` would be ``-inf``.
    """
    z = np.asarray(logits, dtype=np.float64)
    is_true = np.arange(z.shape[-1]) == labels[:, None, None]
    return _true_class_logit(z, labels) - logsumexp(np.where(is_true, -np.inf, z), axis=-1)


def per_model(
    signal: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ref_logits: np.ndarray,
    labels: np.ndarray,
) -> np.ndarray:
    """Apply a one-model ``signal`` to each reference model: ``(K, n, A, C) -> (K, n, A)``.

    One model at a time keeps the float64 temporaries at the size of one model's logits (a loop
    over models, never over examples).
    """
    n, n_aug = ref_logits.shape[1:3]
    out = np.empty((ref_logits.shape[0], n, n_aug), dtype=np.float64)
    for r in range(ref_logits.shape[0]):
        out[r] = signal(ref_logits[r], labels)
    return out
