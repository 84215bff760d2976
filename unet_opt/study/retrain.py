"""`unet-opt retrain --best`: the study's best trial config, trained on train+val for the trial's best epoch
count, tested on the held-out split, checkpointed and registered as `unet-opt-<study>@champion`, through
the same run path as a trial (`runs.runner`)."""

from __future__ import annotations

import logging

import optuna

from unet_opt import runtime
from unet_opt.config.paths import Paths
from unet_opt.config.schema import Config
from unet_opt.core.data import split_indices
from unet_opt.core.train import Fit, fit_job
from unet_opt.errors import UserError
from unet_opt.parallel.placement import Placement
from unet_opt.runs.runner import Runner, RunSpec, RunSummary, epoch_count, train_and_record
from unet_opt.study.best_config import best_trial_config, data_folders_from_here
from unet_opt.study.ledger import TrialLedger
from unet_opt.study.storage import RETRAIN_WAY_OUT, check_its_data, load_existing
from unet_opt.study.summary import LAST_RETRAIN, describe_parent
from unet_opt.tracking.registry import Registration, test_metric
from unet_opt.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def retrain_best(paths: Paths, storage_url: str, tracking_uri: str, study_name: str | None,
                 placement: Placement, epochs: int | None = None, model_name: str | None = None,
                 fit: Fit = fit_job, data: str | None = None, promote: bool = False) -> RunSummary:
    """`data`: where the study's data folder is now, if it moved (its files are checked to be the study's).
    `promote`: move @champion to the new version even if the retrain there tests better."""
    study, setup, storage = load_existing(storage_url, study_name)
    cfg, best = best_trial_config(study, setup)
    if data is not None:
        folders = [data]
    elif cfg.data.dataset == "synthetic":
        folders = ["synthetic"]
    else:
        folders = data_folders_from_here(cfg.data.dataset, paths.home)
    # the trial's best epoch count: it was chosen on val, and val is now part of the training data
    cfg = cfg.replace({"train.epochs": epochs or best.user_attrs.get("best_epoch") or cfg.train.epochs})
    name = model_name or f"unet-opt-{study.study_name}"
    with Runner(paths, placement, fit) as runner:
        cfg = the_study_s_data(cfg, folders, setup, runner, study.study_name)  # before any of it is decoded
        split_names = setup["split"]
        split = split_indices(split_names, runner.check(cfg).names)  # bad input fails here, before any write
        tracker = Tracker(tracking_uri, study.study_name, paths.artifacts)
        runner.use_tracker(tracker)
        tracker.fail_runs_of_dead_processes()  # a killed retrain's run ends FAILED, not RUNNING for ever
        TrialLedger(study, storage, tracker).mirror_ended()
        with tracker.stopped_runs_killed():
            run_id = tracker.start_run(f"retrain-trial-{best.number:04d}", cfg.params(),
                                       {"unet_opt.role": "retrain", "optuna.study": study.study_name,
                                        "source_trial": best.number, "seed": cfg.train.seed,
                                        "devices": placement.describe()})
            spec = RunSpec(cfg, split, split_names, train_on_val=True, test=True,
                           checkpoint=paths.checkpoints / f"{name}-{run_id[:8]}.pt", register_as=name,
                           promote=promote, name=f"retrain of trial #{best.number}")
            log.info("retraining trial #%d of '%s' on train+val (%d images) for %s on %s, testing on %d images",
                     best.number, study.study_name, len(spec.fit_split["train"]), epoch_count(cfg.train.epochs),
                     placement.describe(), len(spec.split["test"]))
            record = train_and_record(runner, spec, run_id)
        with runtime.stops_deferred("recording the retrain in its study"):  # its registration and its study agree
            remember_retrain(study, tracker, cfg, best.number, record.registration, record.test)
    return RunSummary(tracker.experiment_name, tracker.experiment_id, run_id, record.fit, record.test,
                      record.checkpoint, record.registration, best.number)


def remember_retrain(study: optuna.Study, tracker: Tracker, cfg: Config, trial: int, registration: Registration,
                     test: dict[str, float]) -> None:
    """The study keeps what its last retrain registered (`report` shows it), and its run's note says it."""
    metric = test_metric(cfg.search.goal)
    study.set_user_attr(LAST_RETRAIN, {"trial": trial, "model": registration.model, "version": registration.version,
                                       "metric": metric, "value": test.get(metric),
                                       "champion_moved_to_it": not registration.kept,
                                       "champion_left_on": registration.kept_on or None})
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    try:  # the note counts the trials the last search asked for, not the study's first one
        target = tracker.client.get_run(parent_id).data.tags.get("trials_target")
        describe_parent(study, tracker, parent_id, cfg.replace({"search.trials": int(target or cfg.search.trials)}))
    except Exception as e:  # e.g. the study's runs are in another MLflow store: the next search writes the note
        log.warning("could not write the last retrain into the study's run (%s)", e)


def the_study_s_data(cfg: Config, folders: list[str], setup: dict, runner: Runner, name: str) -> Config:
    """`cfg` on the first of `folders` that holds the study's data (checked by content); the first one's
    problem when none does."""
    problem = None
    for folder in folders:
        candidate = cfg.replace({"data.dataset": folder})
        try:
            check_its_data(setup, folder, lambda c=candidate: runner.data_digests(c), name, RETRAIN_WAY_OUT)
            return candidate
        except UserError as e:
            problem = problem or e
    raise problem
