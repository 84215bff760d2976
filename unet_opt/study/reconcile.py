"""The study's parent run made to agree with the study whenever a command opens it: its end-of-search
files cover the study as it is, and a pair of stores that do not belong together is refused. (Each
trial's own run is brought in line by `ledger.TrialLedger.mirror_ended`.)

A process killed during the end-of-search logging leaves MLflow behind Optuna; Optuna decides, MLflow is
brought in line.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

from unet_opt.config.paths import redact_url
from unet_opt.config.schema import Config
from unet_opt.errors import UserError
from unet_opt.study.summary import FILES_TAG, STUDY_FILES, files_cover, log_study_artifacts
from unet_opt.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def finish_parent(study: optuna.Study, tracker: Tracker, parent_id: str, cfg: Config) -> None:
    """A study with no trial running: the parent's files are written again when missing or stale, and a
    parent not FINISHED (its search was killed while logging them, or stopped once its trials were done)
    ends FINISHED."""
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return  # another process is searching right now: its own end writes the files
    run = tracker.client.get_run(parent_id)
    present = {a.path for a in tracker.client.list_artifacts(parent_id)}
    if run.data.tags.get(FILES_TAG) != files_cover(study) or not set(STUDY_FILES) <= present:
        log.info("writing the study's plots and tables again (they were missing or stale)")
        log_study_artifacts(study, tracker, parent_id, cfg)
    if run.info.status != "FINISHED":  # also a parent KILLED by a stop that came once the work was done
        tracker.end(parent_id, "FINISHED")


def stored_parent(storage: optuna.storages.BaseStorage, name: str) -> str | None:
    """The MLflow parent run the study `name` records; None when there is no such study (or no parent yet)."""
    for study in storage.get_all_studies():
        if study.study_name == name:
            return study.user_attrs.get("mlflow_parent_run_id")
    return None


def check_stores_agree(storage: optuna.storages.BaseStorage, storage_url: str, tracker: Tracker, name: str) -> None:
    """The study records its parent run, the parent its study: refuse a pair of stores that do not belong
    together (an emptied study storage next to old runs, or a study whose runs are gone)."""
    parent = stored_parent(storage, name)
    where = f"the study storage {redact_url(storage_url)} and the MLflow store {redact_url(tracker.uri)}"
    if parent is not None and not tracker.has_run(parent):
        raise UserError(f"study '{name}' records its runs under MLflow parent run {parent}, which is not in {where}; "
                        f"restore the MLflow store (or pass the --tracking-uri the study ran with), or start a new "
                        f"study with --study NEW_NAME")
    if parent is None and not any(s.study_name == name for s in storage.get_all_studies()):
        others = tracker.parent_runs(name)
        if others:
            raise UserError(f"the MLflow experiment '{tracker.experiment_name}' in {redact_url(tracker.uri)} holds the "
                            f"runs of a study '{name}' (parent run {others[0]}) that the study storage "
                            f"{redact_url(storage_url)} does not have; restore the study storage (or pass the --storage "
                            f"it ran with), or start a new study with --study NEW_NAME")
