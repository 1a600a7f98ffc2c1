"""search.space.space_file: the shipped spaces load; a Space resolves, describes itself and builds
trial configs; nested and dotted keys, anchors, categorical coercion and defaults."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from fixtures_space import MINIMAL, ROOT, SHIPPED, write
from optuna.distributions import FloatDistribution

from pptp.config import TrialConfig, config_keys
from search.space import Constraint, Space, SpaceError, load_space


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


