"""A localisation's result: per-group scores over seeds, saved as JSON with the identity of the
model and data it belongs to (never pickle), and the check that a study's config matches it."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pptp.config import TrialConfig
from pptp.digests import config_digest
from pptp.errors import ConfigError
from pptp.fileio import atomic_write

logger = logging.getLogger(__name__)

FORMAT = "pptp.localization"
VERSION = 1

#: config keys that say which data and which model a localisation belongs to
IDENTITY_KEYS = (
    "data.name",
    "data.seed",
    "data.pool_size",
    "data.test_size",
    "data.val_size",
    "data.image_size",
    "model.name",
    "model.width",
    "model.norm",
)

#: train keys left out of the recipe digest: the seed is set per localisation seed, the rest only
#: says where and how fast the recipe runs
NOT_RECIPE = ("seed", "device", "compile")


@dataclass(frozen=True)
class GroupScore:
    """One layer group's scores over seeds (``per_seed_*`` in the order of the result's seeds).

    ``privacy_risk``: the swapped-group log-ratio (module docstring), the ranked score;
    ``risk_at_output``: the log-ratio of A's and B's outputs at the group (cumulative, context);
    ``generalization``: test-accuracy drop (a fraction: 0.12 = 12 points) when the group is reset
    to its warm-up weights. ``distance_d1/d2/held_out``: per seed, the mean swapped-group
    distances on D1, D2 and held-out behind the risk.
    """

    group: str
    privacy_risk_mean: float
    privacy_risk_std: float
    generalization_mean: float
    generalization_std: float
    risk_at_output_mean: float
    risk_at_output_std: float
    per_seed_privacy_risk: tuple[float, ...]
    per_seed_generalization: tuple[float, ...]
    per_seed_risk_at_output: tuple[float, ...]
    distance_d1: tuple[float, ...]
    distance_d2: tuple[float, ...]
    distance_held_out: tuple[float, ...]


@dataclass(frozen=True)
class LocalizationResult:
    """Per-group privacy risk and generalization of one model on one dataset.

    ``groups`` are in model (forward) order. ``config`` is the flat base config the models were
    trained with (``train.seed`` as given; each seed overrides it). ``test_acc_a``/``_b`` per
    seed; ``sizes``: number of examples in ``D``, ``D1``, ``D2`` and ``H`` and how many of each
    were scored.
    """

    model: str
    dataset: str
    config: dict[str, Any] = field(compare=True, hash=False)
    recipe_digest: str
    seeds: tuple[int, ...]
    groups: tuple[GroupScore, ...]
    test_acc_a: tuple[float, ...]
    test_acc_b: tuple[float, ...]
    sizes: dict[str, int] = field(compare=True, hash=False)
    seconds: float = 0.0
    distance: str = "l2 / (|fA| + |fB|)"
    generalization_method: str = "warmup_reset"

    @property
    def identity(self) -> dict[str, Any]:
        """The :data:`IDENTITY_KEYS` of :attr:`config`."""
        return {k: self.config.get(k) for k in IDENTITY_KEYS}

    def ranked(self, k: int | None = None) -> tuple[GroupScore, ...]:
        """Groups by privacy risk, highest first (ties keep model order); the first ``k``."""
        order = sorted(self.groups, key=lambda g: -g.privacy_risk_mean)
        return tuple(order if k is None else order[:k])

    def rank(self, group: str) -> int:
        """1 for the riskiest group."""
        names = [g.group for g in self.ranked()]
        if group not in names:
            raise ConfigError(f"no layer group {group!r}; groups: {', '.join(names)}")
        return names.index(group) + 1

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per group, in model order (the CSV's rows)."""
        rows = []
        for g in self.groups:
            rows.append(
                {
                    "group": g.group,
                    "rank": self.rank(g.group),
                    "privacy_risk_mean": g.privacy_risk_mean,
                    "privacy_risk_std": g.privacy_risk_std,
                    "generalization_mean": g.generalization_mean,
                    "generalization_std": g.generalization_std,
                    "risk_at_output_mean": g.risk_at_output_mean,
                    "risk_at_output_std": g.risk_at_output_std,
                    "distance_d1": float(np.mean(g.distance_d1)),
                    "distance_d2": float(np.mean(g.distance_d2)),
                    "distance_held_out": float(np.mean(g.distance_held_out)),
                }
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {"format": FORMAT, "version": VERSION, **_lists(data)}

    def save(self, path: str | Path) -> Path:
        """Write JSON to ``path`` atomically (:func:`pptp.fileio.atomic_write`)."""
        return atomic_write(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], *, source: str = "localization"
    ) -> LocalizationResult:
        """Inverse of :meth:`to_json`; anything else is a ConfigError naming ``source``."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ConfigError(
                f'{source} is not a localisation result (no "format": "{FORMAT}"); give the '
                "localization.json that search/localize.py wrote"
            )
        if data.get("version") != VERSION:
            raise ConfigError(
                f"{source} has localisation format version {data.get('version')!r}; this code "
                f"reads version {VERSION}: re-run search/localize.py"
            )
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            body = {k: v for k, v in data.items() if k in fields}
            body["groups"] = tuple(
                GroupScore(**{k: _tuples(v) for k, v in g.items()}) for g in data["groups"]
            )
            body["seeds"] = tuple(int(s) for s in data["seeds"])
            for key in ("test_acc_a", "test_acc_b"):
                body[key] = tuple(float(v) for v in data[key])
            return cls(**body)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{source} is not a valid localisation result ({err})") from None

    @classmethod
    def load(cls, path: str | Path) -> LocalizationResult:
        """Read what :meth:`save` wrote; a missing or malformed file is a ConfigError."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"no localisation result at {path.absolute()}; run `python search/localize.py "
                "--space <space>` first and point study.localization.run at its localization.json"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ConfigError(f"cannot read localisation result {path} ({err})") from None
        return cls.from_json(data, source=str(path))


def _lists(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def recipe_digest(cfg: TrialConfig) -> str:
    """Hash of the training recipe, without the seed and where it runs (:data:`NOT_RECIPE`)."""
    recipe = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in NOT_RECIPE}
    return config_digest(recipe)


def check_matches(
    result: LocalizationResult, cfg: TrialConfig, *, source: str = "localization"
) -> None:
    """Raise :class:`ConfigError` naming every identity key where ``result`` and ``cfg`` differ.

    Identity = :data:`IDENTITY_KEYS` (dataset, pool seed and sizes, image size, model name,
    width and norm). A different training recipe only logs a warning: the localisation still
    describes the same model on the same data, trained a little differently.
    """
    flat = cfg.to_flat()
    diffs = [
        f"{k} = {result.config.get(k)!r} there, {flat[k]!r} here"
        for k in IDENTITY_KEYS
        if _normal(result.config.get(k)) != _normal(flat[k])
    ]
    if diffs:
        raise ConfigError(
            f"{source} belongs to another model or dataset: {'; '.join(diffs)}. Run "
            "search/localize.py with this space to localise this model"
        )
    if result.recipe_digest != recipe_digest(cfg):
        changed = [
            k
            for k, v in flat.items()
            if k.startswith("train.")
            and k.partition(".")[2] not in NOT_RECIPE
            and _normal(result.config.get(k)) != _normal(v)
        ]
        logger.warning(
            "%s was measured with another training recipe (%s differ); using it anyway",
            source,
            ", ".join(changed) or "digest",
        )


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
