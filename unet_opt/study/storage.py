"""The study storage: opening it, creating or joining a study, loading one that must already exist."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from unet_opt import runtime
from unet_opt.config.paths import (
    check_is_store_of,
    create_atomically,
    make_folder,
    redact_url,
    sqlite_file,
    unreadable_store,
)
from unet_opt.config.schema import BEFORE_THE_FIELD_EXISTED, Config, to_toml
from unet_opt.errors import UserError
from unet_opt.parallel.processes import is_dead_here, worker_id
from unet_opt.study.pruning import make_pruner, make_sampler
from unet_opt.study.states import FINISHED
from unet_opt.study.storage_template import new_study_database

if TYPE_CHECKING:
    from unet_opt.tracking.tracker import Tracker  # for the annotation only: this module needs no MLflow

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10  # a RUNNING trial whose heartbeat is older than GRACE_SECONDS is dead
GRACE_SECONDS = 30
SETUP_WAIT_SECONDS = 30  # how long a second machine waits for the first to finish setting up a new study
UNRECORDED_CREATOR_SECONDS = 5  # a live creator records itself at once; after this long, no one will


def open_storage(url: str, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats (SQLite, PostgreSQL, MySQL). `must_exist`: never create a database."""
    runtime.quiet_optuna()  # every use of Optuna starts here
    path = sqlite_file(url)
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    if path:
        if must_exist and not path.is_file():
            raise UserError(f"no study storage at {path}; run `unet-opt search` in this folder first "
                            f"(or pass --home / --storage)")
        make_folder(path.parent, "--storage")
        if path.exists():
            check_is_store_of(path, "studies", "an Optuna study storage", "--storage")
        else:  # creating the tables is not atomic: a new database is built aside
            try:
                create_atomically(path, new_study_database)
            except sqlalchemy.exc.SQLAlchemyError as e:
                raise UserError(f"cannot create the study storage {path} ({type(e).__name__}); check --storage "
                                f"and that the folder is writable") from None
    try:
        for attempt in (1, 2):
            try:
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS,
                                                  grace_period=GRACE_SECONDS, **kwargs)
            except sqlalchemy.exc.DatabaseError as e:
                if attempt == 2 or not creating_tables_at_once(e):
                    raise
                time.sleep(2)  # another process was creating the same tables in a new database just now
    except Exception as e:  # unreachable server, bad URL, missing driver, a damaged file
        if path:
            raise unreadable_store(path, "an Optuna study storage", e) from None
        detail = f"{type(e).__name__}: {redact_url(str(e)).splitlines()[0][:200]}"
        raise UserError(f"cannot open the study storage {redact_url(url)} ({detail}); check --storage") from None


def creating_tables_at_once(error: sqlalchemy.exc.DatabaseError) -> bool:
    """Two processes opening one new database both create its tables; the slower one fails like this.
    PostgreSQL: a duplicate table or type (ProgrammingError, IntegrityError); SQLite: "already exists"."""
    return (isinstance(error, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError))
            or "already exists" in str(error))


SETUP_KEYS = ("config", "config_toml", "split")
SETUP_PREFIX = "unet_opt:"  # kept as system attrs: `optuna studies` prints the user attrs whole


def study_setup(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    """What the study `name` was set up with: `config` (what must stay the same), `config_toml` (what a
    retrain starts from) and the fixed `split`. Studies of older versions kept them as user attrs."""
    study_id = storage.get_study_id_from_name(name)
    found = {k: v for k, v in storage.get_study_user_attrs(study_id).items() if k in SETUP_KEYS}
    found.update({k.removeprefix(SETUP_PREFIX): v for k, v in storage.get_study_system_attrs(study_id).items()
                  if k.startswith(SETUP_PREFIX)})
    return found


def store_setup(storage: optuna.storages.BaseStorage, name: str, key: str, value: Any) -> None:
    storage.set_study_system_attr(storage.get_study_id_from_name(name), SETUP_PREFIX + key, value)


def study_name(cfg: Config) -> str:
    return cfg.search.study or Path(cfg.source).stem


HOW_TRIALS_ARE_DRAWN = ("search.sampler", "search.seed", "search.startup_trials", "search.pruner", "search.brackets")


def comparable(cfg: Config) -> dict[str, Any]:
    """What must stay the same for trials of one study to be comparable (not trials, storage, device...)."""
    keep = {k: v for k, v in cfg.flat().items()
            if k.split(".")[0] in ("data", "model", "train") and k != "train.device"}
    keep.update({k: cfg.get(k) for k in ("search.metric", *HOW_TRIALS_ARE_DRAWN)})
    keep["space"] = {name: asdict(p) | {"choices": list(p.choices)} for name, p in cfg.space.items()}
    return keep


def check_same_study(stored: dict[str, Any], current: dict[str, Any], name: str) -> None:
    changed = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k) and k != "space")
    shown = space_changes(stored.get("space") or {}, current.get("space") or {})  # a space file edited: likeliest
    shown += [f"{k} {as_toml(stored.get(k))} -> {as_toml(current.get(k))}" for k in changed]
    if shown:
        more = f" and {len(shown) - 6} more" if len(shown) > 6 else ""
        raise UserError(f"study '{name}' was made with a different configuration (changed: {', '.join(shown[:6])}"
                        f"{more}); run it with its original settings or start a new study with --study NEW_NAME")


