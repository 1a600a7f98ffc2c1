"""The one training loop: plain training, every protection operator and every baseline defense.

Read top to bottom: seed, partition the parameters into protected and free optimizer groups, build
the operator's and the defense's hooks (:mod:`pptp.hooks`), then epochs of device-side batches
(sliced from the in-memory pool and augmented on the device, no DataLoader, no per-sample Python),
one log line per epoch. On CUDA the forward runs under bf16 autocast; channels_last is used for
image inputs on every device (on 2 CPU cores it trains a small CNN about 1.4x faster,
STACK-NOTES.md), and ``train.compile`` wraps the model in ``torch.compile`` on CUDA.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pptp.config import DataConfig, DefenseConfig, ModelConfig, ProtectConfig, TrainConfig
from pptp.data import Pool, augment, batches, load_raw, make_pool
from pptp.defenses import build_defense
from pptp.device import autocast, channels_last, resolve_device
from pptp.errors import ConfigError
from pptp.hooks import TrainContext, TrainingHooks, default_loss, snapshot
from pptp.layers import Selection, partition
from pptp.models import create_model
from pptp.operators import build_operator

logger = logging.getLogger(__name__)

#: offsets that give the data order, augmentation and operators independent random streams
_DATA_STREAM, _AUG_STREAM, _OPERATOR_STREAM = 0, 1, 2


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float  # mean training loss over the epoch's batches (augmented inputs)
    train_acc: float  # accuracy on the epoch's augmented training batches
    test_acc: float
    val_acc: float | None
    lr: float  # the scheduled learning rate at the epoch's last step
    seconds: float  # training time of the epoch, evaluation excluded


@dataclass(frozen=True)
class TrainResult:
    history: tuple[EpochLog, ...]
    test_acc: float  # final model on the pool's held-out test set
    train_acc: float  # final model on its own members, no augmentation
    epochs_run: int
    train_seconds: float  # all epochs, fine-tuning included, evaluation excluded
    images_per_second: float
    protected_groups: tuple[str, ...]
    mask: dict[str, bool]  # group -> protected
    extras: dict[str, float] = field(default_factory=dict)  # e.g. epsilon (dpsgd)


def build_model(cfg: ModelConfig, pool: Pool, *, seed: int) -> nn.Module:
    """The model for ``pool``'s input shape and classes, initialised from ``seed``."""
    torch.manual_seed(seed)
    _, channels, height, _ = pool.x.shape
    return create_model(
        cfg.name,
        num_classes=pool.num_classes,
        in_channels=channels,
        image_size=height,
        width=cfg.width,
        norm=cfg.norm,
    )


def build_pool(cfg: DataConfig, *, device: torch.device | str = "cpu") -> Pool:
    """The pool a data config names (raw datasets are cached in-process by :mod:`pptp.data`)."""
    return make_pool(
        cfg.name,
        seed=cfg.seed,
        pool_size=cfg.pool_size,
        test_size=cfg.test_size,
        val_size=cfg.val_size,
        image_size=cfg.image_size,
        data_dir=cfg.data_dir,
        download=cfg.download,
        device=device,
    )


def check_data(cfg: DataConfig) -> None:
    """Load the raw dataset once (it is cached): a missing dataset stops here, clearly, before
    anything trains (:class:`~pptp.errors.DataUnavailableError` names the folder and layout)."""
    load_raw(cfg.name, data_dir=cfg.data_dir, download=cfg.download)


