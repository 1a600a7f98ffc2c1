"""The base recipe's reference models (stage 5 of ``search/run.py``): trained once, as parallel
Ray tasks, before any trial; checked above chance; shipped to the trials through Ray's object
store. A reference that cannot be trained stops the study before any trial
(:class:`ReferencesFailed`: exit status 2; :class:`ReferencesUnavailable`: 1)."""

from __future__ import annotations

import dataclasses
import logging
import logging as _logging
import time
from typing import TYPE_CHECKING, Any

import ray

from pptp.bank import ReferenceBank, train_entry
from pptp.chance import require_above_chance
from pptp.config import TrialConfig
from pptp.data import build_pool
from pptp.errors import ConfigError, ModelAtChance
from pptp.signals import resolve_queries
from pptp.threads import torch_threads
from pptp.train import TrainingDiverged
from pptp.trial import references_needed
from search.running.progress import duration, eta
from search.study import rundir
from search.study.failures import exception_reason

if TYPE_CHECKING:
    from search.running.plan import Plan

logger = logging.getLogger(__name__)


class ReferencesFailed(ConfigError):
    """A reference model of the base recipe cannot be trained because of the recipe (it diverges,
    it stays at chance, the config is refused): no trial could be scored, so nothing starts."""


class ReferencesUnavailable(RuntimeError):
    """A reference model could not be trained for another reason (a full disk, a lost worker)."""


#: searched keys that change which references a trial needs (besides data.* and model.*): with
#: any of them the trials load their references from the bank themselves, as before
REFERENCE_KEYS = frozenset(
    {
        "train.augment",
        "train.crop_pad",
        "attack.query_augment",
        "attack.n_references",
        "attack.attacks",
        "attack.adaptive",
    }
)


@dataclasses.dataclass(frozen=True)
class References:
    """What the reference stage hands the trials.

    ``config``: the recipe the screening references follow (None when the space searches data or
    model keys: each trial then needs references of its own). ``signals``: an ``ObjectRef`` to
    the :class:`~pptp.bank.ReferenceSignals` the driver loaded once and put in Ray's object store
    (None when the trials load their own from the bank, or need none). ``trained``: how many
    reference models this stage trained.
    """

    config: Any  # pptp.config.TrialConfig | None
    signals: Any = None  # ray.ObjectRef | None
    trained: int = 0


def train_references(plan: Plan) -> References:
    """Train the base recipe's missing reference models as parallel Ray tasks, store them in the
    driver's bank, check that every reference learned (above chance), and put their signals in
    Ray's object store for the trials.

    Each task trains on whichever node Ray picks and *returns* the entry
    (:class:`pptp.bank.ReferenceEntry`, the ``.npz`` bytes and their metadata) to the driver,
    which writes it into its bank (``attack.bank_dir``): no node writes a bank of its own disk,
    and no trial opens one. The driver then loads the K references once and puts them in Ray's
    object store; every trial reads them there, on its node
    (:func:`search.running.trainable.trainable`).

    When the space searches data or model keys, every trial needs references of its own: they are
    trained inside the trial, from the trial's node's ``attack.bank_dir`` (as before; a shared
    folder, e.g. NFS, avoids training them once per node). The same holds, for the recipe's own
    references, when it searches a key of :data:`REFERENCE_KEYS` (the queries, the number of
    references, the attacks or adaptive audits).

    A reference that cannot be trained raises :class:`ReferencesFailed` when the recipe is the
    cause (exit status 2), or :class:`ReferencesUnavailable` otherwise (a full disk, a lost
    worker; exit status 1).
    """
    space = plan.space
    base = space.base_config()
    base = base.replace(**rundir.absolute_paths(base))
    if any(k.startswith(("data.", "model.")) for k in space.params):
        logger.warning("the space searches data/model keys: each trial trains its own references")
        return References(None)
    n = references_needed(base)
    if not n:
        return References(base)
    bank = ReferenceBank(base.attack.bank_dir)
    queries = resolve_queries(base)
    fidelity = space.study.fidelity
    rungs = fidelity.epochs(base.train.epochs) if fidelity is not None else ()
    missing = bank.missing(base, n, queries=queries, rungs=rungs)
    plan.say(f"references  {n} needed, {n - len(missing)} in the bank ({bank.entry_dir(base)})")
    res = space.study.resources
    flat = base.to_flat()
    options = {"num_cpus": res.cpus, "num_gpus": res.gpus}
    pending = [
        ray.remote(train_reference)
        .options(**options)
        .remote(flat, i, list(queries), res.cpus, rungs)
        for i in missing
    ]
    start, done = time.perf_counter(), 0
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in ready:
                bank.store(ray.get(ref))
                done += 1
                elapsed = time.perf_counter() - start
                plan.say(
                    f"references  {done}/{len(missing)} trained ({duration(elapsed)}, "
                    f"{eta(elapsed, done, len(missing))})"
                )
    except ray.exceptions.RayTaskError as error:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise reference_failure(error) from None
    except OSError as error:  # the driver's bank could not take an entry (a full disk)
        for ref in pending:
            ray.cancel(ref, force=True)
        raise reference_failure(error) from None
    signals = bank.load(base, n, queries=queries, rungs=rungs)
    try:
        require_learned(signals, base, what=str(bank.entry_dir(base)))
    except Exception as error:
        raise reference_failure(error) from None
    searched = sorted(REFERENCE_KEYS & set(space.params))
    if searched:
        logger.warning(
            "the space searches %s: each trial loads its references from the bank itself",
            ", ".join(searched),
        )
        return References(base, None, len(missing))
    shipped = ray.put(signals)
    plan.say(
        f"references  {n} shipped to the trials through Ray's object store "
        f"({signals.logits.nbytes / 2**20:.1f} MiB)"
    )
    return References(base, shipped, len(missing))


