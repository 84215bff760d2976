"""The live view of a sweep: optuna-dashboard over the study storage, served by `unet-opt ui` next to the
MLflow UI. It reads the storage as it is and updates as trials finish: the optimisation history, parameter
importances, parallel coordinates and each trial's curve (its best value so far after each epoch). Each
study's note there links to its ranked runs table in MLflow, as the MLflow note links here: at the ports
the last `unet-opt ui` served the study at (`UI_LINKS`), else the default ones."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import optuna

from unet_opt.config.paths import sqlite_file
from unet_opt.errors import UserError
from unet_opt.parallel.servers import Server, local_base
from unet_opt.study.storage import open_storage

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080  # optuna-dashboard's own
MLFLOW_UI = "http://127.0.0.1:5000"  # `unet-opt ui`'s MLflow UI at its default port, named in the notes
UI_LINKS = "ui_links"  # the study's user attribute: {"mlflow": base, "live": base} where `ui` last served it
LIVE_VIEW_LINE = "Live view of the sweep"  # how the MLflow note's line of the live view begins


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


def served_at(attrs: dict) -> tuple[str, str]:
    """(MLflow UI, live view) where a study's notes link, from its user attributes `attrs`."""
    links = attrs.get(UI_LINKS) or {}
    return links.get("mlflow", MLFLOW_UI), links.get("live", LIVE_VIEW)


def which_port(base: str, default: str, option: str) -> str:
    return f"at its default `{option}`" if base == default else \
        f"at `{option} {base.rsplit(':', 1)[-1]}`, where `unet-opt ui` last served it"


def live_view_line(study_id: int, base: str) -> str:
    """The MLflow note's last line: the study's page in the live view served at `base`."""
    page = dashboard_url(base, study_id)
    return (f"{LIVE_VIEW_LINE} (history, parameter importances, parallel coordinates, each trial's curve), served by "
            f"`unet-opt ui` ({which_port(base, LIVE_VIEW, '--live-port')}): [{page}]({page})")


def link_to_mlflow(storage_url: str, study_name: str, experiment_id: str, server: str = "",
                   ui_base: str = "") -> bool:
    """The study's note in the live view: its runs in MLflow, ranked, on the tracking `server` if it has one,
    else where `unet-opt ui` serves them (`ui_base`, else where it last served the study); whether it was
    written. Written in the search's writer process (importing optuna-dashboard takes a second, which the
    first trial need not wait for). A note not written costs nothing but the link: the search goes on."""
    from unet_opt.tracking.ui import ranked_table_url

    try:
        from optuna_dashboard import save_note

        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, must_exist=True))
        base = server or ui_base or served_at(study.user_attrs)[0]
        where = "" if server else f" (`unet-opt ui`, {which_port(base, MLFLOW_UI, '--port')})"
        runs_table = ranked_table_url(base, experiment_id)
        save_note(study, f"Runs of study `{study_name}` in MLflow{where}, ranked by their value: "
                         f"[{runs_table}]({runs_table})")
        return True
    except Exception as e:
        log.warning("could not write the study's note for the live view (%s: %s)", type(e).__name__, e)
        return False


def can_write(url: str) -> bool:
    """Whether a store's SQLite file can be written here (a store of another kind: assumed so)."""
    path = sqlite_file(url)
    return path is None or (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def point_links_at(storage_url: str, tracking_uri: str, mlflow_base: str, live_base: str | None) -> None:
    """Where `unet-opt ui` serves the studies now (`live_base` None: it serves no live view): each study
    remembers it and its two notes link there, so that a project served on other ports does not link to
    another project's pages (study and experiment ids are 1 in every project). Nothing is written where
    nothing changes; a study whose note cannot be rewritten keeps its links (the terminal prints the right
    ones)."""
    from mlflow.tracking import MlflowClient

    if not (can_write(storage_url) and can_write(tracking_uri)):  # a read-only copy: MLflow would log its failure
        log.debug("the stores cannot be written here: the notes keep their links")
        return
    storage, client = open_storage(storage_url, must_exist=True), MlflowClient(tracking_uri)
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        parent_id = summary.user_attrs.get("mlflow_parent_run_id")
        if not parent_id:  # not a study of unet-opt's (a shared storage may hold others)
            continue
        served = served_at(summary.user_attrs)
        now = (mlflow_base, live_base or served[1])
        if served == now:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        try:
            run = client.get_run(parent_id)
            note = run.data.tags.get("mlflow.note.content", "")
            head, found, _ = note.rpartition(LIVE_VIEW_LINE)
            if found:
                client.set_tag(parent_id, "mlflow.note.content", head + live_view_line(study._study_id, now[1]))
            if link_to_mlflow(storage_url, study.study_name, run.info.experiment_id, ui_base=mlflow_base):
                # last: a study whose notes could not both be rewritten is tried again by the next `ui`
                study.set_user_attr(UI_LINKS, dict(zip(("mlflow", "live"), now)))
        except Exception as e:  # e.g. the study's runs are in another MLflow store, or the folder is read-only
            log.debug("study '%s' keeps its notes' links (%s: %s)", study.study_name, type(e).__name__, e)
