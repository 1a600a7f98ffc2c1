"""Space files: shipped spaces load, distributions round-trip, every error names file and key."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from pptp.config import TrialConfig, config_keys
from search.space import (
    INFEASIBLE,
    METRIC_NAMES,
    SAMPLERS,
    Constraint,
    Space,
    SpaceError,
    build_sampler,
    distribution_from_short,
    distribution_to_short,
    known_metrics,
    load_space,
    sampler_options,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "spaces").glob("*.yaml"))

MINIMAL = """\
study:
  name: t
  n_trials: 4
fixed:
  train.epochs: 3
  model.norm: group
params:
  protect.strength: {type: float, low: 0.0, high: 1.0}
  protect.split: {type: int, low: 1, high: 4}
  protect.operator: {type: categorical, choices: [noise, damp]}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def space(tmp_path: Path) -> Space:
    return load_space(write(tmp_path, MINIMAL))


# ------------------------------------------------------------------------------ shipped spaces


def test_shipped_spaces_exist() -> None:
    assert {p.name for p in SHIPPED} >= {"quickstart.yaml", "resnet.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_loads(path: Path) -> None:
    space = load_space(path)
    assert space.study.n_trials >= 1 and space.params
    base = space.base_config()
    operators = space.params.get("protect.operator")
    if operators is not None and "noise" in operators.choices:  # type: ignore[attr-defined]
        assert base.model.norm == "group"  # per-example gradients need GroupNorm
    for point in space.study.enqueue:
        assert set(point) <= set(space.params)
        space.trial_config(point)


def test_quickstart_is_cheap_and_cpu() -> None:
    space = load_space(ROOT / "spaces" / "quickstart.yaml")
    base = space.base_config()
    assert base.data.name == "digits" and base.train.device == "cpu"
    assert space.study.resources.gpus == 0 and space.study.n_trials == 12
    assert base.train.epochs <= 15 and base.train.crop_pad == 1
    # the first enqueued trial is the undefended baseline: strength 0 is plain training
    assert space.study.enqueue[0]["protect.strength"] == 0.0


def test_readme_examples_load(tmp_path: Path) -> None:
    """The YAML blocks of spaces/README.md are valid space fragments."""
    readme = (ROOT / "spaces" / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    params = next(b for b in blocks if b.startswith("params:"))
    fixed = next(b for b in blocks if b.startswith("fixed:"))
    optuna_form = next(b for b in blocks if "FloatDistribution" in b)
    params = params.replace("  protect.strength:", "  # ") + optuna_form
    space = load_space(write(tmp_path, "study: {name: t}\n" + fixed + params))
    assert isinstance(space.params["protect.strength"], FloatDistribution)
    assert space.params["train.lr"].log  # type: ignore[attr-defined]
    assert space.base_config().model.name == "small_cnn"


# ------------------------------------------------------------------------------ distributions

ROUND_TRIP = [
    {"type": "float", "low": 0.0, "high": 1.0},
    {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True},
    {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
    {"type": "int", "low": 1, "high": 4},
    {"type": "int", "low": 1, "high": 64, "log": True},
    {"type": "int", "low": 10, "high": 30, "step": 5},
    {"type": "int", "low": 3, "high": 3},
    {"type": "categorical", "choices": ["noise", "damp", None, 1, 0.5, True]},
]


@pytest.mark.parametrize("short", ROUND_TRIP, ids=lambda s: json.dumps(s))
def test_short_form_round_trip(short: dict[str, Any]) -> None:
    dist = distribution_from_short("params.x", short, source="f.yaml")
    assert distribution_to_short(dist) == short
    assert distribution_from_short("params.x", distribution_to_short(dist), source="f") == dist


@pytest.mark.parametrize("short", ROUND_TRIP, ids=lambda s: json.dumps(s))
def test_optuna_json_form_accepted(short: dict[str, Any]) -> None:
    dist = distribution_from_short("params.x", short, source="f.yaml")
    optuna_form = json.loads(optuna.distributions.distribution_to_json(dist))
    assert set(optuna_form) == {"name", "attributes"}
    assert distribution_from_short("params.x", optuna_form, source="f.yaml") == dist


def test_short_form_builds_the_expected_optuna_objects() -> None:
    def parse(spec: dict[str, Any]) -> Any:
        return distribution_from_short("k", spec, source="f")

    assert parse({"type": "float", "low": 0, "high": 1}) == FloatDistribution(0.0, 1.0)
    assert parse({"type": "int", "low": 1, "high": 4}) == IntDistribution(1, 4)
    assert parse({"type": "int", "low": 1.0, "high": 4}) == IntDistribution(1, 4)
    assert parse({"type": "categorical", "choices": ["a"]}) == CategoricalDistribution(["a"])


def test_legacy_optuna_json_form_accepted() -> None:
    spec = {"name": "LogUniformDistribution", "attributes": {"low": 0.001, "high": 0.1}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated since Optuna 3
        dist = distribution_from_short("k", spec, source="f")
    assert dist == FloatDistribution(0.001, 0.1, log=True)


# ------------------------------------------------------------------------------ the Space object


def test_describe_mentions_every_param_and_nondefault_fixed(space: Space) -> None:
    text = space.describe()
    assert "protect.strength" in text and "float [0, 1]" in text
    assert "protect.split" in text and "int [1, 4]" in text
    assert "categorical {noise, damp}" in text
    assert "train.epochs" in text  # differs from the default 20
    assert "train.lr" not in text  # neither searched nor changed
    assert "nsga2" in text and "test_acc maximize" in text


def test_describe_log_and_step(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, """\
        study: {name: t}
        params:
          train.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
          train.epochs: {type: int, low: 10, high: 30, step: 5}
        """))
    assert re.search(r"train\.lr\s+float \[0\.001, 0\.1\] log", space.describe())
    assert re.search(r"train\.epochs\s+int \[10, 30\] step 5", space.describe())


def test_resolved_is_plain_data_with_every_key(space: Space) -> None:
    resolved = space.resolved()
    assert set(resolved) == {"study", "fixed", "params"}
    json.dumps(resolved)  # JSON-safe
    yaml.safe_dump(resolved)  # YAML-safe
    keys = set(resolved["fixed"]) | set(resolved["params"])
    assert keys == set(config_keys()) == set(TrialConfig().to_flat())
    assert not set(resolved["fixed"]) & set(resolved["params"])
    assert resolved["fixed"]["train.epochs"] == 3
    assert resolved["fixed"]["train.lr"] == TrialConfig().train.lr  # default filled in
    assert resolved["study"]["objectives"] == {"test_acc": "maximize", "attack_auc": "minimize"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_resolved_loads_back_as_the_same_space(path: Path, tmp_path: Path) -> None:
    space = load_space(path)
    again = load_space(write(tmp_path, yaml.safe_dump(space.resolved(), sort_keys=False)))
    assert again.params == space.params
    assert again.study == space.study
    assert again.base_config() == space.base_config()
    assert again.resolved() == space.resolved()


def test_trial_config_applies_sampled_values(space: Space) -> None:
    cfg = space.trial_config(
        {"protect.strength": 0.25, "protect.split": 2, "protect.operator": "damp"}
    )
    assert cfg.protect.strength == 0.25 and cfg.protect.split == 2
    assert cfg.protect.operator == "damp"
    assert cfg.train.epochs == 3  # fixed
    assert space.base_config().protect.strength == TrialConfig().protect.strength
    assert space.base_config().train.epochs == 3


def test_trial_config_rejects_unsearched_keys(space: Space) -> None:
    with pytest.raises(SpaceError, match=r"space\.yaml.*train\.lr.*not a searched key"):
        space.trial_config({"train.lr": 0.1})


def test_fixed_nested_and_dotted_spellings(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, """\
        study: {name: t}
        fixed:
          train: {lr: 0.1, epochs: 2}
          model.norm: group
          protect.split: 1.0
        """))
    assert space.fixed == {"train.lr": 0.1, "train.epochs": 2, "model.norm": "group",
                           "protect.split": 1}
    assert isinstance(space.fixed["protect.split"], int)  # coerced to the field's type
    assert space.base_config().train.lr == 0.1


def test_categorical_choices_coerced_to_key_type(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, """\
        study: {name: t}
        params:
          train.lr: {type: categorical, choices: [0, 1, 0.5]}
          protect.split: {type: categorical, choices: [null, 1, 2]}
        """))
    assert space.params["train.lr"].choices == (0.0, 1.0, 0.5)  # type: ignore[attr-defined]
    assert all(isinstance(c, float) for c in space.params["train.lr"].choices)  # type: ignore
    assert space.trial_config({"protect.split": None}).protect.split is None


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, """\
        study:
          name: t
          enqueue:
            - &base {protect.strength: 0.0, protect.split: 1}
            - {<<: *base, protect.strength: 0.5}
        fixed: {model.norm: group}
        params:
          protect.strength: {type: float, low: 0.0, high: 1.0}
          protect.split: {type: int, low: 1, high: 4}
        """))
    assert space.study.enqueue[1] == {"protect.strength": 0.5, "protect.split": 1}


