"""Protection operators: strength 0 is plain training bit for bit, through each operator's own
code (also beside a defense); the strength axis is continuous at 0 (noise: documented jump); free
parameters follow the unchanged optimizer; what each operator does, it does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pptp import per_example
from pptp.config import DefenseConfig, ModelConfig, ProtectConfig, TrainConfig
from pptp.data import Pool
from pptp.errors import ConfigError
from pptp.models import build_model
from pptp.operators import OPERATORS, build_operator
from pptp.selection import Selection, partition
from pptp.train import EpochLog, TrainResult, train

MODEL = ModelConfig(name="small_cnn", width=4, norm="group")
SELECTION = {"split": 2, "direction": "prefix"}  # block1, block2 protected
DEFENSES_FOR_ZERO = ("none", "early_stopping", "dpsgd")


def recipe(**changes: object) -> TrainConfig:
    base = TrainConfig(epochs=2, batch_size=64, lr=0.05, warmup_epochs=1, crop_pad=1, seed=3)
    return dataclasses.replace(base, **changes)


def members(pool: Pool, n: int = 128) -> np.ndarray:
    return np.flatnonzero(pool.keep(1)[0])[:n]


def trained(
    pool: Pool,
    cfg: TrainConfig,
    protect: ProtectConfig | None = None,
    defense: DefenseConfig | None = None,
    n: int = 128,
) -> dict[str, torch.Tensor]:
    model = build_model(MODEL, pool, seed=cfg.seed)
    train(model, pool, members(pool, n), cfg, protect=protect, defense=defense)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def protected_names(pool: Pool, selection: dict[str, object] = SELECTION) -> set[str]:
    model = build_model(MODEL, pool, seed=0)
    return set(partition(model, Selection.from_config(**selection)).protected)


def param_names(pool: Pool) -> set[str]:
    return {n for n, _ in build_model(MODEL, pool, seed=0).named_parameters()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# --------------------------------------------------------------------------------------------
# strength 0 and the strength axis


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_strength_zero_builds_the_operators_own_class(name: str) -> None:
    op = build_operator(ProtectConfig(operator=name, strength=0.0, **SELECTION))
    assert type(op) is OPERATORS[name]


ZERO_CASES = [
    (o, d) for o in sorted(OPERATORS) for d in DEFENSES_FOR_ZERO if (o, d) != ("noise", "dpsgd")
]


@pytest.mark.parametrize(("name", "defense"), ZERO_CASES)
def test_strength_zero_is_plain_training_bit_for_bit(
    digits_pool: Pool, name: str, defense: str
) -> None:
    # 3 epochs, patience 1: early stopping restores an epoch; dpsgd draws its own noise stream
    cfg = recipe(epochs=3)
    guard = DefenseConfig(name=defense, patience=1)
    plain = trained(digits_pool, cfg, defense=guard)
    zero = trained(
        digits_pool,
        cfg,
        ProtectConfig(operator=name, strength=0.0, **SELECTION),
        guard,
    )
    assert plain.keys() == zero.keys()
    for key in plain:
        assert torch.equal(plain[key], zero[key]), key


# the operators whose effect fades in with s: a tiny strength is within a small tolerance of 0
CONTINUOUS = sorted(set(OPERATORS) - {"noise"})


@pytest.mark.parametrize("name", CONTINUOUS)
def test_tiny_strength_is_close_to_strength_zero(digits_pool: Pool, name: str) -> None:
    cfg = recipe(epochs=3)
    zero = trained(digits_pool, cfg, ProtectConfig(operator=name, strength=0.0, **SELECTION))
    tiny = trained(digits_pool, cfg, ProtectConfig(operator=name, strength=1e-6, **SELECTION))
    assert max_diff(zero, tiny) < 1e-4
    half = trained(digits_pool, cfg, ProtectConfig(operator=name, strength=0.5, **SELECTION))
    if name != "none":
        assert max_diff(zero, half) > 100 * max_diff(zero, tiny)  # the tolerance means something


def test_noise_at_tiny_strength_is_clipping_only(digits_pool: Pool) -> None:
    # the documented jump: at every s > 0 the per-example gradients are clipped, only sigma
    # scales with s, so s = 1e-6 equals clip-only training (sigma 0), not plain training
    cfg = recipe(epochs=3, warmup_epochs=0)
    clip = {"clip_norm": 0.05, **SELECTION}
    tiny = trained(digits_pool, cfg, ProtectConfig(operator="noise", strength=1e-6, **clip))
    clip_only = trained(
        digits_pool,
        cfg,
        ProtectConfig(operator="noise", strength=1.0, max_noise_multiplier=0.0, **clip),
    )
    zero = trained(digits_pool, cfg, ProtectConfig(operator="noise", strength=0.0, **clip))
    assert max_diff(tiny, clip_only) < 1e-4
    assert max_diff(tiny, zero) > 1e-2  # clipping at 0.05 changes training: the jump is real


@pytest.mark.parametrize("name", sorted(set(OPERATORS) - {"none"}))
def test_positive_strength_changes_the_protected_groups(digits_pool: Pool, name: str) -> None:
    cfg = recipe(epochs=3)
    plain = trained(digits_pool, cfg)
    protected = trained(digits_pool, cfg, ProtectConfig(operator=name, strength=0.8, **SELECTION))
    changed = [k for k in protected_names(digits_pool) if not torch.equal(plain[k], protected[k])]
    assert changed, f"operator {name} at strength 0.8 changed no protected parameter"


# --------------------------------------------------------------------------------------------
# free parameters follow the unchanged optimizer

# Each operator first acts at a known step; run until exactly that step so that the state before
# it is identical to plain training's. At that step the free parameters must get plain training's
# update exactly, while the protected ones differ. rewind acts after the training phase: with no
# fine-tuning, the free parameters are plain training's after every epoch.
# feature_noise is the exception, by design: its noise on a protected group's output reaches the
# free layers downstream through the forward pass (their gradients see the noisy features).
FIRST_ACTIVE_STEP = {
    "noise": (recipe(epochs=1, warmup_epochs=0, batch_size=128), {}),  # from the first step
    "damp": (recipe(epochs=2, warmup_epochs=1, batch_size=128), {}),  # first step after warm-up
    # anchor's pull is 0 at the warm-up weights: it first acts at the second step after warm-up
    "anchor": (recipe(epochs=2, warmup_epochs=1, batch_size=64), {}),
    "rewind": (recipe(epochs=3, warmup_epochs=1), {"finetune_epochs": 0}),
}


@pytest.mark.parametrize("name", sorted(FIRST_ACTIVE_STEP))
def test_free_parameters_get_plain_training_updates(digits_pool: Pool, name: str) -> None:
    cfg, extra = FIRST_ACTIVE_STEP[name]
    plain = trained(digits_pool, cfg)
    protect = ProtectConfig(operator=name, strength=0.7, **SELECTION, **extra)
    op = trained(digits_pool, cfg, protect)
    protected = protected_names(digits_pool)
    for key in param_names(digits_pool) - protected:
        assert torch.equal(plain[key], op[key]), f"{name} changed free parameter {key}"
    assert any(not torch.equal(plain[k], op[k]) for k in protected)


def test_feature_noise_reaches_free_layers_through_the_forward_pass(digits_pool: Pool) -> None:
    # the documented exception to the test above
    cfg = recipe(epochs=1, warmup_epochs=0, batch_size=128)
    plain = trained(digits_pool, cfg)
    noisy = trained(
        digits_pool, cfg, ProtectConfig(operator="feature_noise", strength=0.7, **SELECTION)
    )
    free = param_names(digits_pool) - protected_names(digits_pool)
    assert any(not torch.equal(plain[k], noisy[k]) for k in free)


# --------------------------------------------------------------------------------------------
# rewind


def train_with_snapshots(
    pool: Pool, cfg: TrainConfig, protect: ProtectConfig
) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]], TrainResult]:
    """Final weights, the weights after each epoch (both phases), and the result."""
    model = build_model(MODEL, pool, seed=cfg.seed)
    after: dict[int, dict[str, torch.Tensor]] = {}

    def keep(log: EpochLog) -> None:
        after[log.epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    result = train(model, pool, members(pool), cfg, protect=protect, on_epoch=keep)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, after, result


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_rewind_interpolates_toward_the_warmup_weights_then_fine_tunes(
    digits_pool: Pool, strength: float
) -> None:
    cfg = recipe(epochs=3, warmup_epochs=1)
    protect = ProtectConfig(operator="rewind", strength=strength, finetune_epochs=2, **SELECTION)
    final, after, result = train_with_snapshots(digits_pool, cfg, protect)
    phases = [log.phase for log in result.history]
    assert phases == ["train"] * 3 + ["finetune"] * 2
    # the fine-tune phase runs at its own constant lr, not on the cosine schedule
    assert [log.lr for log in result.history[3:]] == [strength * 0.1 * cfg.lr] * 2
    end, warm = after[3], after[1]
    for key in protected_names(digits_pool):  # frozen at the interpolation while fine-tuning
        assert torch.equal(final[key], end[key] * (1 - strength) + warm[key] * strength), key
    free = param_names(digits_pool) - protected_names(digits_pool)
    assert any(not torch.equal(final[k], end[k]) for k in free)  # the free groups fine-tuned
    if strength == 1.0:  # s = 1: exactly back at the warm-up weights
        assert all(torch.equal(final[k], warm[k]) for k in protected_names(digits_pool))


def test_rewind_at_strength_zero_has_no_fine_tune_phase(digits_pool: Pool) -> None:
    protect = ProtectConfig(operator="rewind", strength=0.0, finetune_epochs=2, **SELECTION)
    _, _, result = train_with_snapshots(digits_pool, recipe(epochs=2), protect)
    assert [log.phase for log in result.history] == ["train", "train"]


# --------------------------------------------------------------------------------------------
# noise


def test_noise_refuses_batchnorm(digits_pool: Pool) -> None:
    model = build_model(dataclasses.replace(MODEL, norm="batch"), digits_pool, seed=0)
    protect = ProtectConfig(operator="noise", strength=0.5, **SELECTION)
    with pytest.raises(ConfigError, match=r"operator 'noise' .* model\.norm: group"):
        train(model, digits_pool, members(digits_pool), recipe(epochs=1), protect=protect)


def one_step(**changes: object) -> TrainConfig:
    """One full-batch step from the initial weights: plain SGD, no momentum, no decay."""
    return recipe(
        epochs=1,
        warmup_epochs=0,
        batch_size=128,
        momentum=0.0,
        weight_decay=0.0,
        schedule="constant",
        augment=False,
        **changes,
    )


def test_noise_per_example_gradients_are_clipped(digits_pool: Pool) -> None:
    # with a tiny clip norm and no noise the protected update is bounded by lr * clip
    cfg = one_step()
    protect = ProtectConfig(
        operator="noise", strength=1.0, max_noise_multiplier=0.0, clip_norm=1e-3, **SELECTION
    )
    start = build_model(MODEL, digits_pool, seed=cfg.seed).state_dict()
    end = trained(digits_pool, cfg, protect)
    protected = protected_names(digits_pool)
    step = torch.cat([(end[n] - start[n]).flatten() for n in protected]).norm()
    assert 0 < step.item() <= cfg.lr * 1e-3 * 1.01


def test_noise_reaches_the_update_at_its_scale(digits_pool: Pool) -> None:
    # one step: the difference to clip-only training is -lr * N(0, sigma^2 C^2) / B per value
    cfg, sigma, clip, batch = one_step(), 2.0, 1.0, 128
    base = {"operator": "noise", "strength": 1.0, "clip_norm": clip, **SELECTION}
    quiet = trained(digits_pool, cfg, ProtectConfig(max_noise_multiplier=0.0, **base))
    noisy = trained(digits_pool, cfg, ProtectConfig(max_noise_multiplier=sigma, **base))
    protected = sorted(protected_names(digits_pool))
    diff = torch.cat([(noisy[n] - quiet[n]).flatten() for n in protected])
    expected = cfg.lr * sigma * clip / batch
    assert diff.numel() > 150
    assert abs(diff.std().item() / expected - 1) < 0.2
    assert abs(diff.mean().item()) < 4 * expected / diff.numel() ** 0.5
    free = param_names(digits_pool) - set(protected)
    assert all(torch.equal(noisy[k], quiet[k]) for k in free)


def test_noise_uses_the_loops_loss_per_example(digits_pool: Pool) -> None:
    # no clipping (huge C), no noise: the protected gradient is the mean of the per-example
    # gradients of the loop's own loss, here label smoothing, so training equals the defense alone
    cfg = recipe(epochs=2)
    smoothing = DefenseConfig(name="label_smoothing", label_smoothing=0.3)
    alone = trained(digits_pool, cfg, defense=smoothing)
    protect = ProtectConfig(
        operator="noise", strength=1.0, max_noise_multiplier=0.0, clip_norm=1e6, **SELECTION
    )
    both = trained(digits_pool, cfg, protect, smoothing)
    assert max_diff(alone, both) < 1e-5
    plain = trained(digits_pool, cfg, protect)  # without smoothing: visibly different
    assert max_diff(plain, both) > 1e-3


def test_noise_chunks_a_batch_within_the_memory_budget(
    digits_pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = recipe(epochs=2)
    protect = ProtectConfig(operator="noise", strength=0.5, split=2, direction="suffix")
    whole = trained(digits_pool, cfg, protect)
    monkeypatch.setattr(per_example, "MEMORY_BUDGET_BYTES", 40_000)
    sizes: list[int] = []
    size_of = per_example.chunk_size

    def spy(per_example_bytes: float, batch: int, *, budget: int) -> int:
        sizes.append(size_of(per_example_bytes, batch, budget=budget))
        return sizes[-1]

    monkeypatch.setattr(per_example, "chunk_size", spy)
    chunked = trained(digits_pool, cfg, protect)
    # the first step's estimate is the protected parameters' size per example (fp32); later
    # steps use the state measured per example (factors of the conv and linear layers: smaller)
    model = build_model(MODEL, digits_pool, seed=0)
    values = sum(
        model.get_parameter(n).numel() for n in partition(model, Selection.suffix(2)).protected
    )
    assert sizes[0] == 40_000 // (4 * values) < sizes[1]
    assert len(sizes) == 2 * 2 and max(sizes) < 64  # every step of 64 ran in chunks
    assert max_diff(whole, chunked) < 1e-5  # and the chunks add up to the batch


# --------------------------------------------------------------------------------------------
# feature_noise, bad input


def test_feature_noise_only_in_training_and_hooks_removed(digits_pool: Pool) -> None:
    cfg = recipe()
    model = build_model(MODEL, digits_pool, seed=0)
    protect = ProtectConfig(operator="feature_noise", strength=1.0, **SELECTION)
    train(model, digits_pool, members(digits_pool), cfg, protect=protect)
    assert all(not m._forward_hooks for m in model.modules())
    x = digits_pool.x[:16]
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_no_hook_or_attribute_is_left_behind(digits_pool: Pool, name: str) -> None:
    model = build_model(MODEL, digits_pool, seed=0)
    protect = ProtectConfig(operator=name, strength=0.5, **SELECTION)
    train(model, digits_pool, members(digits_pool), recipe(epochs=2), protect=protect)
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks, m
        assert not hasattr(m, "ft_compute_sample_grad")
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_strength_outside_unit_interval_is_an_error(strength: float) -> None:
    with pytest.raises(ConfigError, match=r"protect.strength"):
        build_operator(ProtectConfig(operator="damp", strength=strength))


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (ProtectConfig(operator="noise", strength=0.5, clip_norm=0.0), "protect.clip_norm"),
        (ProtectConfig(operator="rewind", strength=0.5, finetune_epochs=-1), "finetune_epochs"),
    ],
)
def test_bad_operator_config_names_the_key(cfg: ProtectConfig, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_operator(cfg)


def test_unknown_operator_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: anchor, damp, feature_noise, noise, none"):
        build_operator(ProtectConfig(operator="blur", strength=0.5))
