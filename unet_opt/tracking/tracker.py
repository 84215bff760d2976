"""MLflow: one experiment per study, a parent run per study, a child run per trial, their files.

Uses `MlflowClient` with explicit run ids rather than the fluent API's global "active run", so a
trial's run can never be confused with the parent's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from unet_opt import runtime
from unet_opt.config.paths import (
    check_is_store_of,
    create_atomically,
    make_folder,
    redact_url,
    sqlite_file,
    unreadable_store,
)
from unet_opt.config.schema import SearchConfig
from unet_opt.errors import UserError
from unet_opt.parallel.processes import is_dead_here, worker_id
from unet_opt.tracking.relocate import relocate_store
from unet_opt.tracking.store_template import new_store

log = logging.getLogger(__name__)

PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
EXPERIMENT_PREFIX = "unet-opt-"  # "unet-opt-default", never to be confused with MLflow's own "Default"


def experiment_name(name: str) -> str:
    """The MLflow experiment of a study (or of `train`'s baseline runs) named `name`."""
    return EXPERIMENT_PREFIX + name


RANKED_VIEW = "unet-opt-ranked"  # the runs table's shared view that a study's experiment carries
TRIALS_ONLY = "tags.`optuna.trial` LIKE '%'"  # the runs of trials: the study's own run has no trial number
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow 3.15+: an experiment tag per shared view, opened by URL


@contextlib.contextmanager
def one_opener_at_a_time(folder: Path | None):
    """Held while a local MLflow database is opened. MLflow creates and migrates a new database without
    a lock, and two processes doing it at once can leave it unusable for good ("table
    _alembic_tmp_experiments already exists"): two searches started together in a new folder."""
    if folder is None:  # a tracking server creates its database once, itself
        yield
        return
    handle = os.open(folder, os.O_RDONLY)  # a lock on the folder leaves no lock file behind
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def point_at_own_folder(tracking_uri: str, artifact_root: Path) -> None:
    """A moved project folder's store made to read and write its own artifacts (see `relocate`). A copy that
    cannot be written (a read-only mount) is read as it is: its runs' files where they were made."""
    database = sqlite_file(tracking_uri)
    if database and database.is_file():
        try:
            with one_opener_at_a_time(database.parent):
                relocate_store(database, artifact_root)
        except (sqlite3.OperationalError, OSError) as e:
            log.warning("this project folder was moved and its MLflow store %s cannot be rewritten (%s): its runs' "
                        "files are looked for where they were made; copy the folder somewhere writable to see them "
                        "here", database, e)


class Tracker:
    """The MLflow side of one study."""

    def __init__(self, tracking_uri: str, name: str, artifact_root: Path):
        """The experiment of the study (or baseline) `name`, made when there is none. `artifact_root`
        holds a local store's artifacts; a tracking server keeps its own."""
        experiment = self.experiment_name = experiment_name(name)
        database = sqlite_file(tracking_uri)
        folder = database.parent if database else None
        if folder:
            make_folder(folder, "--tracking-uri")
        self.uri = tracking_uri
        with one_opener_at_a_time(folder):
            try:
                if database and database.exists():
                    check_is_store_of(database, "experiments", "an MLflow store", "--tracking-uri")
                if database and not database.exists():  # MLflow's migrations are not atomic: build aside
                    create_atomically(database, new_store)
                if database:
                    relocate_store(database, artifact_root)
                self.client = MlflowClient(tracking_uri=tracking_uri)
                exp = self.client.get_experiment_by_name(experiment) or self.renamed_former_experiment(name)
            except UserError:
                raise
            except Exception as e:  # server down, bad URI, unreadable database
                if database:
                    raise unreadable_store(database, "an MLflow store", e) from None
                raise UserError(f"cannot reach the MLflow tracking store {redact_url(tracking_uri)} "
                                f"({type(e).__name__}); start the server or fix --tracking-uri") from None
        if exp is None:
            local = tracking_uri.startswith("sqlite:")
            location = (artifact_root / experiment).as_uri() if local else None
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except mlflow.exceptions.MlflowException:
                exp = self.client.get_experiment_by_name(experiment)  # another machine created it just now
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id

    def renamed_former_experiment(self, name: str):
        """A folder made before experiments were prefixed has unet-opt runs in the experiment `name`:
        that experiment is renamed rather than a second one made beside it."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None or not self.client.search_runs([exp.experiment_id], "tags.`unet_opt.role` != ''",
                                                      max_results=1, run_view_type=mlflow.entities.ViewType.ALL):
            return None
        self.client.rename_experiment(exp.experiment_id, experiment_name(name))
        log.info("experiment '%s' renamed '%s'", name, experiment_name(name))
        return self.client.get_experiment(exp.experiment_id)

    def save_ranked_view(self, metric: str, params: list[str]) -> None:
        """The runs table as a study wants it, kept with its experiment as an MLflow shared view: the trials
        alone (not the study's own run), sorted by their value, best first, with `best_<metric>`,
        `best_epoch` and the searched `params` as columns wide enough for their names and values. Sorted by
        start time, MLflow's default, the table folds the trials under the study's run and shows none of
        these columns."""
        columns = [f"metrics.`best_{metric}`", "metrics.`best_epoch`", *(f"params.`{name}`" for name in params)]
        state = {"orderByKey": columns[0], "orderByAsc": not SearchConfig(metric=metric).goal.maximize,
                 "searchFilter": TRIALS_ONLY, "selectedColumns": columns, "columnOrder": columns,
                 # MLflow's 100-odd px cut "data.image_size" short, and values at full precision (a float's
                 # 17 digits, ~9 px each): ~8 px a character of the name. It applies the widths of the
                 # columns that `columnOrder` names, in that order.
                 "columnWidths": {column: max(170, 8 * len(column.split("`")[1]) + 40) for column in columns}}
        self.client.set_experiment_tag(self.experiment_id, SHARED_VIEW_TAG + RANKED_VIEW, json.dumps(state))

    def open_parent(self, run_id: str | None, study: str, params: dict[str, Any] | None = None) -> str:
        """Reopen the study's parent run, or create it (with the search's `params`) when there is none
        (or it was deleted)."""
        if run_id:
            try:
                run = self.client.get_run(run_id)
                if run.info.lifecycle_stage == "active":
                    self.client.update_run(run_id, status="RUNNING")
                    return run_id
            except mlflow.exceptions.MlflowException:
                pass
        run = self.client.create_run(self.experiment_id, run_name=study,
                                     tags={"optuna.study": study, "unet_opt.role": "study"})
        if params:
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def adopt_or_create_parent(self, study: str, params: dict[str, Any]) -> str:
        """The parent run for a study that records none yet. A process killed between creating the parent run
        and recording it in the study left one behind: that run is taken (the oldest, if several), so that the
        study keeps one parent run throughout. Otherwise a new one is made."""
        left = self.parent_runs(study)
        if not left:
            return self.open_parent(None, study, params)
        log.info("study '%s' takes up the parent run %s that another command made for it", study, left[0])
        present = self.client.get_run(left[0]).data.params  # that command may have been stopped before its params
        missing = [Param(k, str(v)) for k, v in params.items() if k not in present]
        if missing:
            self.client.log_batch(left[0], params=missing)
        return left[0]

    def start_run(self, name: str, params: dict[str, Any], tags: dict[str, Any]) -> str:
        """A run tagged with the process that owns it (`worker`: host:pid), so that a later command can
        tell a run whose process died from one still going."""
        tags = {"worker": worker_id(), **tags}
        run = self.client.create_run(self.experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(run.info.run_id, params=items[i:i + PARAM_BATCH])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def local_artifact_folder(self, run_id: str) -> Path | None:
        """Where the run's files are kept when that is a folder on this machine (the local store's
        `mlruns/artifacts/...`); None for any other artifact store."""
        uri = self.client.get_run(run_id).info.artifact_uri
        if not uri.startswith("file:"):
            return None
        return Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))

    def log_files(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    @contextlib.contextmanager
    def closing(self, run_id: str) -> Iterator[str]:
        """Ends the run as its block ends: FINISHED, KILLED on Ctrl-C, FAILED on any other error."""
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        except KeyboardInterrupt as stop:
            status = "KILLED"
            runtime.release_what_a_stop_cut(stop)  # a read it cut would lock the run's end out
            raise
        finally:
            self.end(run_id, status)

    def has_run(self, run_id: str) -> bool:
        """Whether the store holds the run (deleted ones included: `open_parent` replaces those)."""
        try:
            self.client.get_run(run_id)
            return True
        except mlflow.exceptions.MlflowException:
            return False

    def parent_runs(self, study: str) -> list[str]:
        """The ids of the parent runs of studies named `study` in this experiment, oldest first."""
        runs = self.client.search_runs([self.experiment_id], f"tags.`unet_opt.role` = 'study' and "
                                       f"tags.`optuna.study` = '{study}'", max_results=10,
                                       order_by=["attributes.start_time ASC"])
        return [r.info.run_id for r in runs]

    def running_runs(self, trial: int | None = None) -> list[mlflow.entities.Run]:
        """The experiment's RUNNING runs; `trial`: only that trial's."""
        query = "attributes.status = 'RUNNING'" + (f" and tags.`optuna.trial` = '{trial}'" if trial is not None else "")
        return self.client.search_runs([self.experiment_id], query, max_results=10000)

    def fail_runs_of_dead_processes(self, roles: tuple[str, ...] = ("retrain", "train")) -> None:
        """A retrain or train run left RUNNING by a process of this machine that is gone (killed) ends FAILED."""
        for run in self.running_runs():
            tags = run.data.tags
            if tags.get("unet_opt.role") in roles and is_dead_here(tags.get("worker")):
                self.set_tags(run.info.run_id, {"unet_opt.end_reason": "its process died (killed or crashed)"})
                self.end(run.info.run_id, "FAILED")
                registered = f"; its model stays registered as {tags['registered_model']}, which no alias was " \
                             f"moved to" if "registered_model" in tags else ""
                log.warning("MLflow run %s (%s) was left running by a dead process; marked FAILED%s",
                            run.info.run_id, run.info.run_name, registered)

    @contextlib.contextmanager
    def stopped_runs_killed(self, roles: tuple[str, ...] = ("retrain", "train")) -> Iterator[None]:
        """A stop in the block ends KILLED the retrain or train runs this process left RUNNING: the one it was
        making when the stop came, which the block's own end of the run (`closing`) does not know yet."""
        try:
            yield
        except KeyboardInterrupt as stop:
            runtime.release_what_a_stop_cut(stop)
            for run in self.running_runs():
                if run.data.tags.get("unet_opt.role") in roles and run.data.tags.get("worker") == worker_id():
                    self.end(run.info.run_id, "KILLED")
            raise

    def rename(self, run_id: str, name: str) -> None:
        self.client.update_run(run_id, name=name)

    def end_if_running(self, run_id: str, status: str, tags: dict[str, Any], name: str = "") -> bool:
        """Tag (and rename to `name`, if given) and end a run that is still RUNNING (a dead process's, or one
        whose end was not recorded); whether it was. The end comes last: a process killed before it leaves
        the run RUNNING, which the next command ends. A run deleted by its user is left alone."""
        try:
            if self.client.get_run(run_id).info.status != "RUNNING":
                return False
        except mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s is gone; nothing to close", run_id)
            return False
        self.set_tags(run_id, tags)
        if name:
            self.rename(run_id, name)
        self.end(run_id, status)
        return True


