"""The one training loop: plain training, every protection operator and every baseline defense.

Read :func:`train` top to bottom: check that the operator and the defense compose
(:mod:`pptp.compose`), build both (:mod:`pptp.hooks` says what the loop asks them), partition the
parameters into the protected and free groups of the one SGD optimizer, then the **training
phase** (epochs on the learning-rate schedule, until a mechanism stops it), the weights the
mechanisms hold at its end (the defense's, e.g. early stopping's best epoch, then the operator's,
e.g. rewind's interpolation), and the **fine-tune phase** an operator may declare (constant lr,
fresh momentum, some groups frozen, through the same optimizer, so DP-SGD counts it).

:func:`training` is the same loop as a generator that pauses after each epoch of ``rungs``
(snapshots of one training on the full run's schedule, for multi-fidelity search: the caller
measures the model in place, then resumes it or closes the generator to stop); :func:`train`
runs it to the end.

Batches are sliced from the in-memory pool and augmented on the device (no DataLoader, no
per-sample Python); one log line per epoch. On CUDA the training forward runs under bf16 autocast
(``train.bf16``); evaluation always runs in fp32, so accuracy does not depend on the device's
precision. channels_last is used for image inputs on every device (on 2 CPU cores it trains a
small CNN about 1.4x faster, ``docs/stack-notes.md``), except under Opacus' DP-SGD, whose per-sample
convolutions need NCHW (:attr:`pptp.hooks.Needs.nchw`); ``train.compile`` wraps the model in
``torch.compile`` on CUDA.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Generator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pptp.batches import augment, batches
from pptp.compose import check_pair
from pptp.config import DefenseConfig, ProtectConfig, TrainConfig
from pptp.data import Pool
from pptp.defenses import build_defense, resolve_strength
from pptp.device import autocast, channels_last, resolve_device
from pptp.errors import ConfigError
from pptp.hooks import FineTune, Mechanism, TrainContext, snapshot
from pptp.operators import Operator, build_operator
from pptp.optim import SCHEDULES, grad_terms_hook, scheduled_lr, sgd
from pptp.per_example import refuse_batchnorm
from pptp.selection import Partition, partition, selection_of

logger = logging.getLogger(__name__)

#: offsets that give the data order, augmentation, the operator and the defense independent
#: random streams (so an operator at strength 0 that draws zeros leaves DP-SGD's noise alone)
_DATA_STREAM, _AUG_STREAM, _OPERATOR_STREAM, _DEFENSE_STREAM = 0, 1, 2, 3


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float  # mean training loss over the epoch's batches (augmented inputs)
    train_acc: float  # accuracy on the epoch's augmented training batches
    test_acc: float
    val_acc: float | None
    lr: float  # the learning rate at the epoch's last step (free group)
    seconds: float  # training time of the epoch, evaluation excluded
    phase: str = "train"  # "train" or "finetune" (pptp.hooks.PHASES)


@dataclass(frozen=True)
class TrainResult:
    history: tuple[EpochLog, ...]
    test_acc: float  # final model on the pool's held-out test set
    train_acc: float  # final model on its own members, no augmentation
    epochs_run: int  # epochs of both phases (len(history))
    train_seconds: float  # all epochs, fine-tuning included, evaluation excluded
    images_per_second: float
    protected_groups: tuple[str, ...]
    mask: dict[str, bool]  # group -> protected
    #: torch_threads (what it trained with), and the mechanisms' (epsilon, dp_steps for dpsgd)
    extras: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024
) -> float:
    """Accuracy of ``model`` on ``x: (n, C, H, W)``, ``y: (n,)``; eval mode, fp32 everywhere."""
    if len(y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for start in range(0, len(y), batch_size):
        logits = model(channels_last(x[start : start + batch_size]))
        correct += (logits.argmax(1) == y[start : start + batch_size]).sum()
    model.train(was_training)
    return correct.item() / len(y)


def train(
    model: nn.Module,
    pool: Pool,
    members: np.ndarray,
    cfg: TrainConfig,
    *,
    protect: ProtectConfig | None = None,
    defense: DefenseConfig | None = None,
    device: torch.device | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``pool.x[members]`` (:func:`training` run to its end)."""
    steps = training(
        model,
        pool,
        members,
        cfg,
        protect=protect,
        defense=defense,
        device=device,
        on_epoch=on_epoch,
    )
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: TrainResult = done.value
            return result


