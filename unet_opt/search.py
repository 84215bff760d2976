"""The Optuna side: storage, study, sampler, pruner, the objective, and what a study holds.

`run(cfg, paths)` drives an ask/tell loop until the study has `search.trials` finished (complete or
pruned) trials. Each trial: space -> `suggest_*` -> a trial config -> `train.fit` with an `on_epoch`
callback that logs to MLflow and reports to Optuna (which may prune) -> artifacts -> `tell`.
A trial that raises ends FAIL with the reason and the search goes on; Ctrl-C ends the trial as
interrupted and returns a summary.
"""

from __future__ import annotations

import csv
import logging
import math
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy.exc
import torch
from optuna.trial import TrialState

from unet_opt.artifacts import write_trial_artifacts
from unet_opt.config import Config, Param, Paths, redact_url, sqlite_file, to_toml
from unet_opt.data import SegmentationData, load_data, make_split, split_indices
from unet_opt.distributed import Layout, check_divisible, die_with_parent, launch, plan
from unet_opt.errors import UserError
from unet_opt.tracking import Tracker, ui_command
from unet_opt.train import FitResult, fit_trial

log = logging.getLogger(__name__)

# Heartbeats are used with ask/tell here, with our own `Heartbeat` thread; Optuna warns about both.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_SECONDS = 10  # a RUNNING trial whose heartbeat is older than GRACE_SECONDS is dead
GRACE_SECONDS = 30
MAX_FAILURES_IN_A_ROW = 5
SETUP_WAIT_SECONDS = 30  # how long a second machine waits for the first to finish setting up a new study
DEAD_WORKER = "worker died (killed or crashed)"
MLFLOW_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "FAILED"}


# ---------------------------------------------------------------------------------------------
# Storage, sampler, pruner