def run_id_of(model: str, tracking_uri: str) -> str:
    """`models:/name@alias`, `models:/name/3`, `runs:/ID/...` or a bare run id -> the run that holds it."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        if model.startswith("models:/"):
            name, _, alias = model.removeprefix("models:/").partition("@")
            name, _, number = name.partition("/")
            version = client.get_model_version_by_alias(name, alias) if alias else \
                client.get_model_version(name, number or "1")
            run_id = version.run_id
        else:
            run_id = model.removeprefix("runs:/").split("/")[0]
    except mlflow.exceptions.MlflowException:
        raise UserError(f"model '{model}' not found in {redact_url(tracking_uri)}; pass a checkpoint file, "
                        f"models:/NAME@ALIAS or a run id (see the MLflow UI)") from None
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        if model.startswith("models:/"):  # registered, but its run deleted and purged since (`mlflow gc`)
            raise UserError(f"{model} is version {version.version} of {name}, whose run {run_id} is gone (deleted "
                            f"and purged) with its files; pass another version or a checkpoint file") from None
        raise UserError(f"model '{model}' not found in {redact_url(tracking_uri)}; pass a checkpoint file, "
                        f"models:/NAME@ALIAS or a run id (see the MLflow UI)") from None
    return run_id


def download(run_id: str, path: str, tracking_uri: str, dst: Path) -> Path:
    try:
        return Path(MlflowClient(tracking_uri=tracking_uri).download_artifacts(run_id, path, str(dst)))
    except (mlflow.exceptions.MlflowException, OSError):
        raise UserError(f"run {run_id} has no {path}; pass a model registered by `unet-opt retrain`") from None