def training(
    model: nn.Module,
    pool: Pool,
    members: np.ndarray,
    cfg: TrainConfig,
    *,
    protect: ProtectConfig | None = None,
    defense: DefenseConfig | None = None,
    device: torch.device | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    rungs: Collection[int] = (),
) -> Generator[int, None, TrainResult]:
    """Train ``model`` in place on ``pool.x[members]``, pausing after each epoch in ``rungs``.

    Yields the epoch number after each rung epoch of the training phase (the model holds that
    epoch's weights; a rung past the epoch a mechanism stopped at is never reached) and returns
    the :class:`TrainResult` (``StopIteration.value``). Closing the generator detaches the
    mechanisms.

    ``members: (n_members,)`` indices into the pool (e.g. ``np.flatnonzero(pool.keep(1)[0])``).
    The protect config picks the protected groups and the operator; the defense config adds a
    baseline defense; a pair that does not compose is a :class:`ConfigError` naming both.
    Everything random is seeded from ``cfg.seed``. ``on_epoch`` receives each epoch's log (both
    phases) as soon as it is measured (trackers stream curves through it).
    """
    protect = protect or ProtectConfig()
    defense = resolve_strength(defense or DefenseConfig(), cfg)  # defense.strength -> its knob
    check_pair(protect.operator, defense.name)  # defence in depth: search/ checks it first
    operator, guard = build_operator(protect), build_defense(defense)
    mechanisms: tuple[Mechanism, ...] = (operator, guard)
    device = device or resolve_device(cfg.device)
    _check_recipe(cfg, len(members))
    layout = _prepare(model, pool, device, {protect.operator: operator, defense.name: guard})
    selection = selection_of(protect)
    part = partition(model, selection) if selection is not None else None
    ctx = _context(model, part, cfg, device, n_members=len(members))
    data = _Data.of(pool, members, device, mechanisms)
    # the one optimizer: protected and free parameter groups
    base = sgd(cfg, ctx, mechanisms)
    if any(m.needs.grad_terms for m in mechanisms):
        base.register_step_pre_hook(grad_terms_hook(ctx, mechanisms))
    try:
        for m in mechanisms:
            m.attach(ctx)
        optimizer: torch.optim.Optimizer = base
        for m in mechanisms:
            optimizer = m.wrap_optimizer(ctx, optimizer)  # DP-SGD: Opacus' private optimizer
        loop = _Loop(ctx, data, mechanisms, optimizer, base, layout=layout, on_epoch=on_epoch)

        # training phase: epochs on the schedule, until they run out or a mechanism stops it
        ctx.warmup = snapshot(ctx.protected) if cfg.warmup_epochs == 0 else None
        for epoch in range(1, cfg.epochs + 1):
            loop.run_epoch(epoch)
            if epoch == cfg.warmup_epochs:
                ctx.warmup = snapshot(ctx.protected)
            stop = any([m.should_stop(ctx) for m in mechanisms])  # every one sees every epoch
            if epoch in rungs:
                was_training = model.training
                yield epoch
                model.train(was_training)
            if stop:
                break

        # the weights the training phase ends with: the defense's (early stopping's best
        # epoch), then the operator's, computed from those (rewind's interpolation)
        _load(model, guard.end_training(ctx))
        if ctx.warmup is None:  # ended during the warm-up: the operators never acted
            ctx.warmup = snapshot(ctx.protected)
        _load(model, operator.end_training(ctx))

        # fine-tune phase, when the operator declares one (rewind)
        tune = operator.fine_tune(ctx)
        if tune is not None:
            loop.fine_tune(tune)
    finally:
        for m in mechanisms:
            m.detach(ctx)

    extras: dict[str, float] = {"torch_threads": float(torch.get_num_threads())}  # pptp/threads.py
    for m in mechanisms:
        extras.update(m.summary())
    history = tuple(loop.history)
    return TrainResult(
        history=history,
        test_acc=evaluate(model, data.x_test, data.y_test),
        train_acc=evaluate(model, data.x, data.y),
        epochs_run=len(history),
        train_seconds=loop.seconds,
        images_per_second=len(history) * len(members) / max(loop.seconds, 1e-9),
        protected_groups=ctx.protected_groups,
        mask=dict(part.mask) if part is not None else {},
        extras=extras,
    )


def _prepare(
    model: nn.Module, pool: Pool, device: torch.device, mechanisms: Mapping[str, Mechanism]
) -> torch.memory_format:
    """Move the model to the device and its training layout (returned); refuse BatchNorm for
    per-example gradients. channels_last is faster, but Opacus' per-sample convolutions need
    NCHW (:attr:`~pptp.hooks.Needs.nchw`)."""
    model.to(device)
    nchw = any(m.needs.nchw for m in mechanisms.values())
    layout = torch.contiguous_format if nchw else torch.channels_last
    if pool.x.dim() == 4:
        model.to(memory_format=layout)
    for name, m in mechanisms.items():
        if m.needs.per_example_grads:
            kind = "operator" if isinstance(m, Operator) else "defense"
            refuse_batchnorm(model, f"{kind} {name!r}")
    return layout


