"""Every error of a space file names the file and the dotted key, in plain words
(search.space.validation turns pydantic's errors into them; the other modules raise their own)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from fixtures_space import write

from search.space import SpaceError, StudySpec, load_space
from search.space.study_section import StudySection
from search.space.validation import dotted

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
    "unresolvable objective": ("study: {name: t, objectives: {attack_tpr@0.1%fpr: min}}\n",
                               "study.objectives.attack_tpr@0.1%fpr"),
    "unresolvable constraint": (
        "study: {name: t, constraints: [{metric: tpr@0.1%fpr/loss, max: 0.1}]}\n",
        "study.constraints[0].metric"),
    "pool without non-members": ("study: {name: t}\nfixed: {data.pool_size: 1}\n",
                                 "fixed.data"),
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
        ("study: {name: t, objectives: {accuracy: max}}\n", "auc/rmia_online"),
        ("study: {name: t, sampler: foo}\n",
         "study.sampler: unknown sampler 'foo'; known: gp, nsga2, qmc, random, tpe"),
        ("study: {name: t, sampler_options: {pop: 3}}\n", "population_size"),
        ("study:\n  name: t\n   bad: [1\n", "line 3"),
        ("study: {name: t}\nfixed: {train.lrr: 0.1}\n", "did you mean 'train.lr'"),
        ("study: {name: t, objectives: {attack_tpr@0.1%fpr: min}}\n", "at least 1000 non-members"),
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




def test_the_study_schema_has_exactly_the_study_spec_fields() -> None:
    """StudySection (what a file may write) and StudySpec (what the code reads) list the same
    keys in the same order: a new study key needs both."""
    assert list(StudySection.model_fields) == [f.name for f in dataclasses.fields(StudySpec)]


def test_dotted() -> None:
    assert dotted("study", ("constraints", 0, "max")) == "study.constraints[0].max"
    assert dotted("params.train.lr", ()) == "params.train.lr"
    assert dotted("", ("a", "b")) == "a.b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("study: {name: t, n_trials: 2.5}\n", "study.n_trials = 2.5 is not an int"),
        ("study: {name: t, n_trials: 0}\n", "study.n_trials: must be >= 1, got 0"),
        ("study: {name: t, resources: {cpus: .inf}}\n",
         "study.resources.cpus: inf is not a finite number"),
        ("study: {name: t, resources: {tpus: 1}}\n",
         "study.resources.tpus: unknown key; study.resources has cpus, gpus"),
        ("study: {name: t, constraints: [{min: 0.5}]}\n",
         "study.constraints[0].metric: missing; a constraint needs metric"),
        ("study: {name: t, constraints: [{metric: test_acc, max: 1e1}]}\n",
         "study.constraints[0].max = '1e1' is a string, not a number"),
        ("study: {name: t, enqueue: [{1: 2}]}\n", "study.enqueue[0]: key 1 is not a string"),
        ("study: {n_trials: 3}\n", "study.name: missing; give a plain name of letters"),
    ],
)
def test_validation_messages(text: str, message: str, tmp_path: Path) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpaceError, match=re.escape(f"{path}: {message}")):
        load_space(path)


def test_values_that_convert_and_values_that_do_not(tmp_path: Path) -> None:
    """The study section follows pptp.config.coerce: 4.0 is an int, "4" and true are not."""
    space = load_space(write(tmp_path, "study: {name: t, n_trials: 4.0, resources: {cpus: 2}}\n"))
    assert space.study.n_trials == 4 and isinstance(space.study.n_trials, int)
    assert space.study.resources.cpus == 2.0 and isinstance(space.study.resources.cpus, float)
    for bad in ("'4'", "true"):
        with pytest.raises(SpaceError, match=r"study\.n_trials"):
            load_space(write(tmp_path, f"study: {{name: t, n_trials: {bad}}}\n"))
    empty = load_space(write(tmp_path, "study: {name: t, resources: , constraints: , enqueue: }\n"))
    assert empty.study.resources.cpus == 1.0 and empty.study.constraints == ()


# ------------------------------------------------------------------------------ hostile files


def billion_laughs(levels: int = 9) -> str:
    """A space file under 1 KB whose aliases expand to 9**(levels + 1) strings in
    ``study.name`` (and ``show`` of it in a message: gigabytes)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        name, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    anchors = "".join(f"    {line}\n" for line in lines)
    return f"study:\n  sampler_options:\n{anchors}  name: *{chr(ord('a') + levels - 1)}\n"


HOSTILE: dict[str, tuple[str, str]] = {
    "billion laughs": (billion_laughs(), "more than 100000 values once its aliases"),
    "10,000-deep nesting": (
        "study: {name: t, sampler_options: {x: " + "[" * 10_000 + "]" * 10_000 + "}}\n",
        "nested deeper than 64 levels",
    ),
    "100,000-deep block nesting": ("study: {name: t}\nfixed:\n  " + "- " * 100_000 + "x\n",
                                   "nested deeper than 64 levels"),
    "an alias inside itself": (
        "study: {name: t, sampler_options: &a {x: *a}}\n",
        "an alias refers to the list or mapping that holds it",
    ),
    "a file over the size limit": (
        "study: {name: t}\n#" + "x" * 300_000 + "\n",
        "too large for a space file (at most 262144)",
    ),
    "name with a path": ("study: {name: ../../x}\n", "study.name: needs a plain name"),
    "absolute name": ("study: {name: /tmp/x}\n", "study.name: needs a plain name"),
    "name with a space": ("study: {name: my study}\n", "study.name: needs a plain name"),
    "name too long": ("study: {name: " + "a" * 5000 + "}\n", "at most 64 characters"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=str)
def test_hostile_files_are_refused_at_once_in_a_short_line(case: str, tmp_path: Path) -> None:
    import time

    text, expected = HOSTILE[case]
    path = write(tmp_path, text)
    start = time.perf_counter()
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert expected in message and message.startswith(str(path)), message[:500]
    assert "\n" not in message and len(message) < 400 + len(str(path))


def test_a_long_value_is_quoted_as_a_short_excerpt(tmp_path: Path) -> None:
    values = ", ".join(["lol"] * 20_000)  # 100 KB, under the file's limits
    path = write(tmp_path, f"study: {{name: t, n_trials: [{values}]}}\n")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: study.n_trials") and "characters cut" in message
    assert len(message) < 300 + len(str(path))


def test_plain_names_and_yaml_anchors_still_load(tmp_path: Path) -> None:
    for name in ("fashion-mnist_v2.1", "A", "x" * 64):
        assert load_space(write(tmp_path, f"study: {{name: {name}}}\n")).study.name == name
    text = "study: {name: t, seed: &s 3, n_trials: *s}\n"
    assert load_space(write(tmp_path, text)).study.n_trials == 3
