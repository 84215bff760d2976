"""The model registry: a retrain's model logged and registered as its run's last step, and the alias
(`@champion`) moved to it once the run has ended, unless the model it names is a retrain of the same study
that tests better on the same images (champion and challenger)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from unet_opt.config.schema import Goal
from unet_opt.tracking.tracker import Tracker


@dataclass(frozen=True)
class Registration:
    """A registered version, and where the alias is after it."""

    model: str  # the registered model's name
    version: str
    before: str  # what the alias pointed at before, in words: "" when nothing did
    kept: str = ""  # why the alias stayed where it was (a better retrain of the same study): "" when it moved here
    kept_on: str = ""  # the version it stayed on
    overruled: str = ""  # why it would have stayed, had --promote not moved it


def register_model(tracker: Tracker, run_id: str, model: Any, input_example: Any, registered_name: str,
                   goal: Goal, promote: bool = False, alias: str = "champion") -> Registration:
    """Log the PyTorch model and register it as the run's last step, then point `alias` at it: the run
    ends FINISHED only once its model is registered (a process killed before leaves it RUNNING, which the
    next command ends FAILED), and the alias moves only to the model of a FINISHED run (a kill just before
    leaves it where it was). Without `promote`, the alias stays on a retrain of the same study whose test
    score (`goal`'s metric on the test split) is better. The version is tagged with its study, trial,
    epochs and test score. The signature leaves the batch, the height and the width free: any multiple of
    2**depth is a valid input size."""
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    import unet_opt

    # log_model works on the fluent API's active run, which needs the global tracking URI; MLflow
    # also exports it as MLFLOW_TRACKING_URI, which is put back afterwards so it cannot leak
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracker.uri)
    # pickle is chosen knowingly (the model is ours); MLflow warns about it at WARNING
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    try:
        with mlflow.start_run(run_id=run_id):  # which ends the run FINISHED as the block ends
            free = (-1, input_example.shape[1], -1, -1)  # (B, 3, H, W) in, (B, classes, H, W) out
            signature = ModelSignature(Schema([TensorSpec(np.dtype(np.float32), free)]),
                                       Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, -1))]))
            info = mlflow.pytorch.log_model(
                model, name="model", input_example=input_example, signature=signature,
                serialization_format="pickle",
                code_paths=[str(Path(unet_opt.__file__).parent)],  # the UNet class travels with the model
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"])
            champion = aliased(tracker.client, registered_name, alias)
            with contextlib.redirect_stderr(io.StringIO()):  # its "Successfully registered" lines: the CLI says it
                version = str(mlflow.register_model(info.model_uri, registered_name).version)
            tracker.set_tags(run_id, {"registered_model": f"{registered_name}/{version}"})
            ours = tracker.client.get_run(run_id).data
            test = test_metric(goal)
            for key, value in (("study", ours.tags.get("optuna.study")), ("source_trial", ours.tags.get("source_trial")),
                               ("epochs", ours.params.get("train.epochs")), (test, ours.metrics.get(test))):
                if value is not None:  # what the registry's pages show of a version without opening its run
                    tracker.client.set_model_version_tag(registered_name, version, key, str(value))
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    theirs = run_of(tracker.client, champion)
    better = better_champion(champion, theirs, ours, goal)
    if promote or not better:
        tracker.client.set_registered_model_alias(registered_name, alias, version)
    before = described(champion, theirs, ours.tags.get("optuna.study"))
    if promote:
        return Registration(registered_name, version, before, overruled=better)
    return Registration(registered_name, version, before, better, str(champion.version) if better else "")


def test_metric(goal: Goal) -> str:
    """The test split's name for the study's metric: val_dice -> test_dice."""
    return "test_" + goal.metric.removeprefix("val_")


def run_of(client: MlflowClient, version: ModelVersion | None) -> Run | None:
    """The run a version was registered from; None for no version, or a run deleted and purged since."""
    if version is None:
        return None
    try:
        return client.get_run(version.run_id)
    except mlflow.exceptions.MlflowException:
        return None


def better_champion(champion: ModelVersion | None, run: Run | None, ours: Any, goal: Goal) -> str:
    """Why `champion` (registered from `run`) keeps its alias over the model of the run whose data is `ours`: it is
    a retrain of the same study (tested on the same images) with a better test score; "" when it is not."""
    # none, gone, or deleted in the UI (a run that nobody means to keep)
    if run is None or run.info.lifecycle_stage == "deleted" or "optuna.study" not in ours.tags:
        return ""
    theirs, test = run.data, test_metric(goal)
    if theirs.tags.get("optuna.study") != ours.tags["optuna.study"] or test not in theirs.metrics \
            or test not in ours.metrics or not goal.improves(theirs.metrics[test], ours.metrics[test]):
        return ""
    return (f"version {champion.version}, the retrain of trial #{theirs.tags.get('source_trial', '?')}, which tests "
            f"better on the same images ({test} {theirs.metrics[test]:.4f} against {ours.metrics[test]:.4f})")


def aliased(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version `models:/name@alias` is now; None when there is no such model or alias yet."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def described(version: ModelVersion | None, run: Run | None, study: str | None) -> str:
    """A version (registered from `run`) in words with its test Dice, and its study when it is not `study` (whose
    test images may differ): "version 2, test_dice 0.8285", "version 7 of study 's2', test_dice 0.0391"; "" for
    None."""
    if version is None:
        return ""
    if run is None:  # deleted and purged since
        return f"version {version.version}, whose run is gone"
    theirs, dice = run.data.tags.get("optuna.study"), run.data.metrics.get("test_dice")
    return f"version {version.version}" + (f" of study '{theirs}'" if theirs and theirs != study else "") \
        + (f", test_dice {dice:.4f}" if dice is not None else "") \
        + (", whose run is deleted" if run.info.lifecycle_stage == "deleted" else "")
