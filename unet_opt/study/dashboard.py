"""The live view of a sweep: optuna-dashboard over the study storage, served by `unet-opt ui` next to the
MLflow UI. It reads the storage as it is and updates as trials finish: the optimisation history, parameter
importances, parallel coordinates and each trial's curve (its best value so far after each epoch). Each
study's note there links to its ranked runs table in MLflow, as the MLflow note links here."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import optuna

from unet_opt.errors import UserError
from unet_opt.parallel.servers import Server, local_base
from unet_opt.study.storage import open_storage

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080  # optuna-dashboard's own
MLFLOW_UI = "http://127.0.0.1:5000"  # `unet-opt ui`'s MLflow UI at its default port, named in the notes


def dashboard_url(base: str, study_id: int) -> str:
    return f"{base.rstrip('/')}/dashboard/studies/{study_id}"


def live_view(storage_url: str, host: str, port: int) -> tuple[Server, dict[str, str]]:
    """optuna-dashboard over the storage, ready to serve, and each study's page in it, by study name."""
    storage = open_storage(storage_url, must_exist=True)
    pages = {s.study_name: dashboard_url(local_base(host, port), storage.get_study_id_from_name(s.study_name))
             for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    command = [dashboard_program(), storage_url, "--host", host, "--port", str(port), "--quiet"]
    return Server("the live view", command), pages


def dashboard_program() -> str:
    """optuna-dashboard's command, beside this Python's (its virtual environment) or on the PATH."""
    beside = Path(sys.executable).with_name("optuna-dashboard")
    found = str(beside) if beside.is_file() else shutil.which("optuna-dashboard")
    if not found:
        raise UserError("optuna-dashboard is not installed; run `pip install optuna-dashboard`, "
                        "or pass --no-live for the MLflow UI alone")
    return found


LIVE_VIEW = f"http://127.0.0.1:{DEFAULT_PORT}"  # where `unet-opt ui` serves the live view by default


def link_to_mlflow(storage_url: str, study_name: str, runs_table: str) -> None:
    """The study's note in the live view: where its runs are in MLflow. Written in the search's writer
    process (importing optuna-dashboard takes a second, which the first trial need not wait for). A note
    not written costs nothing but the link: the search goes on."""
    try:
        from optuna_dashboard import save_note

        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, must_exist=True))
        save_note(study, f"Runs of study `{study_name}` in MLflow (`unet-opt ui`, at its default `--port`), ranked "
                         f"by their value: [{runs_table}]({runs_table})")
    except Exception as e:
        log.warning("could not write the study's note for the live view (%s: %s)", type(e).__name__, e)