def test_sha256_of_file_bytes(tmp_path: Path) -> None:
    import hashlib

    path = write(tmp_path, MINIMAL)
    assert load_space(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_defaults(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "study: {name: t}\n"))
    s = space.study
    assert (s.sampler, s.seed, s.n_trials, s.max_concurrent) == ("nsga2", 0, 12, 2)
    assert s.metrics == ["test_acc", "attack_auc"]
    assert s.directions == ["maximize", "minimize"] and s.modes == ["max", "min"]
    assert (s.resources.cpus, s.resources.gpus) == (1.0, 0.0)
    assert space.params == {} and space.fixed == {}
    assert space.base_config() == TrialConfig()


def test_study_fields_parsed(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, """\
        study:
          name: t
          objectives: {attack_tpr@1%fpr: min, test_acc: MAX, auc/loss: minimize}
          sampler: tpe
          sampler_options: {n_startup_trials: 4}
          seed: 7
          resources: {cpus: 2, gpus: 0.25}
          constraints: [{metric: test_acc, min: 0.5}, {metric: auc/loss, min: 0.4, max: 0.6}]
          enqueue: [{protect.strength: 0, train.epochs: 3}]
          localization: {enabled: true}
        fixed: {train.epochs: 3}
        params: {protect.strength: {type: float, low: 0.0, high: 1.0}}
        """))
    s = space.study
    assert s.metrics == ["attack_tpr@1%fpr", "test_acc", "auc/loss"]  # file order kept
    assert s.directions == ["minimize", "maximize", "minimize"]
    assert s.sampler_options == {"n_startup_trials": 4} and s.seed == 7
    assert s.resources.gpus == 0.25
    assert s.constraints[1] == Constraint("auc/loss", min=0.4, max=0.6)
    assert s.enqueue == ({"protect.strength": 0.0},)  # fixed key checked and dropped
    assert isinstance(s.enqueue[0]["protect.strength"], float)
    assert s.localization == {"enabled": True}


