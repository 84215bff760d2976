"""`unet-opt retrain --best` and `unet-opt train`: one run each, through the same path as a trial.

retrain: the study's best trial config, trained on train+val for the trial's best epoch count, tested
on the held-out split, checkpointed and registered as `unet-opt-<study>@champion`.
train: one run with fixed params (a baseline) in an experiment of its own, validated every epoch
(early stopping applies), tested on the test split and checkpointed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from unet_opt import progress
from unet_opt.config.paths import Paths
from unet_opt.config.schema import Config
from unet_opt.config.space_file import stored_config
from unet_opt.core.data import check_splittable, load_data, make_split, split_indices
from unet_opt.core.encoders import check_pretrained
from unet_opt.core.train import FitResult, fit_on_ranks
from unet_opt.errors import UserError
from unet_opt.parallel.placement import Placement, check_divisible
from unet_opt.runs import runner as runs
from unet_opt.study.reconcile import close_runs_of_ended_trials
from unet_opt.study.storage import load_existing
from unet_opt.tracking.tracker import Tracker

log = logging.getLogger(__name__)

BASELINE_SUFFIX = "-baseline"  # `train` runs never mix into a study's experiment


@dataclass
class RunSummary:
    """What the CLI prints about a retrain or a baseline run."""

    experiment: str
    run_id: str
    fit: FitResult
    test: dict[str, float]
    checkpoint: Path | None
    model_name: str = ""
    version: str = ""
    trial: int | None = None  # the retrained trial


def best_trial_config(study: optuna.Study, setup: dict[str, Any],
                      epochs: int | None) -> tuple[Config, optuna.trial.FrozenTrial]:
    """The best trial's config, exactly as the trial trained it, for `epochs` (default: its best epoch)."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise UserError(f"study '{study.study_name}' has no complete trial yet; run `unet-opt search` until one "
                        f"completes (pruned and failed trials are not retrained)")
    if "config_toml" not in setup:
        raise UserError(f"study '{study.study_name}' holds no stored config (made by an older unet-opt); "
                        f"run a new search with --study NEW_NAME")
    best = study.best_trial
    base = stored_config(setup["config_toml"], f"study '{study.study_name}' (stored config)")
    # the trial's best epoch count: it was chosen on val, and val is now part of the training data
    n_epochs = epochs or best.user_attrs.get("best_epoch") or base.train.epochs
    return base.for_trial(best.params, best.number).replace({"train.epochs": n_epochs}), best


def retrain_best(paths: Paths, storage_url: str, tracking_uri: str, study_name: str | None,
                 placement: Placement, epochs: int | None = None, model_name: str | None = None,
                 fit: runs.Fit = fit_on_ranks) -> RunSummary:
    study, setup = load_existing(storage_url, study_name)
    cfg, best = best_trial_config(study, setup, epochs)
    check_divisible([cfg.train.batch_size], placement.procs, searched=False)
    check_pretrained([cfg.model.encoder], cfg.model.pretrained)
    name = model_name or f"unet-opt-{study.study_name}"
    data = load_data(cfg.data, cfg.model.depth, paths.cache)
    split_names = setup["split"]
    tracker = Tracker(tracking_uri, study.study_name, paths.artifacts)
    tracker.fail_runs_of_dead_processes()  # a killed retrain's run ends FAILED, not RUNNING for ever
    close_runs_of_ended_trials(study, tracker)
    run_id = tracker.start_run(f"retrain-trial-{best.number:04d}", cfg.params(),
                               {"unet_opt.role": "retrain", "optuna.study": study.study_name,
                                "source_trial": best.number, "seed": cfg.train.seed,
                                "devices": placement.describe()})
    spec = runs.RunSpec(cfg, split_indices(split_names, data.names), split_names, train_on_val=True, test=True,
                        checkpoint=paths.checkpoints / f"{name}-{run_id[:8]}.pt", register_as=name)
    log.info("retraining trial #%d of '%s' on train+val (%d images) for %d epochs on %s, testing on %d images",
             best.number, study.study_name, len(spec.fit_split["train"]), cfg.train.epochs, placement.describe(),
             len(spec.split["test"]))
    with tracker.closing(run_id):
        with progress.bar(cfg.train.epochs, "training", "epoch") as epochs:
            result = runs.train(spec, placement, data, paths.cache,
                                runs.logging_callback(tracker, run_id, cfg, epochs=epochs), fit)
        if result.model is None:
            raise UserError(f"the retrain diverged ({result.stop_reason}) in its first epoch; retrain with "
                            f"another --epochs or pick another trial's settings")
        record = runs.record(spec, result, data, tracker, run_id, placement.main_device)
    return RunSummary(tracker.experiment_name, run_id, result, record.test, record.checkpoint, name, record.version,
                      best.number)


def train_baseline(cfg: Config, paths: Paths, placement: Placement, fit: runs.Fit = fit_on_ranks) -> RunSummary:
    cfg = cfg.with_eval_size()  # scored at the frame a study of the same space file would score it at
    check_divisible([cfg.train.batch_size], placement.procs, searched=False)
    check_splittable(cfg.data)
    check_pretrained([cfg.model.encoder], cfg.model.pretrained)
    data = load_data(cfg.data, cfg.model.depth, paths.cache)
    split_names = make_split(data.names, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    tracker = Tracker(paths.tracking_uri(cfg.search.tracking_uri), (cfg.search.study or Path(cfg.source).stem)
                      + BASELINE_SUFFIX, paths.artifacts)
    experiment = tracker.experiment_name
    tracker.fail_runs_of_dead_processes()
    run_id = tracker.start_run("train", cfg.params(), {"unet_opt.role": "train", "seed": cfg.train.seed,
                                                       "devices": placement.describe()})
    spec = runs.RunSpec(cfg, split_indices(split_names, data.names), split_names, test=True,
                        checkpoint=paths.checkpoints / f"{experiment}-train-{run_id[:8]}.pt")
    shown = "  ".join(f"{k}={cfg.get(k)}" for k in ("train.lr", "train.batch_size", "data.image_size", "train.epochs"))
    log.info("training once with %s on %s", shown, placement.describe())
    with tracker.closing(run_id):
        with progress.bar(cfg.train.epochs, "training", "epoch") as epochs:
            result = runs.train(spec, placement, data, paths.cache,
                                runs.logging_callback(tracker, run_id, cfg, epochs=epochs), fit)
        record = runs.record(spec, result, data, tracker, run_id, placement.main_device)
    return RunSummary(experiment, run_id, result, record.test, record.checkpoint)