def as_toml(value: Any) -> str:
    """A setting as a space file writes it: true, "tpe", [32, 48]; "unset" for a field a side lacks."""
    return "unset" if value is None else json.dumps(value, default=str)


def space_changes(stored: dict[str, dict], current: dict[str, dict]) -> list[str]:
    """Each searched parameter added, removed or redefined, as a space file's table names it:
    `[space."train.lr"] high 0.05 -> 0.1`."""
    shown = []
    for name in sorted(stored.keys() | current.keys()):
        table, was, now = f'[space."{name}"]', stored.get(name), current.get(name)
        if now is None or was is None:
            shown.append(f"{table} {'removed' if now is None else 'added'}")
        else:
            shown += [f"{table} {k} {as_toml(was.get(k))} -> {as_toml(now.get(k))}" for k in sorted(was.keys() | now.keys())
                      if was.get(k) != now.get(k)]
    return shown


SEARCH_WAY_OUT = "pass the study's data with --data, or start a new study with --study NEW_NAME"
RETRAIN_WAY_OUT = "pass where the study's data is now with --data PATH, or restore its files"


def check_same_data(stored: dict[str, str] | None, current: dict[str, str], split: dict[str, list[str]],
                    name: str, dataset: str, way_out: str = SEARCH_WAY_OUT) -> None:
    """The images (and masks, and class table) of the study's split are the ones it was made with: a data
    folder at the same path (`../data` from another folder), or copied with the same names, may hold others."""
    if not stored:  # the synthetic data, or a study made before data digests were stored
        return
    from unet_opt.core.data import CLASS_TABLE  # here: `report` and `studies` need no torch

    changed = [n for n in [CLASS_TABLE, *(n for part in split.values() for n in part)]
               if n in stored and stored[n] != current.get(n)]
    if changed:
        first = "the class table" if changed[0] == CLASS_TABLE else changed[0]
        where = dataset if Path(dataset).expanduser().is_absolute() else f"{dataset} ({Path(dataset).resolve()})"
        raise UserError(f"the data at {where} is not the data study '{name}' was made with: {len(changed)} of its "
                        f"images or their masks differ (first: {first}); {way_out}")


def existing_setup(storage_url: str, name: str) -> dict[str, Any] | None:
    """The setup of study `name` when a storage file here already holds it, read without creating anything
    (a server's storage is first opened after the data check, as before, and checked there)."""
    path = sqlite_file(storage_url)
    if path is None or not path.is_file():
        return None
    try:
        return study_setup(open_storage(storage_url, must_exist=True), name)
    except KeyError:  # no study of that name yet
        return None


def check_its_data(setup: dict[str, Any], dataset: str, digests: Callable[[], dict[str, str]], name: str,
                   way_out: str = SEARCH_WAY_OUT) -> None:
    """A study's data before a search or a retrain decodes any: synthetic and folder data are not mixed up,
    and a folder has the content the study was made with (`digests()`: the current content, by image name)."""
    stored = (setup.get("config") or {}).get("data.dataset")
    if stored and (stored == "synthetic") != (dataset == "synthetic"):
        if stored == "synthetic":
            made_on, fix = f"the synthetic data, not on the data at {dataset}", "leave out --data"
        else:  # the path as it was given then, from the folder it ran in: not one to pass from here
            made_on = f"the data folder given as {stored}, not on the synthetic data"
            fix = "pass that folder with --data PATH"
        new_study = ", or start a new study with --study NEW_NAME" if way_out == SEARCH_WAY_OUT else ""
        raise UserError(f"study '{name}' was made on {made_on}; {fix}{new_study}")
    if setup.get("data") and "split" in setup and dataset != "synthetic":
        from unet_opt.core.data import split_indices  # here: `report` and `studies` need no torch

        current = digests()
        split_indices(setup["split"], list(current), way_out)  # images gone are named as such, before edited ones
        check_same_data(setup["data"], current, setup["split"], name, dataset, way_out)