def reference_failure(error: Exception) -> Exception:
    cause = getattr(error, "cause", None) or error
    reason = exception_reason(cause)
    what = (
        "the base recipe's reference models cannot be trained: "
        f"{reason}. Every trial is scored against them, so no trial was started"
    )
    if isinstance(cause, ConfigError) and str(cause).startswith(
        ("unknown model", "unknown dataset")
    ):
        return ReferencesFailed(
            f"{what}. A model or dataset registered in the driver's process only (pptp.models."
            "MODELS from a wrapper script) is unknown to the Ray workers, which import pptp "
            "afresh: name your model by import path instead (model.name: package.module:factory "
            "or path/to/file.py:factory; data.name likewise for a loader), and the search ships "
            "it to every worker"
        )
    if isinstance(cause, ConfigError | TrainingDiverged | ModelAtChance):
        return ReferencesFailed(
            f"{what}; fix the recipe in the space's fixed section (train.lr, train.epochs, "
            "model.norm, ...)"
        )
    return ReferencesUnavailable(f"{what}; fix the cause and run again with --resume")


def train_reference(
    flat: dict[str, Any],
    index: int,
    queries: list[str],
    cpus: float,
    rungs: tuple[int, ...] = (),
) -> Any:
    """A Ray task on any node: train reference ``index`` with as many torch threads as the
    ``cpus`` the task reserved, and return it (:class:`pptp.bank.ReferenceEntry`, whose meta
    records ``torch_threads``; with ``rungs``, its logits at those epochs too); it writes
    nothing on that node."""
    _logging.basicConfig(level=_logging.INFO)
    with torch_threads(cpus):
        return train_entry(TrialConfig.from_flat(flat), index, queries=queries, rungs=rungs)


def check_references(root: str, flat: dict[str, Any], n: int) -> None:
    """Raise :class:`~pptp.errors.ModelAtChance` naming the first of the ``n`` references of the
    bank at ``root`` whose recorded test accuracy is at chance (a trial scored against it would
    fail)."""
    cfg = TrialConfig.from_flat(flat)
    bank = ReferenceBank(root)
    require_learned(bank.load(cfg, n), cfg, what=str(bank.entry_dir(cfg)))


def require_learned(signals: Any, cfg: Any, *, what: str) -> None:
    """:class:`~pptp.errors.ModelAtChance` for the first reference of ``signals``
    (:class:`~pptp.bank.ReferenceSignals`) whose test accuracy is at chance on ``cfg``'s test
    set (the driver builds the pool for its labels: the data is on the driver's disk, which
    :func:`pptp.data.check_data` made sure of)."""
    labels = build_pool(cfg.data).y_test.cpu().numpy()
    if len(labels) == 0:
        return
    for i, accuracy in enumerate(signals.test_acc):
        require_above_chance(float(accuracy), labels, what=f"reference model {i} of {what}")
