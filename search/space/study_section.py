"""The ``study`` section of a space file -> :class:`~search.space.study.StudySpec`.

Its shape (keys, types, bounds, defaults) is the pydantic model :class:`StudySection`; what
depends on the rest of the file is checked here after it: objective and constraint metrics exist
for the attacks the file fixes, the sampler is registered and accepts its options, and each
enqueued first trial lies inside the searched distributions (keys it fixes must equal the fixed
value and are dropped).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Annotated, Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from pydantic import ConfigDict, Field, model_validator

from pptp.config import TrainConfig, config_keys
from search.space.distributions import contains, describe_distribution
from search.space.errors import coerce_value, show, space_error
from search.space.reading import flat_dict
from search.space.sampler_registry import SAMPLERS, build_sampler, check_sampler_options
from search.space.study import (
    DEFAULT_OBJECTIVES,
    DIRECTION_ALIASES,
    FAMILY_KINDS,
    NEVER_STOPPED,
    Constraint,
    Fidelity,
    Objective,
    Resources,
    StudySpec,
)
from search.space.trial_keys import choice_value
from search.space.validation import EmptyIfNone, Int, NoneAsEmptyList, Section, validate

#: a study name is a folder name under runs/: no '/', no '..', no leading '.' or '-'
STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
STUDY_NAME_MAX = 64


class ResourcesSection(Section):
    model_config = ConfigDict(title="study.resources")

    cpus: Annotated[float, Field(gt=0)] = 1.0
    gpus: Annotated[float, Field(ge=0)] = 0.0


class ConstraintSection(Section):
    model_config = ConfigDict(title="a constraint")

    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ConstraintSection:
        if self.min is None and self.max is None:
            raise ValueError("needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self


class FidelitySection(Section):
    model_config = ConfigDict(title="study.fidelity")

    rungs: Annotated[
        list[Annotated[float, Field(gt=0, lt=1)]],
        Field(min_length=1, description="fractions of train.epochs in (0, 1), like [0.11, 0.33]"),
    ] = Field(default_factory=lambda: [1 / 9, 1 / 3])
    reduction: Annotated[Int, Field(ge=2)] = 3
    never_stop: Annotated[list[str], NoneAsEmptyList] = Field(
        default_factory=lambda: list(NEVER_STOPPED)
    )


class StudySection(Section):
    """The keys of ``study`` (their meaning: :class:`~search.space.study.StudySpec`).

    Defaults that are sections are plain instances (mypy checks them without pydantic's
    plugin; sections are frozen, so sharing one is safe).
    """

    model_config = ConfigDict(title="study")

    name: Annotated[
        str,
        Field(
            pattern=STUDY_NAME_PATTERN,
            max_length=STUDY_NAME_MAX,
            description=f"a plain name of letters, digits, '-', '_' and '.', starting with a "
            f"letter or digit, at most {STUDY_NAME_MAX} characters (the MLflow experiment, the "
            "Optuna study and the folder runs/<name>/)",
        ),
    ]
    objectives: Annotated[
        dict[str, Any] | None,
        Field(
            min_length=1,
            description="a mapping metric -> maximize|minimize, e.g. "
            "{test_acc: maximize, attack_auc: minimize}",
        ),
    ] = None
    sampler: str = "nsga2"
    sampler_options: Annotated[dict[str, Any], EmptyIfNone] = Field(
        default_factory=dict, description="a mapping option -> value"
    )
    seed: Int = 0
    n_trials: Annotated[Int, Field(ge=1)] = 12
    max_concurrent: Annotated[Int, Field(ge=1)] = 2
    resources: Annotated[ResourcesSection, EmptyIfNone] = ResourcesSection()
    constraints: Annotated[list[ConstraintSection], NoneAsEmptyList] = Field(
        default_factory=list, description="a list like [{metric: test_acc, min: 0.5}]"
    )
    enqueue: Annotated[list[dict[str, Any]], NoneAsEmptyList] = Field(
        default_factory=list, description="a list of {key: value} mappings"
    )
    localization: Annotated[
        dict[str, Any] | None,
        Field(description="a mapping like {run: path/to/localization.json, top_k: 3}"),
    ] = None
    repeats: Annotated[Int, Field(ge=1)] = 1
    combine: bool = True
    budget: Annotated[
        dict[str, float],
        EmptyIfNone,
        Field(description="a mapping family -> share, like {pptp: 0.5, baselines: 0.5}"),
    ] = Field(default_factory=dict)
    fidelity: Annotated[
        FidelitySection | None,
        Field(description="a mapping like {rungs: [0.11, 0.33], reduction: 3}"),
    ] = None


def parse_study(
    raw: Any,
    fixed: Mapping[str, Any],
    params: Mapping[str, BaseDistribution],
    metrics: set[str],
    *,
    source: str,
) -> StudySpec:
    """Validate ``study`` against :class:`StudySection`, then against the rest of the file."""
    section = validate(StudySection, raw, key="study", source=source)
    if section.sampler not in SAMPLERS:
        raise space_error(
            source,
            "study.sampler",
            f"unknown sampler {section.sampler!r}; known: {', '.join(sorted(SAMPLERS))}",
        )
    study = StudySpec(
        name=section.name,
        objectives=_objectives(section.objectives, metrics, source=source),
        sampler=section.sampler,
        sampler_options=dict(section.sampler_options),
        seed=section.seed,
        n_trials=section.n_trials,
        max_concurrent=section.max_concurrent,
        resources=Resources(cpus=section.resources.cpus, gpus=section.resources.gpus),
        constraints=tuple(
            _constraint(c, metrics, key=f"study.constraints[{i}]", source=source)
            for i, c in enumerate(section.constraints)
        ),
        enqueue=_enqueue(section.enqueue, fixed, params, source=source),
        localization=dict(section.localization) if section.localization is not None else None,
        repeats=section.repeats,
        combine=section.combine,
        budget=_budget(section, fixed, params, source=source),
        fidelity=_fidelity(section.fidelity, fixed, params, source=source),
    )
    # options coerced to the sampler's types; building the sampler once checks the values
    study = dataclasses.replace(study, sampler_options=check_sampler_options(study, source=source))
    build_sampler(study, source=source)
    return study


def _budget(
    section: StudySection,
    fixed: Mapping[str, Any],
    params: Mapping[str, BaseDistribution],
    *,
    source: str,
) -> dict[str, float]:
    """``study.budget`` checked: known families, shares in (0, 1] summing to at most 1, and a
    space where a proposal can be pinned to either family (``study.combine: false``,
    ``defense.name`` searched over ``none`` and a baseline, an operator to protect with)."""
    shares = dict(section.budget)
    if not shares:
        return shares
    for family, share in shares.items():
        key = f"study.budget.{family}"
        if family not in FAMILY_KINDS:
            raise space_error(source, key, f"unknown family; known: {', '.join(FAMILY_KINDS)}")
        if not 0 < share <= 1:
            raise space_error(source, key, f"a share must be in (0, 1], got {share:g}")
    if sum(shares.values()) > 1 + 1e-9:
        raise space_error(
            source, "study.budget", f"shares sum to {sum(shares.values()):g}; at most 1"
        )
    if section.combine:
        raise space_error(
            source,
            "study.budget",
            "needs study.combine: false (each trial PPTP or one baseline) to count families",
        )
    defense = params.get("defense.name")
    choices = defense.choices if isinstance(defense, CategoricalDistribution) else ()
    if "none" not in choices or len(choices) < 2:
        raise space_error(
            source,
            "study.budget",
            "needs params.defense.name searched over none and at least one baseline defense",
        )
    if "protect.operator" not in params and fixed.get("protect.operator", "none") == "none":
        raise space_error(
            source,
            "study.budget",
            "gives PPTP a share but no operator is searched or fixed (protect.operator)",
        )
    return shares


def _fidelity(
    section: FidelitySection | None,
    fixed: Mapping[str, Any],
    params: Mapping[str, BaseDistribution],
    *,
    source: str,
) -> Fidelity | None:
    """``study.fidelity`` checked: ``train.epochs`` fixed and long enough for a rung before the
    end, and ``never_stop`` naming operators or defenses."""
    if section is None:
        return None
    out = Fidelity(tuple(section.rungs), section.reduction, tuple(section.never_stop))
    if "train.epochs" in params:
        raise space_error(
            source, "study.fidelity", "needs train.epochs fixed: rungs are fractions of it"
        )
    epochs = int(fixed.get("train.epochs", TrainConfig().epochs))
    if not out.epochs(epochs):
        raise space_error(
            source,
            "study.fidelity.rungs",
            f"no rung falls before the end of {epochs} epochs; train longer or use larger "
            "fractions",
        )
    from pptp.defenses import DEFENSES  # the registries import torch: see space_file.load_space
    from pptp.operators import OPERATORS

    known = {*OPERATORS, *DEFENSES}
    for name in out.never_stop:
        if name not in known:
            raise space_error(
                source,
                "study.fidelity.never_stop",
                f"unknown operator or defense {name!r}; known: {', '.join(sorted(known))}",
            )
    return out


def check_metric(metric: str, metrics: set[str], *, key: str, source: str) -> None:
    """SpaceError at ``key`` listing the known metrics unless ``metric`` is one of them."""
    if metric not in metrics:
        raise space_error(
            source,
            key,
            f"unknown metric {metric!r}; known (for the attacks in "
            f"attack.attacks): {', '.join(sorted(metrics))}",
        )


def _objectives(
    raw: Mapping[str, Any] | None, metrics: set[str], *, source: str
) -> tuple[Objective, ...]:
    if raw is None:
        return DEFAULT_OBJECTIVES
    out = []
    for metric, direction in raw.items():
        key = f"study.objectives.{metric}"
        check_metric(metric, metrics, key=key, source=source)
        normal = DIRECTION_ALIASES.get(str(direction).lower()) if direction is not None else None
        if normal is None:
            raise space_error(
                source,
                key,
                f"direction {direction!r} is not maximize or minimize (max/min also work)",
            )
        out.append(Objective(metric, normal))
    return tuple(out)


def _constraint(c: ConstraintSection, metrics: set[str], *, key: str, source: str) -> Constraint:
    check_metric(c.metric, metrics, key=f"{key}.metric", source=source)
    return Constraint(c.metric, min=c.min, max=c.max)


def _enqueue(
    raw: list[dict[str, Any]],
    fixed: Mapping[str, Any],
    params: Mapping[str, BaseDistribution],
    *,
    source: str,
) -> tuple[dict[str, Any], ...]:
    hints = config_keys()
    out = []
    for i, item in enumerate(raw):
        where = f"study.enqueue[{i}]"
        point = {}
        for k, v in flat_dict(item, key=where, source=source).items():
            key = f"{where}.{k}"
            if k in params:
                point[k] = _enqueued_value(v, params[k], hints[k], key=key, source=source)
            elif k in fixed:
                if coerce_value(v, hints[k], key=key, source=source) != fixed[k]:
                    raise space_error(
                        source,
                        key,
                        f"{show(v)} differs from the fixed value "
                        f"{show(fixed[k])}; to vary {k}, search it",
                    )
            else:
                raise space_error(
                    source,
                    key,
                    "is neither searched (params) nor fixed; searched: "
                    f"{', '.join(params) or '(none)'}",
                )
        out.append(point)
    return tuple(out)


def _enqueued_value(value: Any, dist: BaseDistribution, hint: Any, *, key: str, source: str) -> Any:
    if isinstance(dist, CategoricalDistribution):
        value = choice_value(value, hint, key=key, source=source)
    else:
        number = int if isinstance(dist, IntDistribution) else float
        if isinstance(value, str):  # "1e-4": coerce's YAML 1.1 hint, for ints too
            coerce_value(value, float, key=key, source=source)
        value = coerce_value(value, number, key=key, source=source)
        if not math.isfinite(value):
            raise space_error(source, key, f"{value!r} is not a finite number")
    if not contains(dist, value):
        raise space_error(
            source,
            key,
            f"{show(value)} is outside the searched distribution {describe_distribution(dist)}",
        )
    return value