def wait_for_its_setup(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """The command that created `study` (here or on another machine) may be setting it up right now: wait
    until it records its parent run, at most SETUP_WAIT_SECONDS. Not at all for a creator that is a dead
    process of this machine, nor for one that never recorded itself (killed as it created the study, or
    the study was made by other tools), which a live one does in milliseconds. What it left unset is then
    set by the caller. (A creator with this process's own host:pid was a former process: a restarted
    container gets the same host name and pid.)"""
    name, started, said = study.study_name, time.monotonic(), False
    while time.monotonic() - started < SETUP_WAIT_SECONDS:
        creator = study_setup(storage, name).get("creator")
        gone = is_dead_here(creator) or creator == worker_id()  # this process did not create it: a former one
        if "mlflow_parent_run_id" in study.user_attrs or study.get_trials(deepcopy=False) or gone \
                or (creator is None and time.monotonic() - started > UNRECORDED_CREATOR_SECONDS):
            return
        if not said and time.monotonic() - started > 2:  # longer than a plain race: say why nothing happens
            log.info("waiting for the command that created study '%s' to set it up (at most %d s)", name,
                     SETUP_WAIT_SECONDS)
            said = True
        time.sleep(0.5)


def join_or_create_study(storage: optuna.storages.BaseStorage, cfg: Config, name: str, names: list[str],
                         digests: dict[str, str], tracker: Tracker,
                         search_params: dict[str, Any]) -> tuple[optuna.Study, Config]:
    """The study `name`: created here (config, split, parent run stored at once), or joined; and the
    config its trials run with (`cfg`, or for a study of an older version, what it began with).

    Creating a study is atomic in the storage, so when the same command starts on several machines
    at once exactly one of them sets the study up and the others wait for it: one split, one parent run.
    The parent run is made last (with `search_params`); one that a killed creator made is taken up.
    """
    direction = optuna.study.StudyDirection[cfg.search.goal.direction.upper()]
    try:
        storage.create_new_study([direction], name)
        created = True
        store_setup(storage, name, "creator", worker_id())  # a later command need not wait for a dead creator
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(cfg), pruner=make_pruner(cfg))
    if study.direction != direction:
        raise UserError(f"study '{name}' {study.direction.name.lower()}s its metric but search.metric = "
                        f"{cfg.search.metric} is to {cfg.search.goal.direction}; use another --study name")
    if not created:
        wait_for_its_setup(study, storage)
    setup = study_setup(storage, name)  # what is missing (a new study, or its creator died setting it up) is set here
    stored = setup.get("config")
    older = {} if stored is None else {k: v for k, v in BEFORE_THE_FIELD_EXISTED.items() if k not in stored}
    # a study made before these fields existed goes on as it trained and was scored, unless they were set
    cfg = cfg.replace({k: v for k, v in older.items() if k not in cfg.space and cfg.get(k) == Config().get(k)})
    cfg = cfg.with_eval_size()  # the study's one evaluation frame, stored with its config below
    if stored is not None:  # (how its trials are drawn is stored since 2026-12-05: older studies are not held to it)
        stored = {**older, **stored}
        current = {k: v for k, v in comparable(cfg).items() if k in stored or k not in HOW_TRIALS_ARE_DRAWN}
        if setup.get("data") and "synthetic" not in (stored["data.dataset"], cfg.data.dataset):
            current["data.dataset"] = stored["data.dataset"]  # its files' content is checked below, not the path
        check_same_study(stored, current, name)
    from unet_opt.core.data import CLASS_TABLE, make_split, split_indices  # here: `report` and `studies` need no torch

    if "split" in setup:  # a study's data checked before anything is written
        split_indices(setup["split"], names)
        check_same_data(setup.get("data"), digests, setup["split"], name, cfg.data.dataset)
    if "config" not in setup:
        study.set_metric_names([cfg.search.goal.metric])  # for optuna-dashboard and the plots: not "Objective Value"
        store_setup(storage, name, "config", comparable(cfg))
        store_setup(storage, name, "config_toml", to_toml(cfg, redact_url))
    split = setup.get("split")
    if split is None:
        split = make_split(names, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
        store_setup(storage, name, "split", split)
    if "data" not in setup and digests:  # also for a study made before they were stored
        kept = {CLASS_TABLE, *(n for part in split.values() for n in part)}
        store_setup(storage, name, "data", {n: d for n, d in digests.items() if n in kept})
    if "mlflow_parent_run_id" not in study.user_attrs:
        study.set_user_attr("mlflow_parent_run_id", tracker.adopt_or_create_parent(name, search_params))
    return study, cfg


def load_existing(storage_url: str, name: str | None) -> tuple[optuna.Study, dict[str, Any], BaseStorage]:
    """A study that must already exist (by name, or the only one in the storage), its setup and its storage."""
    storage = open_storage(storage_url, must_exist=True)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is None:
        if len(names) != 1:
            raise UserError("no study in the storage yet; run `unet-opt search` first" if not names else
                            f"the storage holds {len(names)} studies ({', '.join(names)}); pick one with --study NAME")
        name = names[0]
    if name not in names:
        raise UserError(f"no study named '{name}' in {redact_url(storage_url)}; "
                        f"known: {', '.join(names) or 'none'} (see `unet-opt studies`)")
    return optuna.load_study(study_name=name, storage=storage), study_setup(storage, name), storage


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def count_running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no complete trial yet
        return None
