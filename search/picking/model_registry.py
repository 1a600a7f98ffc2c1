"""Shipping a picked config: train its final model, log it under the study, register it.

The model run is nested under the study's parent run (tag ``pptp.kind=pick``); the registered
version gets the study, trial and rule as tags and ``--alias`` (default ``production``) points at
it. Model stages are deprecated in MLflow: aliases only. The default serialization is MLflow 3's
``pt2`` (``torch.export``: loads without unpickling).

MLflow has no public check of model and alias names; :func:`check_registry_names` calls the
validators MLflow itself runs (``mlflow.utils.validation``, private), so that a bad name stops
before any training. ``pyproject.toml`` pins the MLflow versions they were checked against and
``tests/test_private_apis.py`` fails, naming them, when they change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pptp.errors import ConfigError
from pptp.tables import format_cell
from search.picking.audit import Comparison
from search.picking.rules import Pick
from search.study.reader import StudyRun

if TYPE_CHECKING:
    from torch import nn

    from pptp.config import TrialConfig

logger = logging.getLogger(__name__)

#: tag set on the picked trial's child run, and the kind of the pick run
TAG_PICKED = "picked"
KIND_PICK = "pick"
DEFAULT_ALIAS = "production"
#: the model card's artifact name in the pick run (:mod:`search.picking.model_card`)
CARD_FILE = "model_card.md"


@dataclass(frozen=True)
class Registered:
    """A registered model version and the MLflow run that logged it."""

    name: str
    version: str
    alias: str
    run_id: str
    experiment_id: str

    @property
    def uri(self) -> str:
        """``models:/<name>@<alias>``: what ``mlflow.pytorch.load_model`` takes."""
        return f"models:/{self.name}@{self.alias}"


def check_registry_names(name: str, alias: str) -> None:
    """MLflow's own rules for registered model and alias names, checked before any training."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    try:
        validation._validate_model_name(name)
        validation._validate_model_alias_name(alias)
        validation._validate_model_alias_name_reserved(alias)
    except MlflowException as error:
        raise ConfigError(f"--register {name!r} --alias {alias!r}: {error.message}") from None


def input_example(cfg: TrialConfig, *, n: int = 2) -> Any:
    """``n`` held-out test images (never a member of any training set), float32 numpy
    ``(n, C, H, W)`` normalised like the pool: the model's input example and signature."""
    from pptp.data import build_pool

    pool = build_pool(cfg.data, device="cpu")
    return pool.x_test[:n].detach().cpu().numpy()


