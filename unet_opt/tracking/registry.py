"""The model registry: a retrain's model logged and registered as its run's last step, and the alias
(`@champion`) moved to it once the run has ended."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from unet_opt.tracking.tracker import Tracker


def register_model(tracker: Tracker, run_id: str, model: Any, input_example: Any, registered_name: str,
                   alias: str = "champion") -> tuple[str, str]:
    """Log the PyTorch model and register it as the run's last step, then point `alias` at it: the run
    ends FINISHED only once its model is registered (a process killed before leaves it RUNNING, which the
    next command ends FAILED), and the alias moves only to the model of a FINISHED run (a kill just before
    leaves it where it was). Returns (the version, what `alias` pointed at before: "" or a line about it).
    The signature leaves the batch, the height and the width free: any multiple of 2**depth is a valid
    input size."""
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
            before = aliased(tracker.client, registered_name, alias)
            with contextlib.redirect_stderr(io.StringIO()):  # its "Successfully registered" lines: the CLI says it
                version = str(mlflow.register_model(info.model_uri, registered_name).version)
            tracker.set_tags(run_id, {"registered_model": f"{registered_name}/{version}"})
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    tracker.client.set_registered_model_alias(registered_name, alias, version)
    return version, before

def aliased(client: MlflowClient, name: str, alias: str) -> str:
    """What `models:/name@alias` is now, in words with its test Dice; "" when nothing is."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:  # no such model or alias yet
        return ""
    try:
        dice = client.get_run(version.run_id).data.metrics.get("test_dice")
    except mlflow.exceptions.MlflowException:  # its run deleted (and purged) since
        return f"version {version.version}, whose run is gone"
    return f"version {version.version}" + (f", test_dice {dice:.4f}" if dice is not None else "")