# ------------------------------------------------------------------------------ errors

# (YAML text, the key the message must name). Each text is a complete space file.
ERRORS: dict[str, tuple[str, str]] = {
    "top level not a mapping": ("- 1\n- 2\n", "top level"),
    "unknown top-level key": ("study: {name: t}\nparam: {}\n", "param"),
    "missing study": ("fixed: {}\n", "study"),
    "unknown study key": ("study: {name: t, trials: 3}\n", "study.trials"),
    "missing name": ("study: {n_trials: 3}\n", "study.name"),
    "name not a string": ("study: {name: [a]}\n", "study.name"),
    "n_trials zero": ("study: {name: t, n_trials: 0}\n", "study.n_trials"),
    "n_trials float": ("study: {name: t, n_trials: 2.5}\n", "study.n_trials"),
    "n_trials string": ("study: {name: t, n_trials: many}\n", "study.n_trials"),
    "seed not int": ("study: {name: t, seed: x}\n", "study.seed"),
    "max_concurrent zero": ("study: {name: t, max_concurrent: 0}\n", "study.max_concurrent"),
    "cpus zero": ("study: {name: t, resources: {cpus: 0}}\n", "study.resources.cpus"),
    "gpus negative": ("study: {name: t, resources: {gpus: -1}}\n", "study.resources.gpus"),
    "unknown resource": ("study: {name: t, resources: {tpus: 1}}\n", "study.resources.tpus"),
    "objectives not mapping": ("study: {name: t, objectives: [test_acc]}\n", "study.objectives"),
    "objectives empty": ("study: {name: t, objectives: {}}\n", "study.objectives"),
    "bad direction": ("study: {name: t, objectives: {test_acc: up}}\n",
                      "study.objectives.test_acc"),
    "unknown objective metric": ("study: {name: t, objectives: {accuracy: max}}\n",
                                 "study.objectives.accuracy"),
    "metric of an attack not run": ("study: {name: t, objectives: {auc/entropy: min}}\n",
                                    "study.objectives.auc/entropy"),
    "epsilon without dpsgd": ("study: {name: t, objectives: {epsilon: min}}\n",
                              "study.objectives.epsilon"),
    "unknown sampler": ("study: {name: t, sampler: foo}\n", "study.sampler"),
    "unknown sampler option": ("study: {name: t, sampler_options: {pop: 3}}\n",
                               "study.sampler_options.pop"),
    "seed as sampler option": ("study: {name: t, sampler_options: {seed: 3}}\n",
                               "study.sampler_options.seed"),
    "sampler option wrong type": ("study: {name: t, sampler_options: {population_size: x}}\n",
                                  "study.sampler_options.population_size"),
    "sampler refuses option": ("study: {name: t, sampler_options: {population_size: 1}}\n",
                               "study.sampler_options"),
    "constraints not a list": ("study: {name: t, constraints: {metric: test_acc}}\n",
                               "study.constraints"),
    "constraint without bound": ("study: {name: t, constraints: [{metric: test_acc}]}\n",
                                 "study.constraints[0]"),
    "constraint unknown metric": ("study: {name: t, constraints: [{metric: acc, min: 0.5}]}\n",
                                  "study.constraints[0].metric"),
    "constraint missing metric": ("study: {name: t, constraints: [{min: 0.5}]}\n",
                                  "study.constraints[0]"),
    "constraint unknown field": ("study: {name: t, constraints: [{metric: test_acc, lo: 1}]}\n",
                                 "study.constraints[0].lo"),
    "constraint min above max": (
        "study: {name: t, constraints: [{metric: test_acc, min: 0.9, max: 0.5}]}\n",
        "study.constraints[0]"),
    "constraint bound string": (
        "study: {name: t, constraints: [{metric: epsilon, max: 1e1}]}\n",
        "study.constraints[0].max"),
    "localization not a mapping": ("study: {name: t, localization: [1]}\n", "study.localization"),
    "fixed unknown key": ("study: {name: t}\nfixed: {train.lrr: 0.1}\n", "train.lrr"),
    "fixed unknown section": ("study: {name: t}\nfixed: {training: {lr: 0.1}}\n",
                              "training.lr"),
    "fixed wrong type": ("study: {name: t}\nfixed: {train.epochs: ten}\n", "train.epochs"),
    "fixed float is string": ("study: {name: t}\nfixed: {train.lr: 1e-3}\n", "train.lr"),
    "fixed given twice": ("study: {name: t}\nfixed: {train: {lr: 0.1}, train.lr: 0.2}\n",
                          "train.lr"),
    "fixed unknown dataset": ("study: {name: t}\nfixed: {data.name: imagenet}\n", "data.name"),
    "fixed unknown model": ("study: {name: t}\nfixed: {model.name: vgg}\n", "model.name"),
    "fixed unknown norm": ("study: {name: t}\nfixed: {model.norm: layer}\n", "model.norm"),
    "fixed unknown operator": ("study: {name: t}\nfixed: {protect.operator: freeze}\n",
                               "protect.operator"),
    "fixed unknown direction": ("study: {name: t}\nfixed: {protect.direction: middle}\n",
                                "protect.direction"),
    "fixed unknown defense": ("study: {name: t}\nfixed: {defense.name: dropout}\n",
                              "defense.name"),
    "fixed unknown attack": ("study: {name: t}\nfixed: {attack.attacks: [loss, magic]}\n",
                             "attack.attacks"),
    "no attacks": ("study: {name: t}\nfixed: {attack.attacks: []}\n", "attack.attacks"),
    "too few references": (
        "study: {name: t}\nfixed: {attack.attacks: [lira_online], attack.n_references: 1}\n",
        "attack.n_references"),
    "noise with batch norm": (
        "study: {name: t}\nfixed: {model.norm: batch, protect.operator: noise}\n",
        "fixed.protect.operator"),
    "dpsgd searched with batch norm": (
        "study: {name: t}\nparams: {defense.name: {type: categorical, choices: [none, dpsgd]}}\n",
        "params.defense.name.choices[1]"),
    "fixed and searched": (
        "study: {name: t}\nfixed: {protect.split: 1}\n"
        "params: {protect.split: {type: int, low: 1, high: 2}}\n", "params.protect.split"),
    "params unknown key": ("study: {name: t}\nparams: {train.lrate: {type: float, low: 0, "
                           "high: 1}}\n", "params.train.lrate"),
    "params nested": ("study: {name: t}\nparams: {train: {lr: {type: float, low: 0, "
                      "high: 1}}}\n", "params.train"),
    "params not a mapping": ("study: {name: t}\nparams: [train.lr]\n", "params"),
    "params spec not a mapping": ("study: {name: t}\nparams: {train.lr: 0.1}\n",
                                  "params.train.lr"),
    "params no type": ("study: {name: t}\nparams: {train.lr: {low: 0, high: 1}}\n",
                       "params.train.lr"),
    "params unknown type": ("study: {name: t}\nparams: {train.lr: {type: uniform, low: 0, "
                            "high: 1}}\n", "params.train.lr.type"),
    "params unknown field": ("study: {name: t}\nparams: {train.lr: {type: float, low: 0, "
                             "high: 1, q: 0.1}}\n", "params.train.lr.q"),
    "params missing high": ("study: {name: t}\nparams: {train.lr: {type: float, low: 0}}\n",
                            "params.train.lr"),
    "float empty range": ("study: {name: t}\nparams: {train.lr: {type: float, low: 0.1, "
                          "high: 0.1}}\n", "params.train.lr"),
    "float inverted range": ("study: {name: t}\nparams: {train.lr: {type: float, low: 0.2, "
                             "high: 0.1}}\n", "params.train.lr"),
    "int inverted range": ("study: {name: t}\nparams: {protect.split: {type: int, low: 3, "
                           "high: 2}}\n", "params.protect.split"),
    "float log low zero": ("study: {name: t}\nparams: {train.lr: {type: float, low: 0.0, "
                           "high: 0.1, log: true}}\n", "params.train.lr"),
    "int log low zero": ("study: {name: t}\nparams: {protect.split: {type: int, low: 0, "
                         "high: 4, log: true}}\n", "params.protect.split"),
    "log not bool": ("study: {name: t}\nparams: {train.lr: {type: float, low: 0.1, "
                     "high: 1, log: yes please}}\n", "params.train.lr.log"),
    "log and step": ("study: {name: t}\nparams: {train.lr: {type: float, low: 0.1, "
                     "high: 1.1, log: true, step: 0.5}}\n", "params.train.lr"),
    "step does not divide": ("study: {name: t}\nparams: {train.epochs: {type: int, low: 1, "
                             "high: 10, step: 4}}\n", "params.train.epochs"),
    "float bound string": ("study: {name: t}\nparams: {train.lr: {type: float, low: 1e-4, "
                           "high: 0.1}}\n", "params.train.lr.low"),
    "int bound string": ("study: {name: t}\nparams: {train.epochs: {type: int, low: 1e1, "
                         "high: 20}}\n", "params.train.epochs.low"),
    "int bound fractional": ("study: {name: t}\nparams: {train.epochs: {type: int, low: 1.5, "
                             "high: 20}}\n", "params.train.epochs.low"),
    "float on int key": ("study: {name: t}\nparams: {protect.split: {type: float, low: 1, "
                         "high: 4}}\n", "params.protect.split"),
    "int on string key": ("study: {name: t}\nparams: {protect.operator: {type: int, low: 1, "
                          "high: 4}}\n", "params.protect.operator"),
    "categorical no choices": ("study: {name: t}\nparams: {protect.operator: "
                               "{type: categorical, choices: []}}\n",
                               "params.protect.operator.choices"),
    "categorical wrong type": ("study: {name: t}\nparams: {protect.split: "
                               "{type: categorical, choices: [1, two]}}\n",
                               "params.protect.split.choices[1]"),
    "categorical duplicate": ("study: {name: t}\nparams: {protect.direction: "
                              "{type: categorical, choices: [prefix, prefix]}}\n",
                              "params.protect.direction.choices"),
    "categorical non-scalar": ("study: {name: t}\nparams: {protect.groups: "
                               "{type: categorical, choices: [[head]]}}\n",
                               "params.protect.groups.choices[0]"),
    "categorical unknown operator": ("study: {name: t}\nparams: {protect.operator: "
                                     "{type: categorical, choices: [noise, freeze]}}\n",
                                     "params.protect.operator.choices[1]"),
    "categorical unknown defense": ("study: {name: t}\nparams: {defense.name: "
                                    "{type: categorical, choices: [none, dp]}}\n",
                                    "params.defense.name.choices[1]"),
    "attacks searched": ("study: {name: t}\nparams: {attack.attacks: "
                         "{type: categorical, choices: [loss]}}\n", "params.attack.attacks"),
    "optuna form invalid": ("study: {name: t}\nparams: {train.lr: {name: FloatDistribution, "
                            "attributes: {low: 1}}}\n", "params.train.lr"),
    "optuna form unknown class": ("study: {name: t}\nparams: {train.lr: {name: Gaussian, "
                                  "attributes: {low: 1}}}\n", "params.train.lr"),
    "optuna form string bound": ("study: {name: t}\nparams: {train.lr: {name: FloatDistribution,"
                                 " attributes: {low: 1e-3, high: 1.0, log: false, step: null}}}\n",
                                 "params.train.lr.attributes.low"),
    "enqueue not a list": ("study: {name: t, enqueue: {protect.split: 1}}\n", "study.enqueue"),
    "enqueue unknown key": (
        "study: {name: t, enqueue: [{train.lr: 0.1}]}\n"
        "params: {protect.split: {type: int, low: 1, high: 4}}\n", "study.enqueue[0].train.lr"),
    "enqueue outside range": (
        "study: {name: t, enqueue: [{protect.split: 5}]}\n"
        "params: {protect.split: {type: int, low: 1, high: 4}}\n",
        "study.enqueue[0].protect.split"),
    "enqueue off step": (
        "study: {name: t, enqueue: [{train.epochs: 12}]}\n"
        "params: {train.epochs: {type: int, low: 10, high: 30, step: 5}}\n",
        "study.enqueue[0].train.epochs"),
    "enqueue not a choice": (
        "study: {name: t, enqueue: [{protect.operator: none}]}\n"
        "params: {protect.operator: {type: categorical, choices: [noise, damp]}}\n",
        "study.enqueue[0].protect.operator"),
    "enqueue wrong type": (
        "study: {name: t, enqueue: [{protect.strength: high}]}\n"
        "params: {protect.strength: {type: float, low: 0.0, high: 1.0}}\n",
        "study.enqueue[0].protect.strength"),
    "enqueue differs from fixed": (
        "study: {name: t, enqueue: [{train.epochs: 4}]}\nfixed: {train.epochs: 3}\n",
        "study.enqueue[0].train.epochs"),
    "bad yaml": ("study:\n  name: t\n   bad: [1\n", "line"),
    "duplicate key": ("study: {name: t}\nfixed:\n  train.lr: 0.1\n  train.lr: 0.2\n",
                      "duplicate key 'train.lr'"),
}


