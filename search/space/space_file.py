"""A space file read, validated and resolved: :func:`load_space` -> :class:`Space`.

The order of :func:`load_space` is the order in which problems are reported: YAML, top-level
keys, ``fixed`` (keys and types), ``params`` (distributions), ``study`` (against the metrics the
fixed attacks report), then the checks across sections (:mod:`search.space.checks`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution

from pptp.config import TrialConfig
from pptp.errors import ConfigError
from search.space.distributions import describe_distribution, distribution_to_short
from search.space.errors import SpaceError, show, space_error
from search.space.reading import read_yaml
from search.space.study import StudySpec, known_metrics
from search.space.study_section import parse_study
from search.space.trial_keys import parse_fixed, parse_params

logger = logging.getLogger(__name__)

TOP_LEVEL = ("study", "fixed", "params")


BASELINE_PROTECT = {"protect.operator": "none", "protect.strength": 0.0}
"""What a baseline trial's protect section becomes when ``study.combine`` is false."""

NO_PROTECTION = {
    **BASELINE_PROTECT,
    "protect.split": None,
    "protect.groups": None,
    "protect.patterns": None,
}
"""What the protect section of a trial whose operator does not act becomes: no selection."""


@dataclass(frozen=True)
class Space:
    """A validated space file.

    ``fixed`` holds the keys the file fixed (flat, dotted, coerced to TrialConfig types);
    ``params`` the searched keys and their Optuna distributions, in file order; ``sha256`` is the
    hash of the file's bytes (a resumed study checks it did not change).
    """

    path: Path
    sha256: str
    study: StudySpec
    fixed: dict[str, Any]
    params: dict[str, BaseDistribution]

    def base_config(self) -> TrialConfig:
        """The fixed values; searched keys stay at their TrialConfig defaults."""
        return TrialConfig.from_flat(self.fixed, source=f"{self.path}: fixed")

    def trial_config(self, sampled: Mapping[str, Any]) -> TrialConfig:
        """The config of one trial: fixed values plus ``sampled`` (keys must be searched); with
        ``study.combine: false`` a trial with a baseline defense trains with no protection. An
        operator that does not act (strength 0 is plain training) leaves no operator, strength
        or selection in the config, so the trial's params say what it trained with."""
        for key in sampled:
            if key not in self.params:
                raise space_error(
                    str(self.path),
                    key,
                    f"is not a searched key; searched: {', '.join(self.params) or '(none)'}",
                )
        flat = {**self.fixed, **sampled}
        if not self.study.combine and flat.get("defense.name", "none") != "none":
            flat.update(BASELINE_PROTECT)  # a baseline trial: no protection (study.combine)
        from pptp.treatment import operator_acts  # torch: see load_space

        cfg = TrialConfig.from_flat(flat, source=f"{self.path}: trial")
        if not operator_acts(cfg.protect.operator, cfg.protect.strength):
            cfg = cfg.replace(**NO_PROTECTION)
        return cfg

    def resolved(self) -> dict[str, Any]:
        """The fully resolved space as plain data (YAML/JSON-safe) in the space-file format.

        ``fixed`` lists every TrialConfig key that is not searched, defaults filled in, so the
        dict alone reproduces the study (dumped to YAML it loads back as an equal space).
        """
        searched = set(self.params)
        fixed = {k: v for k, v in self.base_config().to_flat().items() if k not in searched}
        return {
            "study": self.study.to_data(),
            "fixed": fixed,
            "params": {k: distribution_to_short(d) for k, d in self.params.items()},
        }

    def describe(self) -> str:
        """The block printed at the start: settings, searched keys, fixed keys off defaults."""
        s = self.study
        objectives = ", ".join(f"{o.metric} {o.direction}" for o in s.objectives)
        options = ", ".join(f"{k}={show(v)}" for k, v in s.sampler_options.items())
        lines = [
            f"space       {self.path} (sha256 {self.sha256[:12]})",
            f"study       {s.name}: {s.n_trials} trials, {s.max_concurrent} at a time, "
            f"{s.resources.cpus:g} CPU + {s.resources.gpus:g} GPU each",
            f"objectives  {objectives}",
            f"sampler     {s.sampler}" + (f" ({options})" if options else "") + f", seed {s.seed}",
        ]
        if s.constraints:
            lines.append("constraints " + ", ".join(c.name for c in s.constraints))
        if s.enqueue:
            lines.append(f"enqueued    {len(s.enqueue)} first trials")
        width = max([len(k) for k in self.params] + [len(k) for k in self.fixed] + [8])
        lines.append(f"searched ({len(self.params)}):")
        lines += [f"  {k:<{width}}  {describe_distribution(d)}" for k, d in self.params.items()]
        defaults = TrialConfig().to_flat()
        changed = {
            k: v
            for k, v in self.base_config().to_flat().items()
            if k not in self.params and v != defaults.get(k)
        }
        lines.append(f"fixed, differing from defaults ({len(changed)}):")
        lines += [f"  {k:<{width}}  {show(v)}" for k, v in changed.items()]
        return "\n".join(lines)


def load_space(path: str | Path) -> Space:
    """Read, validate and resolve a space file; every problem is a :class:`SpaceError`."""
    path = Path(path)
    source = str(path)
    data, doc = read_yaml(path)
    if not isinstance(doc, Mapping):
        raise SpaceError(
            f"{source}: the top level must be a mapping with keys "
            f"{', '.join(TOP_LEVEL)}; got {type(doc).__name__}"
        )
    for k in doc:
        if k not in TOP_LEVEL:
            raise space_error(
                source, str(k), f"unknown top-level key; known: {', '.join(TOP_LEVEL)}"
            )
    if "study" not in doc:
        raise space_error(source, "study", "missing (it needs at least study.name)")
    fixed = parse_fixed(doc.get("fixed"), source=source)
    try:
        base = TrialConfig.from_flat(fixed, source=f"{source}: fixed")
    except ConfigError as err:
        raise SpaceError(str(err)) from None
    params = parse_params(doc.get("params"), fixed, source=source)
    study = parse_study(doc["study"], fixed, params, known_metrics(base), source=source)
    # The registry checks import the operators, models and datasets, hence torch (about 1.5 s on
    # 2 cores): a file refused on its structure above never pays for them.
    from search.space.checks import (
        check_epsilon,
        check_names,
        check_pairs,
        check_resolution,
        warn_small_population,
    )

    check_names(base, params, source=source)
    check_epsilon(study, base, params, source=source)
    check_pairs(study, base, params, source=source)
    check_resolution(study, base, source=source)
    warn_small_population(study, source=source)
    space = Space(
        path=path, sha256=hashlib.sha256(data).hexdigest(), study=study, fixed=fixed, params=params
    )
    logger.info("loaded space %s (%d searched, %d fixed)", source, len(params), len(fixed))
    return space
