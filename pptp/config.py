"""The trial configuration: frozen dataclasses, built from a flat dict of dotted keys.

A trial is fully described by a :class:`TrialConfig`. At the YAML and Ray boundaries it travels as a
flat ``{"train.lr": 0.1, "protect.operator": "damp", ...}`` dict (:meth:`TrialConfig.from_flat`,
:meth:`TrialConfig.to_flat`); inside ``pptp`` it is typed. Unknown keys and wrong types are
:class:`~pptp.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from pptp.errors import ConfigError, quoted


class Params(Mapping[str, Any]):
    """An ordered, immutable, hashable ``name -> value`` map: ``model.kwargs`` and ``model.groups``.

    In flat dicts (space files, Ray, MLflow) each entry is its own dotted key
    (``model.kwargs.hidden: 64``, ``model.groups.features: [conv1, bn1]``), so an entry can be
    fixed or searched like any other key. Lists are kept as tuples; order is kept (group order is
    model order).
    """

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items: tuple[tuple[str, Any], ...] = tuple(
            (str(k), tuple(v) if isinstance(v, list) else v) for k, v in (items or {}).items()
        )

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Params):
            return self._items == other._items
        return isinstance(other, Mapping) and list(self.items()) == list(other.items())

    def __hash__(self) -> int:
        return hash(json.dumps(self._items, default=str))

    def __repr__(self) -> str:
        return f"Params({dict(self._items)!r})"

    def plain(self) -> dict[str, Any]:
        """JSON/YAML data: tuples as lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._items}


#: the keys whose value is a :class:`Params`, and the type of each entry's value
OPEN_KEYS: dict[str, Any] = {"model.kwargs": Any, "model.groups": tuple[str, ...]}


@dataclass(frozen=True)
class DataConfig:
    """Which pool: ``make_pool(name, seed=..., ...)``. Sizes are numbers of examples."""

    name: str = "digits"
    seed: int = 0
    pool_size: int | None = None  # None: everything left after test and val
    test_size: int = 297  # held-out test set (accuracy); digits: 1797 = 297 + 100 + 1400
    val_size: int = 100  # held-out validation set (early stopping)
    image_size: int | None = None  # resize, e.g. digits 8x8 -> 32x32
    data_dir: str = "data"
    download: bool = False
    # pool examples made canaries and audited on their own (pptp.canary_kinds; Aerni et al. 2024);
    # they change every model's training data, so the reference bank keys them
    canaries: int = 0
    canary_kind: str = "mislabeled"  # mislabeled | ood (noise images with random labels)
    label: str = "label"  # the label column of a table (data.name: table)


@dataclass(frozen=True)
class ModelConfig:
    """A registered model (``small_cnn``, ``torchvision.<name>``) or a user's factory named by
    import path (``package.module:factory`` or ``path/to/file.py:factory``, :mod:`pptp.own_model`),
    which gets the data's facts and ``kwargs``; ``groups`` declares a user model's layer groups
    (name -> parameter-name patterns, in model order)."""

    name: str = "small_cnn"
    width: int | None = None  # None: the model's default width
    norm: str = "batch"  # batch | group | none; per-example gradients need group or none
    kwargs: Params = field(default_factory=Params)
    groups: Params | None = None
    # a local checkpoint loaded before training (pptp.checkpoint): .safetensors, or a state dict
    # read with torch.load(weights_only=True); targets and references start from it
    init: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe shared by target and reference models."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5.0e-4
    schedule: str = "cosine"  # cosine | constant
    warmup_epochs: int = 2  # the "warm-up weights" that anchor/rewind/damp refer to
    augment: bool = True
    crop_pad: int = 4  # random-crop padding in pixels; 0 disables the crop
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile on CUDA
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU, where bf16 is slower)