@pytest.mark.parametrize("case", ERRORS, ids=str)
def test_error_names_file_and_key(case: str, tmp_path: Path) -> None:
    text, key = ERRORS[case]
    path = write(tmp_path, text, name="bad_space.yaml")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert key in message, message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("study: {name: t}\nfixed: {train.lr: 1e-3}\n", "1.0e-4"),
        ("study: {name: t}\nparams: {train.lr: {type: float, low: 1e-4, high: 0.1}}\n",
         "1.0e-4"),
        ("study: {name: t, objectives: {accuracy: max}}\n", "test_acc"),  # lists valid ones
        ("study: {name: t, objectives: {accuracy: max}}\n", "auc/lira_online"),
        ("study: {name: t, sampler: foo}\n",
         "study.sampler: unknown sampler 'foo'; known: gp, nsga2, qmc, random, tpe"),
        ("study: {name: t, sampler_options: {pop: 3}}\n", "population_size"),
        ("study:\n  name: t\n   bad: [1\n", "line 3"),
        ("study: {name: t}\nfixed: {train.lrr: 0.1}\n", "did you mean 'train.lr'"),
    ],
)
def test_error_messages_help(text: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=re.escape(expected)):
        load_space(write(tmp_path, text))


def test_not_a_file(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.yaml", tmp_path):
        with pytest.raises(SpaceError, match=re.escape(str(path)) + ": not a file"):
            load_space(path)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00 study")
    with pytest.raises(SpaceError, match=re.escape(str(path)) + ": cannot read"):
        load_space(path)


def test_space_error_is_a_config_error() -> None:
    from pptp.errors import ConfigError

    assert issubclass(SpaceError, ConfigError)


# ------------------------------------------------------------------------------ samplers


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_works_for_two_objectives_with_constraints(name: str, space: Space) -> None:
    # a couple of startup trials, so model-based samplers take a model-based step within 3 trials
    options = {"n_startup_trials": 2} if "n_startup_trials" in sampler_options(name) else {}
    if name == "nsga2":
        options = {"population_size": 2}
    study_spec = dataclasses.replace(space.study, sampler=name, sampler_options=options, seed=3)
    constraint = Constraint("test_acc", min=0.5)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        sampled = {k: trial._suggest(k, d) for k, d in space.params.items()}
        cfg = space.trial_config(sampled)
        acc = 1.0 - 0.5 * cfg.protect.strength
        trial.set_constraint(constraint.name, constraint.value({"test_acc": acc}))
        return acc, 0.5 + 0.1 * (cfg.protect.split or 0) * (1.0 - cfg.protect.strength)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings (qmc, gp)
        sampler = build_sampler(study_spec)
        study = optuna.create_study(directions=study_spec.directions, sampler=sampler)
        study.enqueue_trial({"protect.strength": 0.0})
        study.optimize(objective, n_trials=3)
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert trials[0].params["protect.strength"] == 0.0  # the enqueued trial ran first
    for t in trials:
        assert all(space.params[k]._contains(space.params[k].to_internal_repr(v))
                   for k, v in t.params.items())
        assert t.constraints == {"test_acc>=0.5": pytest.approx(0.5 - t.values[0])}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_seed_is_reproducible(name: str, space: Space) -> None:
    spec = dataclasses.replace(space.study, sampler=name, sampler_options={}, seed=11)

    def draws() -> list[dict[str, Any]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(directions=spec.directions, sampler=build_sampler(spec))
            study.optimize(lambda t: (t.suggest_float("x", 0, 1), 0.0), n_trials=2)
        return [t.params for t in study.trials]

    assert draws() == draws()


def test_tpe_is_multivariate_by_default(space: Space) -> None:
    spec = dataclasses.replace(space.study, sampler="tpe")
    assert build_sampler(spec)._multivariate is True  # type: ignore[attr-defined]
    spec = dataclasses.replace(spec, sampler_options={"multivariate": False})
    assert build_sampler(spec)._multivariate is False  # type: ignore[attr-defined]


def test_sampler_options_offer_plain_data_only() -> None:
    nsga2 = sampler_options("nsga2")
    assert "population_size" in nsga2 and "crossover_prob" in nsga2
    assert not {"seed", "constraints_func", "mutation", "crossover"} & set(nsga2)
    assert sampler_options("random") == {}


def test_build_sampler_error_names_source(space: Space) -> None:
    spec = dataclasses.replace(space.study, sampler="bogus")
    with pytest.raises(SpaceError, match=r"^x\.yaml: study\.sampler: unknown sampler 'bogus'"):
        build_sampler(spec, source="x.yaml")


# ------------------------------------------------------------------------------ metrics


def test_known_metrics_follow_the_attacks() -> None:
    cfg = TrialConfig.from_flat({"attack.attacks": ["loss", "rmia_online"]})
    metrics = known_metrics(cfg)
    assert set(METRIC_NAMES) <= metrics
    assert {"auc/loss", "tpr@0.1%fpr/rmia_online", "tpr@1%fpr/loss"} <= metrics
    assert "auc/lira_offline" not in metrics


@pytest.mark.parametrize(
    ("constraint", "value", "expected"),
    [
        (Constraint("test_acc", min=0.9), 0.95, -0.05),
        (Constraint("test_acc", min=0.9), 0.85, 0.05),
        (Constraint("epsilon", max=8.0), 10.0, 2.0),
        (Constraint("epsilon", max=8.0), 2.0, -6.0),
        (Constraint("auc/loss", min=0.4, max=0.6), 0.5, -0.1),
        (Constraint("auc/loss", min=0.4, max=0.6), 0.7, 0.1),
        (Constraint("auc/loss", min=0.4, max=0.6), 0.3, 0.1),
        (Constraint("test_acc", min=0.9), math.nan, INFEASIBLE),
    ],
)
def test_constraint_value(constraint: Constraint, value: float, expected: float) -> None:
    assert constraint.value({constraint.metric: value}) == pytest.approx(expected)


def test_constraint_missing_metric_is_infeasible() -> None:
    c = Constraint("epsilon", max=8.0)
    assert c.value({"test_acc": 0.9}) == INFEASIBLE > 0
    assert c.name == "epsilon<=8"
    assert Constraint("test_acc", min=0.5, max=0.9).name == "test_acc>=0.5,test_acc<=0.9"