def selection_of(cfg: ProtectConfig) -> Selection | None:
    """The layer selection a protect config names, or None when it names none."""
    if cfg.split is None and cfg.groups is None and cfg.patterns is None:
        return None
    return Selection.from_config(
        split=cfg.split, direction=cfg.direction, groups=cfg.groups, patterns=cfg.patterns
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024
) -> float:
    """Accuracy of ``model`` (eval mode) on ``x: (n, C, H, W)``, ``y: (n,)``."""
    if len(y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for start in range(0, len(y), batch_size):
        with autocast(x.device):
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
    """Train ``model`` in place on ``pool.x[members]``.

    ``members: (n_members,)`` indices into the pool (e.g. ``np.flatnonzero(pool.keep(1)[0])``).
    The protect config picks the protected groups and the operator; the defense config adds a
    baseline defense. Everything random is seeded from ``cfg.seed``. ``on_epoch`` receives each
    epoch's log as soon as it is measured (trackers stream curves through it).
    """
    protect = protect or ProtectConfig()
    defense = defense or DefenseConfig()
    device = device or resolve_device(cfg.device)
    _check_recipe(cfg, len(members))
    model.to(device)
    if pool.x.dim() == 4:
        model.to(memory_format=torch.channels_last)
    x_members = pool.x[torch.as_tensor(members, device=pool.x.device)].to(device)
    y_members = pool.y[torch.as_tensor(members, device=pool.y.device)].to(device)
    x_test, y_test = pool.x_test.to(device), pool.y_test.to(device)

    selection = selection_of(protect)
    part = partition(model, selection) if selection is not None else None
    params = dict(model.named_parameters())
    protected_names = set(part.protected) if part is not None else set()
    protected = {n: p for n, p in params.items() if n in protected_names}
    free = {n: p for n, p in params.items() if n not in protected_names}

    hooks: list[TrainingHooks] = [build_operator(protect), build_defense(defense)]
    groups = [
        {"params": list(free.values()), "protected": False, "lr_scale": 1.0},
        {"params": list(protected.values()), "protected": True, "lr_scale": 1.0},
    ]
    for g in groups:
        for h in hooks:
            g.update(h.param_group_overrides(protected=bool(g["protected"])))
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    steps_per_epoch = math.ceil(len(members) / cfg.batch_size)
    ctx = TrainContext(
        model=model,
        optimizer=optimizer,
        cfg=cfg,
        device=device,
        protected=protected,
        free=free,
        protected_groups=part.protected_groups if part is not None else (),
        n_members=len(members),
        steps_per_epoch=steps_per_epoch,
        generator=_generator(device, cfg.seed, _OPERATOR_STREAM),
    )
    if cfg.warmup_epochs == 0:
        ctx.warmup = snapshot(protected)
    loss_hooks = [h for h in hooks if type(h).loss is not TrainingHooks.loss]
    if len(loss_hooks) > 1:
        raise ConfigError("only one of the operator and the defense may replace the loss")
    custom_loss = loss_hooks[0].loss if loss_hooks else None

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = custom_loss(ctx, logits, y) if custom_loss is not None else None
        return loss if loss is not None else default_loss(ctx, logits, y)
    needs_val = any(h.needs_validation for h in hooks)
    for h in hooks:
        h.setup(ctx)
    forward = _compiled(model, cfg, device)

    data_gen = torch.Generator().manual_seed(_seed(cfg.seed, _DATA_STREAM))
    aug_gen = _generator(device, cfg.seed, _AUG_STREAM)
    total_steps = cfg.epochs * steps_per_epoch
    step = 0
    history: list[EpochLog] = []
    train_seconds = 0.0

    def run_epoch(epoch: int) -> tuple[float, float, float, float]:
        """One pass over the members; returns (mean loss, accuracy, seconds, last lr)."""
        nonlocal step
        ctx.epoch = epoch
        model.train()
        scheduled = epoch <= cfg.epochs  # rewind's fine-tuning keeps its optimizer's own lr
        scales = {bool(g.get("protected")): 1.0 for g in ctx.optimizer.param_groups}
        for prot in scales:
            for h in hooks:
                scales[prot] *= h.lr_scale(ctx, protected=prot)
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        lr = float(ctx.optimizer.param_groups[0]["lr"])
        for idx in batches(len(members), cfg.batch_size, generator=data_gen):
            idx = idx.to(device)
            x, y = x_members[idx], y_members[idx]
            if cfg.augment:
                x = augment(x, generator=aug_gen, crop_pad=cfg.crop_pad, flip=pool.flip)
            x = channels_last(x)
            if scheduled:
                lr = _scheduled_lr(cfg, step, total_steps)
                for g in ctx.optimizer.param_groups:
                    g["lr"] = lr * scales[bool(g.get("protected"))]
            with autocast(device, enabled=cfg.bf16):
                logits = forward(x)
                loss = loss_fn(logits.float(), y)
                for h in hooks:
                    extra = h.penalty(ctx)
                    if extra is not None:
                        loss = loss + extra
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for h in hooks:
                h.after_backward(ctx, x, y)
            ctx.optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            step += 1
        seconds = time.perf_counter() - start
        mean_loss = loss_sum.item() / len(members)
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"training loss is {mean_loss} at epoch {epoch}")
        return mean_loss, correct.item() / len(members), seconds, lr

    def epoch_and_log(epoch: int) -> None:
        nonlocal train_seconds
        mean_loss, train_acc, seconds, lr = run_epoch(epoch)
        train_seconds += seconds
        if epoch == cfg.warmup_epochs:
            ctx.warmup = snapshot(protected)
        test_acc = evaluate(model, x_test, y_test)
        ctx.val_acc = (
            evaluate(model, pool.x_val.to(device), pool.y_val.to(device)) if needs_val else None
        )
        history.append(EpochLog(epoch, mean_loss, train_acc, test_acc, ctx.val_acc, lr, seconds))
        if on_epoch is not None:
            on_epoch(history[-1])
        logger.info(
            "epoch %3d/%d  loss %.4f  train_acc %.4f  test_acc %.4f%s  %.1fs",
            epoch,
            cfg.epochs,
            mean_loss,
            train_acc,
            test_acc,
            f"  val_acc {ctx.val_acc:.4f}" if ctx.val_acc is not None else "",
            seconds,
        )

    ctx.run_epoch = epoch_and_log  # lets rewind fine-tune through the same loop
    for epoch in range(1, cfg.epochs + 1):
        epoch_and_log(epoch)
        if any([h.end_epoch(ctx) for h in hooks]):
            break
    for h in hooks:
        h.finish(ctx)
    extras: dict[str, float] = {}
    for h in hooks:
        extras.update(h.summary())
    return TrainResult(
        history=tuple(history),
        test_acc=evaluate(model, x_test, y_test),
        train_acc=evaluate(model, x_members, y_members),
        epochs_run=len(history),
        train_seconds=train_seconds,
        images_per_second=len(history) * len(members) / max(train_seconds, 1e-9),
        protected_groups=ctx.protected_groups,
        mask=dict(part.mask) if part is not None else {},
        extras=extras,
    )


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
            cfg.schedule not in _SCHEDULES,
            f"train.schedule = {cfg.schedule!r}; known: {', '.join(_SCHEDULES)}",
        ),
        (cfg.crop_pad < 0, f"train.crop_pad = {cfg.crop_pad} must be >= 0"),
        (n_members < 1, "the member set is empty"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(message)


_SCHEDULES = {
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    "constant": lambda t: 1.0,
}


def _scheduled_lr(cfg: TrainConfig, step: int, total: int) -> float:
    return cfg.lr * _SCHEDULES[cfg.schedule](step / max(total, 1))


def _seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _generator(device: torch.device, seed: int, stream: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_seed(seed, stream))


def _compiled(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    if cfg.compile and device.type == "cuda":
        return torch.compile(model)  # type: ignore[return-value]
    return model