def open_storage(url: str, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats (SQLite, PostgreSQL, MySQL). `must_exist`: never create a database."""
    path = sqlite_file(url)
    if path:
        if must_exist and not path.is_file():
            raise UserError(f"no study storage at {path}; run `unet-opt search` in this folder first "
                            f"(or pass --home / --storage)")
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    try:
        for attempt in (1, 2):
            try:
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS,
                                                  grace_period=GRACE_SECONDS, **kwargs)
            except sqlalchemy.exc.DatabaseError as e:
                if attempt == 2 or not creating_tables_at_once(e):
                    raise
                time.sleep(2)  # another process was creating the same tables in a new database just now
    except Exception as e:  # unreachable server, bad URL, missing driver
        raise UserError(f"cannot open the study storage {redact_url(url)} ({type(e).__name__}: "
                        f"{redact_url(str(e)).splitlines()[0][:200]}); check --storage") from None


def creating_tables_at_once(error: sqlalchemy.exc.DatabaseError) -> bool:
    """Two processes opening one new database both create its tables; the slower one fails like this.
    PostgreSQL: a duplicate table or type (ProgrammingError, IntegrityError); SQLite: "already exists"."""
    return (isinstance(error, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError))
            or "already exists" in str(error))


def make_sampler(cfg: Config, worker: int = 0) -> optuna.samplers.BaseSampler:
    """Worker k of `--workers K` seeds its sampler with seed + k: the same seed would draw the same trials."""
    s = cfg.search
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed + worker)
    return optuna.samplers.TPESampler(seed=s.seed + worker, n_startup_trials=s.startup_trials)


def max_epochs(cfg: Config) -> int:
    p = cfg.space.get("train.epochs")
    return int(p.high if p.type != "categorical" else max(p.choices)) if p else cfg.train.epochs


class StudyHyperband(optuna.pruners.BasePruner):
    """Optuna's Hyperband, and where its last bracket first judges, the bottom quarter of the study too.

    Hyperband judges a trial only against trials of its own bracket, so the first trials of a bracket
    have no one to lose to and run on: on the embedded data trial 1 ran 11-15 epochs at a Dice of
    0.2-0.44 on sampler seeds 0-3, far behind trial 0 after 3 epochs. At epoch
    3**(brackets - 1), which every bracket has judged its trials by, a trial is also pruned when its
    value is in the bottom quarter of every other trial's at that epoch (README, Measured: below the
    median instead pruned a slow climber that would have led the sampler to the best trial).
    """

    def __init__(self, brackets: int, max_epochs: int):
        # Optuna makes floor(log3(max_resource)) + 1 brackets, so 3**b - 1 is the largest max_resource
        # that makes b; fewer when the space's epochs end sooner. Every bracket judges again after
        # epochs 9, 27, ... for trials that run that long.
        max_resource = min(max_epochs, 3 ** brackets - 1)
        self.hyperband = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource,
                                                        reduction_factor=3)
        self.study_epoch = 1  # 3**(brackets - 1): where the last bracket first judges
        while self.study_epoch * 3 <= max_resource:
            self.study_epoch *= 3

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        # Hyperband first, always: it records the trial's rung results, which later trials are judged on
        return self.hyperband.prune(study, trial) or self.in_bottom_quarter(study, trial)

    def in_bottom_quarter(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        epoch = trial.last_step
        if epoch != self.study_epoch:
            return False
        others = [t.intermediate_values[epoch] for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number and epoch in t.intermediate_values]
        others = [v for v in others if math.isfinite(v)]
        if not others:
            return False
        value = trial.intermediate_values[epoch]
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            return value < float(np.percentile(others, 25))
        return value > float(np.percentile(others, 75))


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    name = cfg.search.pruner
    if name == "hyperband":
        # The default 2 brackets (README, Measured): a third, first judging after epoch 9, spent more
        # epochs on 3 seeds and found no better trial.
        return StudyHyperband(cfg.search.brackets, max_epochs(cfg))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
    """The space file's params -> `suggest_*` calls -> {"train.lr": 0.003, ...}."""
    values = {}
    for name, p in space.items():
        if p.type == "float":
            values[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
        elif p.type == "int":
            values[name] = trial.suggest_int(name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            values[name] = trial.suggest_categorical(name, list(p.choices))
    return values


def comparable(cfg: Config) -> dict[str, Any]:
    """What must stay the same for trials of one study to be comparable (not trials, storage, device...)."""
    keep = {k: v for k, v in cfg.flat().items()
            if k.split(".")[0] in ("data", "model", "train") and k != "train.device"}
    keep["search.metric"] = cfg.search.metric
    keep["space"] = {name: asdict(p) | {"choices": list(p.choices)} for name, p in cfg.space.items()}
    return keep


# ---------------------------------------------------------------------------------------------
# The search


@dataclass
class Summary:
    study: str
    target: int
    counts: dict[str, int]
    best: dict[str, Any] | None
    ran: int = 0
    already_done: bool = False
    interrupted: bool = False
    failed_out: bool = False  # stopped after MAX_FAILURES_IN_A_ROW failures
    stopped_reason: str = ""
    tracking_uri: str = ""
    parent_run_id: str = ""
    metric: str = "val_dice"
    ui: str = ""


class DataCache:
    """Data sets by the config that shapes them, so trials with the same image size share one."""

    def __init__(self, cache_dir: Path, max_entries: int = 4):
        self.entries: dict[str, SegmentationData] = {}
        self.cache_dir, self.max_entries = cache_dir, max_entries

    def get(self, cfg: Config) -> SegmentationData:
        key = repr((cfg.data, cfg.model.depth))
        if key not in self.entries:
            self.put(cfg, load_data(cfg.data, cfg.model.depth, self.cache_dir))
        return self.entries[key]

    def put(self, cfg: Config, data: SegmentationData) -> None:
        if len(self.entries) >= self.max_entries:
            self.entries.pop(next(iter(self.entries)))
        self.entries[repr((cfg.data, cfg.model.depth))] = data


class Heartbeat:
    """Records the trial's heartbeat in the storage while it runs, so a killed worker's trial is found."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int):
        self.storage, self.trial_id, self.stop = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self) -> None:
        while not self.stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # a missed beat is not worth killing the trial over
                log.debug("heartbeat failed: %s", e)
            self.stop.wait(HEARTBEAT_SECONDS)

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def study_name(cfg: Config) -> str:
    return cfg.search.study or Path(cfg.source).stem


def batch_sizes(cfg: Config) -> list[int]:
    p = cfg.space.get("train.batch_size")
    return (p.values() or []) if p is not None else [cfg.train.batch_size]


@dataclass
class Outcome:
    """How one worker's loop ended."""

    failed_out: bool = False
    stopped_reason: str = ""


def run(cfg: Config, paths: Paths, layout: Layout | None = None, workers: int = 1) -> Summary:
    """Run trials until the study has `cfg.search.trials` finished ones (or the timeout passes).

    `layout`: the processes/GPUs each trial trains on; `workers`: trials run at once on this machine,
    each worker a process with its own share of the devices, all on the one study and parent run.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(cfg)
    layout = layout or plan(cfg.train.device, None, None)  # `--device cuda` without a GPU fails here
    layouts = layout.split(workers) if workers > 1 else [layout]
    check_divisible(batch_sizes(cfg), layouts[0].procs)
    first_data = load_data(cfg.data, cfg.model.depth, paths.cache)  # bad data fails here, before anything else
    tracking_uri = paths.tracking_uri(cfg.search.tracking_uri)
    if tracking_uri.startswith("sqlite"):  # a server is checked first, so that an unreachable one leaves no files
        storage = open_storage(paths.storage_url(cfg.search.storage))
        tracker = Tracker(tracking_uri, name, paths.artifacts)
    else:
        tracker = Tracker(tracking_uri, name, paths.artifacts)
        storage = open_storage(paths.storage_url(cfg.search.storage))

    study = join_or_create_study(storage, cfg, name, tracker, first_data.names)
    split = split_indices(study.user_attrs["split"], first_data.names)
    close_stale_trials(study, storage, tracker)

    summary = Summary(name, cfg.search.trials, {}, None, tracking_uri=redact_url(tracking_uri),
                      metric=cfg.search.metric, ui=ui_command(redact_url(tracking_uri)))
    if count_finished(study) >= cfg.search.trials:
        summary.already_done = True
        return fill_summary(summary, study)

    parent_id = tracker.open_parent(study.user_attrs.get("mlflow_parent_run_id"), name)
    study.set_user_attr("mlflow_parent_run_id", parent_id)
    summary.parent_run_id = parent_id
    deadline = time.time() + cfg.search.timeout if cfg.search.timeout else float("inf")
    trials_before = len(study.get_trials(deepcopy=False))
    ours = [worker_id()]  # this process's and its workers' ids (host:pid), to count the trials run here
    if workers > 1:
        log.info("%d workers, each training its trials on %s", workers, layouts[0].describe())
    elif layout.procs > 1:
        log.info("each trial trains on %s", layout.describe())
    try:
        if workers == 1:
            cache = DataCache(paths.cache)
            cache.put(cfg, first_data)  # trials at the base size use the data already checked
            outcome = work(study, storage, cfg, tracker, parent_id, cache, split, layout, deadline)
        else:
            outcome = run_workers(cfg, paths, layouts, parent_id, deadline, ours)
        summary.failed_out, summary.stopped_reason = outcome.failed_out, outcome.stopped_reason
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.ran = sum(t.number >= trials_before and t.user_attrs.get("worker") in ours
                          for t in study.get_trials(deepcopy=False))  # not other machines' trials
        close_stale_trials(study, storage, tracker)  # another machine's dead worker may be stale by now
        log_study_artifacts(study, tracker, parent_id, cfg)
        tracker.end(parent_id, "KILLED" if summary.interrupted else "FINISHED")
    return fill_summary(summary, study)


def join_or_create_study(storage: optuna.storages.BaseStorage, cfg: Config, name: str, tracker: Tracker,
                         names: list[str]) -> optuna.Study:
    """The study `name`: created here (config, split, parent run stored at once), or joined.

    Creating a study is atomic in the storage, so when the same command starts on several machines
    at once exactly one of them sets the study up and the others wait for it: one split, one parent run.
    """
    direction = optuna.study.StudyDirection.MAXIMIZE if cfg.search.direction == "maximize" \
        else optuna.study.StudyDirection.MINIMIZE
    try:
        storage.create_new_study([direction], name)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(cfg), pruner=make_pruner(cfg))
    if study.direction != direction:
        raise UserError(f"study '{name}' {study.direction.name.lower()}s its metric but search.metric = "
                        f"{cfg.search.metric} is to {cfg.search.direction}; use another --study name")
    if not created:
        waited = time.monotonic()
        while "mlflow_parent_run_id" not in study.user_attrs and not study.get_trials(deepcopy=False) \
                and time.monotonic() - waited < SETUP_WAIT_SECONDS:
            time.sleep(0.5)  # another machine is setting it up right now
        if "config" in study.user_attrs:
            check_same_study(study.user_attrs["config"], comparable(cfg), name)
    attrs = study.user_attrs  # what is missing (a new study, or its creator died setting it up) is set here
    if "config" not in attrs:
        study.set_user_attr("config", comparable(cfg))
        study.set_user_attr("config_toml", to_toml(cfg, redact_url))  # what a retrain starts from
    if "split" not in attrs:
        study.set_user_attr("split", make_split(names, cfg.data.val_fraction, cfg.data.test_fraction,
                                                cfg.data.split_seed))
    if "mlflow_parent_run_id" not in attrs:
        study.set_user_attr("mlflow_parent_run_id", tracker.open_parent(None, name))
    return study


def work(study: optuna.Study, storage: optuna.storages.BaseStorage, cfg: Config, tracker: Tracker, parent_id: str,
         cache: "DataCache", split: dict[str, list[int]], layout: Layout, deadline: float) -> Outcome:
    """One worker's loop: ask, train, tell, until finished plus running trials (of every worker and machine)
    reach the target. Trials that fail do not count, so the last worker standing replaces them."""
    outcome, failures = Outcome(), 0
    while True:
        close_stale_trials(study, storage, tracker)
        finished, running = count_finished(study), count_running(study)
        if finished + running >= cfg.search.trials:
            return outcome
        if time.time() > deadline:
            outcome.stopped_reason = f"timeout of {cfg.search.timeout:g} s reached"
            return outcome
        state = run_trial(study, storage, cfg, tracker, parent_id, cache, split, finished + running + 1, layout)
        if state is None:  # one too many: the check above ends the loop, or asks again if a trial failed
            continue
        failures = failures + 1 if state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            outcome.failed_out = True
            outcome.stopped_reason = f"{failures} trials in a row failed; see their fail_reason"
            return outcome


def run_workers(cfg: Config, paths: Paths, layouts: list[Layout], parent_id: str, deadline: float,
                ids: list[str]) -> Outcome:
    """`--workers K`: K processes run `work` on the one study; this process waits for them.
    Their worker ids are added to `ids`."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    level = logging.getLogger("unet_opt").level
    processes = [context.Process(target=worker_main, name=f"worker-{i}",
                                 args=(i, cfg, paths, layout, parent_id, deadline, level))
                 for i, layout in enumerate(layouts)]
    for p in processes:
        p.start()
        ids.append(f"{socket.gethostname()}:{p.pid}")
    try:
        for p in processes:
            p.join()
    except KeyboardInterrupt:
        # a terminal's Ctrl-C reached the workers too; a signal sent to this process alone is passed on
        stop_workers(processes)
        raise
    finally:
        for p in processes:
            if p.is_alive():
                p.kill()
            p.join()
    outcome = Outcome()
    codes = [p.exitcode for p in processes]
    outcome.failed_out = any(code == 1 for code in codes)
    if outcome.failed_out:
        outcome.stopped_reason = f"a worker stopped after {MAX_FAILURES_IN_A_ROW} trials in a row failed"
    elif any(code not in (0, 1) for code in codes):
        outcome.stopped_reason = f"worker exit codes {codes}"
    elif time.time() > deadline:
        outcome.stopped_reason = f"timeout of {cfg.search.timeout:g} s reached"
    return outcome


def stop_workers(processes: list[multiprocessing.process.BaseProcess], grace: float = 5.0,
                 after_nudge: float = 60.0) -> None:
    """Give interrupted workers time to record their trials as interrupted; nudge those still going.
    At most `grace + after_nudge` seconds in all, however many there are; the caller kills the rest."""
    end = time.monotonic() + grace
    for p in processes:
        p.join(max(0.0, end - time.monotonic()))
    for p in processes:
        if p.is_alive():
            os.kill(p.pid, signal.SIGINT)
    end = time.monotonic() + after_nudge
    for p in processes:
        p.join(max(0.0, end - time.monotonic()))


def worker_main(index: int, cfg: Config, paths: Paths, layout: Layout, parent_id: str, deadline: float,
                level: int) -> None:
    """One `--workers` process: its own storage and MLflow connections, the shared study and parent run.
    It dies with the launching process, as the trial's ranks do."""
    die_with_parent()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[w{index}] %(message)s"))
    root = logging.getLogger("unet_opt")
    root.handlers[:], root.propagate = [handler], False
    root.setLevel(level)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if layout.device == "cpu" and layout.procs == 1 and layout.threads:
        torch.set_num_threads(layout.threads)
    name = study_name(cfg)
    storage = open_storage(paths.storage_url(cfg.search.storage))
    tracker = Tracker(paths.tracking_uri(cfg.search.tracking_uri), name, paths.artifacts)
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(cfg, index),
                              pruner=make_pruner(cfg))
    first = load_data(cfg.data, cfg.model.depth, paths.cache)
    split = split_indices(study.user_attrs["split"], first.names)
    cache = DataCache(paths.cache)
    cache.put(cfg, first)
    try:
        outcome = work(study, storage, cfg, tracker, parent_id, cache, split, layout, deadline)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if outcome.stopped_reason:
        log.info("stopped: %s", outcome.stopped_reason)
    raise SystemExit(1 if outcome.failed_out else 0)


def check_same_study(stored: dict[str, Any], current: dict[str, Any], name: str) -> None:
    changed = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
    if changed:
        raise UserError(f"study '{name}' was made with a different configuration (changed: {', '.join(changed[:4])}); "
                        f"run it with its original settings or start a new study with --study NEW_NAME")


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def count_running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def is_surplus(study: optuna.Study, number: int, target: int) -> bool:
    """Trial `number` is not needed when the trials numbered before it, finished or running, already reach
    `target`. Counting by number settles a race of two workers that both saw room for one more trial."""
    ahead = [t for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)) if t.number < number]
    return len(ahead) >= target


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead_here(worker: str | None) -> bool:
    """A worker of this machine whose process is gone (another machine's is judged by heartbeat)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def close_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, tracker: Tracker) -> None:
    """Trials of dead workers end FAIL here and in MLflow: at once for a dead process on this machine,
    after GRACE_SECONDS without a heartbeat for any other."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        if is_dead_here(t.user_attrs.get("worker")):
            storage.set_trial_user_attr(t._trial_id, "fail_reason", DEAD_WORKER)  # before: finished trials are frozen
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    optuna.storages.fail_stale_trials(study)  # the heartbeat rule; Optuna records no reason for these
    for t in running:
        if storage.get_trial(t._trial_id).state == TrialState.FAIL:
            if "mlflow_run_id" in t.user_attrs:
                tracker.end_if_running(t.user_attrs["mlflow_run_id"], "FAILED",
                                       {"optuna.state": "FAIL", "optuna.state_reason": DEAD_WORKER})
            log.warning("trial #%d was left running by a dead worker; marked FAIL", t.number)


