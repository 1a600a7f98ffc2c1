"""What a trial trained with, what kind of trial that makes it, and how it is named.

The one answer to "what did this trial do" that every name, table, figure and command reads:

==================  ================================================================
kind                what trained
==================  ================================================================
``undefended``      plain training: no operator acts and the defense is ``none``
``pptp``            a protection operator at strength > 0 on some layer groups
``baseline``        a classic defense (:mod:`pptp.defenses`) and no operator
``combined``        both
==================  ================================================================

An operator at strength 0 is plain training, bit for bit (:mod:`pptp.operators`), so a trial
that names one at strength 0 is undefended and shows no operator, strength or groups anywhere.
Labels use the model's own group names (``layer4+fc``), never the selection that chose them:

==========================================  ===============================================
``undefended``
``baseline relaxloss strength=0.31``        a baseline defense with its knobs
``noise s=0.46 block3-head``                an operator at strength s on the protected groups
                                            (a range ``first-last`` when they are a split
                                            selection of more than two groups, else ``+``)
``noise s=0.46 block3-head + dpsgd``        both
==========================================  ===============================================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pptp.config import DEFENSE_KEYS, ModelConfig, TrialConfig

# planned_groups imports torch and the model zoo where it runs: a trial's kind, label and record
# are read by every command (pick, compare, report, --help pages) that trains nothing, and torch
# alone takes 1.5-5 s to import on 2 cores.

if TYPE_CHECKING:
    from pptp.datasets import DataFacts

Kind = Literal["undefended", "pptp", "baseline", "combined"]
KINDS: tuple[Kind, ...] = ("undefended", "pptp", "baseline", "combined")

#: the Optuna user attribute (and run-record field) that holds :meth:`Treatment.to_data`
TREATMENT_ATTR = "treatment"
#: flat fields recorded beside it, for CSV columns and the MLflow UI's tag columns
FLAT_ATTRS = ("operator", "strength", "protected_groups", "defense")


def operator_acts(operator: str, strength: float) -> bool:
    """Whether a protection operator changes training: any operator but ``none`` at a strength
    above 0 (strength 0 is plain training, bit for bit)."""
    return operator != "none" and math.isfinite(strength) and strength > 0


def short_number(value: float) -> str:
    """A number in a label: 0.4562 -> 0.46, 3.0 -> 3, 1e-05 -> 1e-05."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}" if 0.01 <= abs(value) < 1000 else f"{value:.2g}"


def groups_label(groups: Sequence[str], *, consecutive: bool) -> str:
    """``block3-head`` for a split selection of more than two groups, ``block1+head``
    otherwise; ``groups`` in model order; one group is its name, none is ``-``."""
    names = [g for g in groups if g]
    if not names:
        return "-"
    if consecutive and len(names) > 2:
        return f"{names[0]}-{names[-1]}"
    return "+".join(names)