def _context(
    model: nn.Module,
    part: Partition | None,
    cfg: TrainConfig,
    device: torch.device,
    *,
    n_members: int,
) -> TrainContext:
    """The shared state: the protected / free partition (everything free without a
    selection), the step counts and the mechanisms' random streams."""
    protected = set(part.protected) if part is not None else set()
    params = dict(model.named_parameters())
    return TrainContext(
        model=model,
        cfg=cfg,
        device=device,
        protected={n: p for n, p in params.items() if n in protected},
        free={n: p for n, p in params.items() if n not in protected},
        protected_groups=part.protected_groups if part is not None else (),
        n_members=n_members,
        steps_per_epoch=math.ceil(n_members / cfg.batch_size),
        generator=_generator(device, cfg.seed, _OPERATOR_STREAM),
        defense_generator=_generator(device, cfg.seed, _DEFENSE_STREAM),
    )


@dataclass(frozen=True)
class _Data:
    """The members ``x: (n, C, H, W)``, ``y: (n,)``, the test set and (only when a mechanism
    needs it) the validation set, on the training device."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    flip: bool
    crops: bool = True  # a table's (n, F, 1, 1) vectors are never cropped

    @classmethod
    def of(
        cls,
        pool: Pool,
        members: np.ndarray,
        device: torch.device,
        mechanisms: tuple[Mechanism, ...],
    ) -> _Data:
        validation = any(m.needs.validation for m in mechanisms)
        return cls(
            x=pool.x[torch.as_tensor(members, device=pool.x.device)].to(device),
            y=pool.y[torch.as_tensor(members, device=pool.y.device)].to(device),
            x_test=pool.x_test.to(device),
            y_test=pool.y_test.to(device),
            x_val=pool.x_val.to(device) if validation else None,
            y_val=pool.y_val.to(device) if validation else None,
            flip=pool.flip,
            crops=not pool.table,
        )


class _Loop:
    """Epochs and steps of both phases: the data order, augmentation, the learning rate, the
    per-step protocol of :mod:`pptp.hooks`, evaluation and the epoch log."""

    def __init__(
        self,
        ctx: TrainContext,
        data: _Data,
        mechanisms: tuple[Mechanism, ...],
        optimizer: torch.optim.Optimizer,
        base: torch.optim.Optimizer,
        *,
        layout: torch.memory_format,
        on_epoch: Callable[[EpochLog], None] | None,
    ) -> None:
        cfg = ctx.cfg
        self.ctx, self.data, self.mechanisms, self.on_epoch = ctx, data, mechanisms, on_epoch
        self.optimizer = optimizer  # what step() is called on (DP-SGD: Opacus' wrapper)
        self.base = base  # the SGD inside it: learning rates, momentum state
        self.layout = layout
        self.forward = _compiled(ctx.model, cfg, ctx.device)
        self.data_gen = torch.Generator().manual_seed(_seed(cfg.seed, _DATA_STREAM))
        self.aug_gen = _generator(ctx.device, cfg.seed, _AUG_STREAM)
        self.total_steps = cfg.epochs * ctx.steps_per_epoch  # the schedule's length
        self.step = 0
        self.history: list[EpochLog] = []
        self.seconds = 0.0
        losses = [m for m in mechanisms if m.needs.loss]
        if len(losses) > 1:
            raise ConfigError("only one of the operator and the defense may replace the loss")
        self.custom_loss = losses[0].loss if losses else None

    def run_epoch(self, epoch: int) -> None:
        """One training-phase epoch: the scheduled lr times each group's mechanism factors."""
        self.ctx.epoch = epoch
        scales = {}
        for protected in (False, True):
            scales[protected] = math.prod(
                m.lr_scale(self.ctx, protected=protected) for m in self.mechanisms
            )

        def lr_of(group: dict[str, object]) -> float:
            return (
                scheduled_lr(self.ctx.cfg, self.step, self.total_steps)
                * scales[bool(group.get("protected"))]
            )

        self._epoch(lr_of)

    def fine_tune(self, tune: FineTune) -> None:
        """The fine-tune phase: frozen parameters, constant lr, fresh momentum, same optimizer."""
        ctx = self.ctx
        frozen = [p for n in tune.frozen if (p := ctx.model.get_parameter(n)).requires_grad]
        try:
            for p in frozen:
                p.requires_grad_(False)
            self.base.state.clear()  # fresh momentum
            ctx.phase = "finetune"
            for m in self.mechanisms:
                m.start_phase(ctx)
            first = ctx.epoch + 1
            for epoch in range(first, first + tune.epochs):
                ctx.epoch = epoch
                self._epoch(lambda group: tune.lr)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _epoch(self, lr_of: Callable[[dict[str, object]], float]) -> None:
        ctx, data = self.ctx, self.data
        ctx.model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=ctx.device)
        correct = torch.zeros((), device=ctx.device, dtype=torch.long)
        lr = float("nan")
        # the epoch's permutation moves to the data's device once, not one copy per step
        order = batches(len(data.y), ctx.cfg.batch_size, generator=self.data_gen, device=ctx.device)
        for idx in order:
            x, y = data.x[idx], data.y[idx]
            if ctx.cfg.augment:
                pad = ctx.cfg.crop_pad if data.crops else 0
                x = augment(x, generator=self.aug_gen, crop_pad=pad, flip=data.flip)
            for g in self.base.param_groups:
                g["lr"] = lr_of(g)
            lr = float(self.base.param_groups[0]["lr"])
            if x.dim() == 4:
                x = x.contiguous(memory_format=self.layout)
            batch_loss, batch_correct = self._step(x, y)
            loss_sum += batch_loss
            correct += batch_correct
            self.step += 1
        mean_loss = loss_sum.item() / len(data.y)  # waits for the device: the epoch's real end
        seconds = time.perf_counter() - start
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"training loss is {mean_loss} at epoch {ctx.epoch}")
        self.seconds += seconds
        self._log(mean_loss, correct.item() / len(data.y), lr, seconds)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on ``x: (B, C, H, W)``, ``y: (B,)``; returns the summed loss
        and the number of correct predictions (0-dim tensors, no sync)."""
        ctx, batch = self.ctx, len(y)
        ctx.batch_size = batch
        chunk = min(m.chunk_size(ctx, batch) for m in self.mechanisms)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=ctx.device)
        correct = torch.zeros((), device=ctx.device, dtype=torch.long)
        for start in range(0, batch, chunk):
            end = start + chunk
            xc, yc = (x, y) if chunk >= batch else (x[start:end], y[start:end])
            with autocast(ctx.device, enabled=ctx.cfg.bf16):
                logits = self.forward(xc)
                loss = self._loss(logits.float(), yc)
            # the chunks' gradients add up to the batch mean's (chunks only for per-example loss)
            (loss if chunk >= batch else loss * (len(yc) / batch)).backward()
            for m in self.mechanisms:
                m.after_backward(ctx)
            loss_sum += loss.detach() * len(yc)
            correct += (logits.detach().argmax(1) == yc).sum()
        for m in self.mechanisms:
            m.before_step(ctx)
        self.optimizer.step()
        return loss_sum, correct

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.custom_loss(self.ctx, logits, y) if self.custom_loss is not None else None
        return loss if loss is not None else nn.functional.cross_entropy(logits, y)

    def _log(self, loss: float, train_acc: float, lr: float, seconds: float) -> None:
        ctx, data = self.ctx, self.data
        test_acc = evaluate(ctx.model, data.x_test, data.y_test)
        if data.x_val is not None and data.y_val is not None:
            ctx.val_acc = evaluate(ctx.model, data.x_val, data.y_val)
        log = EpochLog(ctx.epoch, loss, train_acc, test_acc, ctx.val_acc, lr, seconds, ctx.phase)
        self.history.append(log)
        if self.on_epoch is not None:
            self.on_epoch(log)
        logger.info(
            "epoch %3d/%d%s  loss %.4f  train_acc %.4f  test_acc %.4f%s  %.1fs",
            ctx.epoch,
            ctx.cfg.epochs,
            "" if ctx.phase == "train" else f" ({ctx.phase})",
            loss,
            train_acc,
            test_acc,
            f"  val_acc {ctx.val_acc:.4f}" if ctx.val_acc is not None else "",
            seconds,
        )


def _load(model: nn.Module, weights: Mapping[str, torch.Tensor] | None) -> None:
    """Copy ``weights`` (``state_dict`` names, all or some) into the model in place."""
    if weights is None:
        return
    state = model.state_dict()
    with torch.no_grad():
        for name, value in weights.items():
            state[name].copy_(value)


def _check_recipe(cfg: TrainConfig, n_members: int) -> None:
    problems = [
        (cfg.epochs < 1, f"train.epochs = {cfg.epochs} must be >= 1"),
        (cfg.batch_size < 1, f"train.batch_size = {cfg.batch_size} must be >= 1"),
        (cfg.lr <= 0, f"train.lr = {cfg.lr} must be > 0"),
        (
            not 0 <= cfg.warmup_epochs <= cfg.epochs,
            f"train.warmup_epochs = {cfg.warmup_epochs} must be in [0, train.epochs]",
        ),
        (
            cfg.schedule not in SCHEDULES,
            f"train.schedule = {cfg.schedule!r}; known: {', '.join(SCHEDULES)}",
        ),
        (cfg.crop_pad < 0, f"train.crop_pad = {cfg.crop_pad} must be >= 0"),
        (n_members < 1, "the member set is empty"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(message)


def _seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _generator(device: torch.device, seed: int, stream: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_seed(seed, stream))


def _compiled(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    if cfg.compile and device.type == "cuda":
        return torch.compile(model)  # type: ignore[return-value]
    return model