def run_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, cfg: Config, tracker: Tracker,
              parent_id: str, cache: DataCache, split: dict[str, list[int]], position: int,
              layout: Layout) -> TrialState | None:
    """One trial, which always ends recorded: COMPLETE, PRUNED or FAIL with its reason; None when the
    trial turned out to be one too many (another worker asked at the same moment) and went back to
    Optuna's queue as WAITING, to be the first trial that a later, larger --trials runs."""
    trial = study.ask()
    if is_surplus(study, trial.number, cfg.search.trials):
        storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
        return None
    trial.set_user_attr("worker", worker_id())  # a killed worker's trial is found by its pid on this machine,
    with Heartbeat(storage, trial._trial_id):  # and by its missing heartbeat from any other
        try:
            return train_and_record(study, trial, cfg, tracker, parent_id, cache, split, position, layout)
        except Exception as e:  # the tracking store failed around the training: still record the trial
            reason = f"{type(e).__name__}: {redact_url(str(e)).splitlines()[0][:300]}"
            if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                trial.set_user_attr("fail_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
            log.warning("trial #%d FAIL  [%s]", trial.number, reason)
            return TrialState.FAIL


def train_and_record(study: optuna.Study, trial: optuna.Trial, cfg: Config, tracker: Tracker, parent_id: str,
                     cache: DataCache, split: dict[str, list[int]], position: int, layout: Layout) -> TrialState:
    params = suggest(trial, cfg.space)
    trial_cfg = cfg.replace({**params, "train.seed": cfg.train.seed + trial.number})
    metric, target = cfg.search.metric, cfg.search.trials
    shown = " ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                     for k, v in params.items())
    log.info("trial %d/%d (#%d): %s", position, target, trial.number, shown)
    run_id = tracker.start_trial(
        parent_id, study.study_name, trial.number,
        params=trial_cfg.params(),
        tags={"seed": trial_cfg.train.seed, "sampler_seed": cfg.search.seed, "processes": layout.procs,
              "devices": layout.describe(), "worker": worker_id()})
    trial.set_user_attr("mlflow_run_id", run_id)
    best_so_far = best_value(study)
    pick = max if cfg.search.direction == "maximize" else min
    reported: list[float] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        tracker.log_metrics(run_id, metrics, step=epoch)
        # the pruner sees the trial's best so far, which is what the trial will be scored by:
        # one noisy epoch then cannot get a trial pruned that had already done well
        reported.append(pick(reported[-1], metrics[metric]) if reported else metrics[metric])
        trial.report(reported[-1], epoch)
        log.info("  epoch %d/%d  %s %.4f  loss %.3f  (%.1f s)%s", epoch, trial_cfg.train.epochs, metric,
                 metrics[metric], metrics["train_loss"], metrics["epoch_seconds"],
                 f"  study best {best_so_far:.4f}" if best_so_far is not None else "")
        return trial.should_prune()

    result, state, value, reason = FitResult(), TrialState.FAIL, None, ""
    try:
        data = cache.get(trial_cfg)  # checked and cached here; other processes read the same cache
        result = launch(layout, fit_trial, (trial_cfg, split, metric, cfg.search.direction == "maximize",
                                            str(cache.cache_dir), data if layout.procs == 1 else None), on_epoch)
        if result.stop_reason == "nan_loss":
            state, reason = TrialState.PRUNED, "nan_loss"
        elif result.stop_reason == "callback":
            state, reason = TrialState.PRUNED, f"pruned after epoch {result.epochs_run}"
        else:
            state, value, reason = TrialState.COMPLETE, result.best_metrics[metric], result.stop_reason
    except KeyboardInterrupt:
        finish_trial(study, trial, tracker, run_id, TrialState.FAIL, None, "interrupted", result, "KILLED")
        log.info("trial #%d interrupted", trial.number)
        raise
    except torch.OutOfMemoryError:
        reason = f"out_of_memory at batch_size={trial_cfg.train.batch_size}"
        torch.cuda.empty_cache()
    except Exception as e:  # a failing trial never kills the search
        reason = f"{type(e).__name__}: {e}"
        log.debug("trial %d failed", trial.number, exc_info=True)

    try:
        with tempfile.TemporaryDirectory() as tmp:
            write_trial_artifacts(Path(tmp), result, cache.get(trial_cfg), split["val"],
                                  to_toml(trial_cfg, redact_url), metric)
            tracker.log_files(run_id, Path(tmp))
    except Exception as e:
        log.warning("trial %d: could not write its artifacts (%s)", trial.number, e)
    finish_trial(study, trial, tracker, run_id, state, value, reason, result)
    best = best_value(study)
    if best is not None:
        tracker.log_metrics(parent_id, {"best_value": best}, step=trial.number)
    log.info("trial #%d %s%s  [%s]%s", trial.number, state.name,
             f" {metric} {value:.4f} (best epoch {result.best_epoch})" if value is not None else "", reason,
             f"  study best {best:.4f}" if best is not None else "")
    return state


def finish_trial(study: optuna.Study, trial: optuna.Trial, tracker: Tracker, run_id: str, state: TrialState,
                 value: float | None, reason: str, result: FitResult, mlflow_status: str | None = None) -> None:
    """Record the outcome in both stores: Optuna first (it decides the count), then the MLflow run."""
    for key, v in (("stop_reason" if state != TrialState.FAIL else "fail_reason", reason),
                   ("best_epoch", result.best_epoch), ("epochs_run", result.epochs_run)):
        trial.set_user_attr(key, v)
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    tracker.set_tags(run_id, {"optuna.state": state.name, "optuna.state_reason": reason,
                              "early_stopped": str(result.stop_reason == "early_stopping").lower(),
                              "best_epoch": result.best_epoch, "epochs_run": result.epochs_run})
    tracker.end(run_id, mlflow_status or MLFLOW_STATUS[state])


def best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no complete trial yet
        return None


# ---------------------------------------------------------------------------------------------
# What a study holds: summaries, reports, the parent run's files


def trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            "reason": t.user_attrs.get("stop_reason") or t.user_attrs.get("fail_reason")
            or (DEAD_WORKER if t.state == TrialState.FAIL else ""),
            "best_epoch": t.user_attrs.get("best_epoch"), "epochs_run": t.user_attrs.get("epochs_run")}