@dataclass(frozen=True)
class ProtectConfig:
    """PPTP: which layer groups are protected, by which operator, at which strength in [0, 1].

    Selection: exactly one of ``split`` (+ ``direction``), ``groups`` or ``patterns``; none of
    them, or operator ``none``, is plain training. The per-operator knobs set the scale that
    strength 1 means; see :mod:`pptp.operators`.
    """

    operator: str = "none"
    strength: float = 0.0
    split: int | None = None
    direction: str = "prefix"  # prefix | suffix
    groups: tuple[str, ...] | None = None
    patterns: tuple[str, ...] | None = None
    clip_norm: float = 1.0  # noise: per-example clipping norm (applies at every strength > 0)
    max_noise_multiplier: float = 2.0  # noise: sigma at strength 1
    max_anchor: float = 1.0  # anchor: L2 coefficient at strength 1 (times n_protected_params^-1)
    max_feature_noise: float = 1.0  # feature_noise: noise std / feature std at strength 1
    finetune_epochs: int = 2  # rewind: fine-tuning epochs of the free groups (none at s = 0)


@dataclass(frozen=True)
class DefenseConfig:
    """A baseline defense in the same training loop (see :mod:`pptp.defenses`)."""

    name: str = "none"
    weight_decay: float = 5.0e-3  # weight_decay: replaces train.weight_decay
    label_smoothing: float = 0.1  # label_smoothing
    patience: int = 3  # early_stopping: epochs without val-accuracy gain
    noise_multiplier: float = 1.0  # dpsgd
    max_grad_norm: float = 1.0  # dpsgd
    delta: float = 1.0e-5  # dpsgd: the delta of (epsilon, delta)
    relaxloss_alpha: float = 0.5  # relaxloss: target loss level (Chen et al. 2022)
    # one knob in [0, 1] for every defense, as protect.strength is for operators: when set, it
    # replaces the defense's own knob above (pptp.defenses.resolve_strength says how); None: off
    strength: float | None = None


#: defense name -> the ``defense.*`` keys it reads besides ``strength`` (:mod:`pptp.defenses`):
#: what a trial's name shows for a baseline, so a searched key of another defense is not shown
DEFENSE_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "weight_decay": ("weight_decay",),
    "label_smoothing": ("label_smoothing",),
    "early_stopping": ("patience",),
    "dpsgd": ("noise_multiplier", "max_grad_norm", "delta"),
    "relaxloss": ("relaxloss_alpha",),
}


@dataclass(frozen=True)
class AttackConfig:
    """How the target is attacked (see :mod:`pptp.attacks`, :mod:`pptp.signals`, :mod:`pptp.bank`).

    ``attacks``: None chooses the strongest set for ``n_references``
    (:func:`pptp.attacks.defaults.attack_names`). ``query_augment``: None queries the models with
    the augmentations they trained with (:func:`pptp.signals.resolve_queries`); true/false force
    the augmented queries on or off.
    """

    attacks: tuple[str, ...] | None = None
    n_references: int = 4
    query_augment: bool | None = None
    bank_dir: str = "bank"
    adaptive: bool = False  # references trained with the trial's own protect/defense config
    # the one-run epsilon audit on the canaries (pptp.audit): confidence of eps_lb, and its delta
    # (None: defense.delta, the delta DP-SGD's accountant states its epsilon at)
    audit_confidence: float = 0.95
    audit_delta: float | None = None