def log_model(model: nn.Module, example: Any, *, fmt: str) -> Any:
    """``mlflow.pytorch.log_model`` into the active run; returns its ``ModelInfo``.

    ``pt2`` (default; MLflow 3's safe format: ``torch.export``, loads without unpickling) needs
    the input example and a tensor signature; ``pickle`` loads only with
    ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``. Requirements are MLflow's pinned defaults
    (inference would start a subprocess that loads the model).
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    model = model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    try:
        return mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example,
            signature=infer_signature(example, logits),
            serialization_format=fmt,
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        )
    except Exception as error:
        if fmt != "pt2":
            raise
        raise RuntimeError(
            f"torch.export could not trace the model ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); pass --model-format pickle"
        ) from error


def register(
    run: StudyRun,
    cfg: TrialConfig,
    pick: Pick,
    comparison: Comparison,
    *,
    rule: str,
    references: TrialConfig | None,
    export_path: Path,
    tracking_uri: str,
    experiment_id: str,
    name: str,
    alias: str,
    model_format: str = "pt2",
) -> Registered:
    """Train the final model (the trial's config and seed), log it in an MLflow run nested under
    the study's parent run, register a new version of ``name`` and point ``alias`` at it."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pptp.bank_key import code_fingerprint, user_fingerprints
    from pptp.production import train_production
    from search.picking.model_card import model_card
    from search.tracking.names import TAG_KIND, TAG_PARENT, TAG_STUDY
    from search.tracking.store import git_commit, log_metrics, log_params

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    start = time.perf_counter()
    print(
        f"register    training the production model: the picked recipe on the full training "
        f"data (seed {cfg.train.seed})",
        flush=True,
    )
    production = train_production(cfg)
    c = pick.candidate
    recorded = c.value("test_acc")
    print(
        f"register    trained on {production.members} examples (the audit target on "
        f"{production.audit_members}"
        + (
            f"; {production.canaries_restored} canaries with their true labels"
            if production.canaries_restored
            else ""
        )
        + f"): test_acc {production.test_acc:.4f} (audit target {format_cell(recorded)}; "
        f"{time.perf_counter() - start:.0f}s)",
        flush=True,
    )
    fingerprints = {"pptp code": code_fingerprint(), **user_fingerprints(cfg)}
    tags = {
        TAG_KIND: KIND_PICK,
        TAG_STUDY: run.state.study_name,
        "picked_trial": str(c.number),
        "rule": rule,
        "reason": pick.reason[:5000],
        "git_commit": git_commit(),
        "run_dir": str(run.run_dir),
    }
    if run.state.parent_run_id:
        tags[TAG_PARENT] = run.state.parent_run_id
    if c.attrs.get("mlflow_run_id"):
        tags["picked_run_id"] = str(c.attrs["mlflow_run_id"])
    metrics = {
        **comparison.summary_metrics(),
        "test_acc": production.test_acc,
        "train_acc": production.train_acc,
        "members": float(production.members),
        "audit_members": float(production.audit_members),
        "audit/test_acc": recorded,
        **{m: v for m, v in comparison.screening.items() if m != "test_acc"},
    }
    if production.epsilon is not None:
        metrics["epsilon"] = production.epsilon
    tags.update({f"fingerprint/{k.replace(' ', '_')}": v for k, v in fingerprints.items()})
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"pick-trial-{c.number:04d}", tags=tags
    ) as active:
        run_id = active.info.run_id
        log_params(client, run_id, cfg.to_flat())
        log_metrics(client, run_id, metrics)
        mlflow.log_artifact(str(export_path))
        card = model_card(
            title=f"{name}: study {run.state.study_name}, trial {c.number} (rule {rule})",
            cfg=cfg,
            production=production,
            comparison=comparison,
            fingerprints=fingerprints,
        )
        mlflow.log_text(card, CARD_FILE)
        info = log_model(production.model, input_example(cfg), fmt=model_format)
    version = mlflow.register_model(
        info.model_uri,
        name,
        tags={"study": run.state.study_name, "trial": str(c.number), "rule": rule},
    )
    client.update_model_version(
        name,
        version.version,
        description=card + f"\nInput: float32 (N, C, H, W) normalised like pptp's pool of "
        f"data.name={cfg.data.name}; output: logits (N, n_classes).",
    )
    client.set_registered_model_alias(name, alias, str(version.version))
    client.set_tag(run_id, "registered_model", f"{name}/{version.version}")
    if c.attrs.get("mlflow_run_id"):
        try:
            client.set_tag(str(c.attrs["mlflow_run_id"]), TAG_PICKED, "true")
        except MlflowException as error:
            logger.warning(
                "could not tag trial run %s picked=true: %s",
                c.attrs["mlflow_run_id"],
                error.message,
            )
    return Registered(name, str(version.version), alias, run_id, experiment_id)


def study_experiment(tracking_uri: str, study_name: str) -> str:
    """The id of the study's MLflow experiment in ``tracking_uri``; ConfigError when absent."""
    from mlflow import MlflowClient

    experiment = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(study_name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"{tracking_uri} has no MLflow experiment {study_name!r}; give the tracking URI "
            "the study used (--tracking-uri, or the one in state.json)"
        )
    return str(experiment.experiment_id)