def fill_summary(summary: Summary, study: optuna.Study) -> Summary:
    trials = study.get_trials(deepcopy=False)
    summary.counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        summary.best = trial_record(study.best_trial)
    return summary


def load_existing(storage_url: str, name: str | None) -> optuna.Study:
    """A study that must already exist: by name, or the only one in the storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
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
    return optuna.load_study(study_name=name, storage=storage)


def report(storage_url: str, name: str | None) -> dict[str, Any]:
    """The JSON `unet-opt report --json` prints."""
    study = load_existing(storage_url, name)
    trials = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    best = None
    if any(t["state"] == "COMPLETE" for t in trials):
        b = trial_record(study.best_trial)
        best = {k: b[k] for k in ("number", "value", "params", "mlflow_run_id")}
    return {"study": study.study_name, "direction": study.direction.name.lower(),
            "metric": study.user_attrs.get("config", {}).get("search.metric", ""),
            "best": best, "trials": trials}


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    storage = open_storage(storage_url, must_exist=True)
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = {st.name: sum(t.state == st for t in trials) for st in TrialState if st != TrialState.WAITING}
        rows.append({"study": s.study_name, "trials": len(trials), **counts, "best": best_value(study),
                     "started": s.datetime_start.isoformat(timespec="seconds") if s.datetime_start else ""})
    return rows


def log_study_artifacts(study: optuna.Study, tracker: Tracker, parent_id: str, cfg: Config) -> None:
    """On the parent run: the Optuna plots in one self-contained HTML, the trials table, the space."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_trials_csv(study, folder / "trials.csv")
            (folder / "space.toml").write_text(to_toml(cfg, redact_url), encoding="utf-8")
            write_study_plots(study, folder / "study_plots.html")
            tracker.log_files(parent_id, folder)
    except Exception as e:  # the study itself is safe in the storage; only its summary files are missing
        log.warning("could not log the study's plots and tables (%s)", e)


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "value", *names, "best_epoch", "epochs_run", "reason", "mlflow_run_id",
                    "seconds"])
        for t in trials:
            r = trial_record(t)
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
            w.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                        *[t.params.get(n, "") for n in names], r["best_epoch"], r["epochs_run"], r["reason"],
                        r["mlflow_run_id"], seconds])


def write_study_plots(study: optuna.Study, path: Path) -> None:
    """Optimisation history, parameter importances, parallel coordinates and intermediate values."""
    from optuna import visualization as vis

    parts, first = [], True
    for title, plot in (("optimization history", vis.plot_optimization_history),
                        ("parameter importances", vis.plot_param_importances),
                        ("parallel coordinates", vis.plot_parallel_coordinate),
                        ("intermediate values", vis.plot_intermediate_values)):
        try:
            figure = plot(study)
        except Exception as e:  # e.g. importances need two complete trials
            parts.append(f"<h2>{title}</h2><p>not available yet: {e}</p>")
            continue
        parts.append(f"<h2>{title}</h2>" + figure.to_html(full_html=False, include_plotlyjs=first))
        first = False  # one copy of plotly.js serves every figure: the file works offline
    path.write_text(f"<html><head><meta charset='utf-8'><title>{study.study_name}</title></head><body>"
                    f"<h1>study {study.study_name}</h1>{''.join(parts)}</body></html>", encoding="utf-8")