@dataclass(frozen=True)
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protect: ProtectConfig = field(default_factory=ProtectConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)

    @classmethod
    def from_flat(cls, flat: typing.Mapping[str, Any], *, source: str = "config") -> TrialConfig:
        """Build from ``{"section.key": value}``; missing keys take defaults.

        ``source`` names where the dict came from (a file) in error messages.
        """
        sections: dict[str, dict[str, Any]] = {f.name: {} for f in dataclasses.fields(cls)}
        for key, value in flat.items():
            open_key = next((k for k in OPEN_KEYS if key.startswith(k + ".")), None)
            if open_key is not None:  # model.kwargs.hidden: one entry of a Params field
                section, _, name = open_key.partition(".")
                entry = key.removeprefix(open_key + ".")
                hint = OPEN_KEYS[open_key]
                entries = sections[section].setdefault(name, {})
                if not isinstance(entries, dict):
                    entries = sections[section][name] = dict(entries or {})
                entries[entry] = coerce(value, hint, key=key, source=source)
                continue
            section, _, name = key.partition(".")
            if section not in sections or not name:
                raise ConfigError(
                    f"{source}: unknown key {key!r}; keys look like 'section.name' with section "
                    f"one of {', '.join(sections)}"
                )
            sections[section][name] = value
        built = {}
        for f in dataclasses.fields(cls):
            sub = typing.get_type_hints(cls)[f.name]
            built[f.name] = _build_section(sub, sections[f.name], prefix=f.name, source=source)
        return cls(**built)

    def to_flat(self) -> dict[str, Any]:
        """The inverse of :meth:`from_flat`: every key, tuples as lists (JSON/YAML friendly)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            for sf in dataclasses.fields(section):
                v = getattr(section, sf.name)
                if isinstance(v, Params):  # one dotted key per entry (OPEN_KEYS)
                    out.update({f"{f.name}.{sf.name}.{k}": e for k, e in v.plain().items()})
                elif f"{f.name}.{sf.name}" in OPEN_KEYS and v is None:
                    continue
                else:
                    out[f"{f.name}.{sf.name}"] = list(v) if isinstance(v, tuple) else v
        return out

    def replace(self, **flat: Any) -> TrialConfig:
        """A copy with some dotted keys changed: ``cfg.replace(**{"train.seed": 3})``."""
        return TrialConfig.from_flat({**self.to_flat(), **flat})


class KeyHints(dict[str, Any]):
    """Dotted key -> type hint; also holds every entry of an open key (``model.kwargs.<name>``,
    ``model.groups.<name>``: :data:`OPEN_KEYS`), which are not listed."""

    @staticmethod
    def _open(key: object) -> str | None:
        if not isinstance(key, str):
            return None
        return next((k for k in OPEN_KEYS if key.startswith(k + ".") and key != k + "."), None)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or self._open(key) is not None

    def __missing__(self, key: str) -> Any:
        open_key = self._open(key)
        if open_key is None:
            raise KeyError(key)
        return OPEN_KEYS[open_key]


def config_keys() -> KeyHints:
    """Every dotted key of :class:`TrialConfig` with its type annotation (for space validation);
    ``model.kwargs`` and ``model.groups`` are given entry by entry (``model.kwargs.hidden``)."""
    keys = KeyHints()
    for f in dataclasses.fields(TrialConfig):
        sub = typing.get_type_hints(TrialConfig)[f.name]
        for sf, hint in typing.get_type_hints(sub).items():
            if f"{f.name}.{sf}" not in OPEN_KEYS:
                keys[f"{f.name}.{sf}"] = hint
    return keys


def coerce(value: Any, hint: Any, *, key: str, source: str = "config") -> Any:
    """Check ``value`` against a type hint; lists become tuples and ints become floats."""
    if hint is Any:  # a user factory's keyword argument: any plain YAML value
        return value
    if hint is Params or (
        typing.get_origin(hint) in (Union, types.UnionType) and Params in typing.get_args(hint)
    ):
        if value is None and hint is not Params:
            return None
        if isinstance(value, Params):
            return value
        if isinstance(value, Mapping):
            inner = OPEN_KEYS.get(key, Any)
            return Params(
                {k: coerce(v, inner, key=f"{key}.{k}", source=source) for k, v in value.items()}
            )
        raise ConfigError(f"{source}: {key} = {value!r} is not a mapping")
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key=key, source=source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {key} = {quoted(value)} is not {_a(_type_name(hint))}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key} = {quoted(value)} is not a list of strings")
        return tuple(coerce(v, typing.get_args(hint)[0], key=key, source=source) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            raise ConfigError(
                f"{source}: {key} = {quoted(value)} is a string, not a number (YAML 1.1 reads "
                "'1e-4' as a string: write 1.0e-4)"
            )
    elif hint is str and isinstance(value, str):
        return value
    raise ConfigError(f"{source}: {key} = {quoted(value)} is not {_a(_type_name(hint))}")


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "list of strings"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _build_section(cls: Any, values: dict[str, Any], *, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    for name in values:
        if name not in hints:
            raise ConfigError(
                f"{source}: unknown key '{prefix}.{name}'; {prefix} has {', '.join(hints)}"
            )
    kwargs = {
        name: coerce(v, hints[name], key=f"{prefix}.{name}", source=source)
        for name, v in values.items()
    }
    return cls(**kwargs)