@dataclass(frozen=True)
class Treatment:
    """What one trial trained with.

    ``operator``/``strength``/``groups``: the PPTP protection, normalised so that an operator
    that does not act (``none``, or strength 0) is ``"none"``, 0.0 and no groups. ``groups``: the
    protected layer groups in model order (the model's own names). ``consecutive``: they were
    chosen as a split (``protect.split``), so a label may write them as a range. ``defense``: the
    baseline defense (``"none"`` for none) and ``knobs``: the values that set it, in the order
    given (``strength``, or its own keys such as ``noise_multiplier``).
    """

    operator: str = "none"
    strength: float = 0.0
    groups: tuple[str, ...] = ()
    consecutive: bool = False
    defense: str = "none"
    knobs: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not operator_acts(self.operator, float(self.strength)):
            object.__setattr__(self, "operator", "none")
            object.__setattr__(self, "strength", 0.0)
            object.__setattr__(self, "groups", ())
            object.__setattr__(self, "consecutive", False)
        if self.defense == "none":
            object.__setattr__(self, "knobs", ())

    @property
    def protected(self) -> bool:
        """Whether a protection operator acts."""
        return self.operator != "none"

    @property
    def kind(self) -> Kind:
        defended = self.defense != "none"
        if self.protected:
            return "combined" if defended else "pptp"
        return "baseline" if defended else "undefended"

    def protection_label(self) -> str:
        """``noise s=0.46 block3-head``, or ``-`` when no operator acts."""
        if not self.protected:
            return "-"
        where = groups_label(self.groups, consecutive=self.consecutive)
        return f"{self.operator} s={short_number(self.strength)} {where}"

    def defense_label(self) -> str:
        """``relaxloss strength=0.31``, ``dpsgd noise_multiplier=0.8``, or ``-`` for none."""
        if self.defense == "none":
            return "-"
        knobs = " ".join(f"{k}={short_number(v)}" for k, v in self.knobs)
        return f"{self.defense} {knobs}".strip()

    def label(self) -> str:
        """What the trial trained with, in a few words (module docstring)."""
        kind = self.kind
        if kind == "undefended":
            return "undefended"
        if kind == "baseline":
            return f"baseline {self.defense_label()}"
        if kind == "pptp":
            return self.protection_label()
        return f"{self.protection_label()} + {self.defense_label()}"

    def to_data(self) -> dict[str, Any]:
        """Plain JSON data (an Optuna user attribute); :meth:`from_data` reads it back."""
        return {
            "operator": self.operator,
            "strength": self.strength,
            "groups": list(self.groups),
            "consecutive": self.consecutive,
            "defense": self.defense,
            "knobs": [[k, v] for k, v in self.knobs],
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Treatment:
        return cls(
            operator=str(data.get("operator", "none")),
            strength=float(data.get("strength", 0.0) or 0.0),
            groups=tuple(str(g) for g in data.get("groups") or ()),
            consecutive=bool(data.get("consecutive", False)),
            defense=str(data.get("defense", "none")),
            knobs=tuple((str(k), float(v)) for k, v in data.get("knobs") or ()),
        )

    def flat(self) -> dict[str, Any]:
        """The flat fields recorded beside :data:`TREATMENT_ATTR` (:data:`FLAT_ATTRS`)."""
        return {
            "operator": self.operator,
            "strength": self.strength,
            "protected_groups": ",".join(self.groups) or "-",
            "defense": self.defense,
        }


def treatment_of(
    cfg: TrialConfig, groups: Sequence[str] = (), *, searched: Iterable[str] = ()
) -> Treatment:
    """The treatment of a trial config. ``groups``: the protected layer groups in model order
    (:func:`pptp.selection.resolve`). ``searched``: the space's searched keys: a baseline's label
    shows its searched knobs (``defense.strength``, or the defense's own keys), else its
    strength when it has one."""
    protect, defense = cfg.protect, cfg.defense
    own = ("strength", *DEFENSE_KEYS.get(defense.name, ()))
    searched = {k.removeprefix("defense.") for k in searched if k.startswith("defense.")}
    chosen = [k for k in own if k in searched] or (["strength"] if defense.strength else [])
    knobs = tuple(
        (k, float(getattr(defense, k)))
        for k in chosen
        if isinstance(getattr(defense, k, None), int | float)
    )
    return Treatment(
        operator=protect.operator,
        strength=float(protect.strength),
        groups=tuple(groups),
        consecutive=protect.split is not None,
        defense=defense.name,
        knobs=knobs,
    )


def planned_groups(cfg: TrialConfig) -> tuple[str, ...]:
    """The layer groups ``cfg`` protects, in model order, without data or training: the model is
    built once per model config on PyTorch's meta device (shapes only, no memory, no weights) and
    the selection resolved on it as training resolves it (:func:`pptp.selection.resolve`). Empty
    when no operator acts."""
    from pptp.data import dataset_spec
    from pptp.selection import resolve, selection_of

    if not operator_acts(cfg.protect.operator, cfg.protect.strength):
        return ()
    selection = selection_of(cfg.protect)
    if selection is None:
        return ()
    facts = dataset_spec(cfg.data).facts(cfg.data.image_size)
    return resolve(selection, _skeleton(cfg.model, facts))


@functools.lru_cache(maxsize=16)
def _skeleton(model: ModelConfig, facts: DataFacts) -> Any:
    """The model on the meta device; a user's model that cannot be built there is built on the
    CPU (the data's facts are the same ones training builds it from)."""
    import torch

    from pptp.errors import ConfigError
    from pptp.imports import is_import_path
    from pptp.models import model_from_config

    try:
        with torch.device("meta"):
            return model_from_config(model, facts)
    except ConfigError:
        if not is_import_path(model.name):
            raise
    return model_from_config(model, facts)


def treatment_from_record(attrs: Mapping[str, Any], params: Mapping[str, Any]) -> Treatment:
    """The treatment a finished trial recorded (:data:`TREATMENT_ATTR`); for records written
    before it existed, rebuilt from the flat fields and the sampled parameters."""
    data = attrs.get(TREATMENT_ATTR)
    if isinstance(data, Mapping):
        return Treatment.from_data(data)
    groups = str(attrs.get("protected_groups") or "")
    defense = str(attrs.get("defense", params.get("defense.name", "none")))
    own = ("strength", *DEFENSE_KEYS.get(defense, ()))
    knobs = tuple(
        (k, float(params[f"defense.{k}"]))
        for k in own
        if isinstance(params.get(f"defense.{k}"), int | float)
    )
    return Treatment(
        operator=str(attrs.get("operator", params.get("protect.operator", "none"))),
        strength=float(attrs.get("strength", params.get("protect.strength", 0.0)) or 0.0),
        groups=tuple(g for g in groups.split(",") if g and g != "-"),
        consecutive="protect.split" in params,
        defense=defense,
        knobs=knobs,
    )


def run_name(number: int, treatment: Treatment, *, digits: int = 2) -> str:
    """A trial's name everywhere (progress lines, MLflow runs, tables): ``t07 <label>``."""
    head = f"t{number:0{digits}d}" if number >= 0 else "t?"
    return f"{head} {treatment.label()}"


def trial_digits(n_trials: int) -> int:
    """How many digits trial numbers get in names: 2 (``t07``), more for studies of >= 100."""
    return max(2, len(str(max(n_trials, 1) - 1)))
