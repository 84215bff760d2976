"""`unet-opt retrain --best`: the study's best trial config, trained on train+val for the trial's best epoch
count, tested on the held-out split, checkpointed and registered as `unet-opt-<study>@champion`, through
the same run path as a trial (`runs.runner`)."""

from __future__ import annotations

import logging
from typing import Any

import optuna

from unet_opt.config.paths import Paths
from unet_opt.config.schema import Config
from unet_opt.config.space_file import stored_config
from unet_opt.core.data import split_indices
from unet_opt.core.train import Fit, fit_job
from unet_opt.errors import UserError
from unet_opt.parallel.placement import Placement
from unet_opt.runs.runner import Runner, RunSpec, RunSummary, train_and_record
from unet_opt.study.ledger import TrialLedger
from unet_opt.study.storage import load_existing
from unet_opt.tracking.tracker import Tracker

log = logging.getLogger(__name__)


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
                 fit: Fit = fit_job) -> RunSummary:
    study, setup, storage = load_existing(storage_url, study_name)
    cfg, best = best_trial_config(study, setup, epochs)
    name = model_name or f"unet-opt-{study.study_name}"
    with Runner(paths, placement, fit) as runner:
        split_names = setup["split"]
        split = split_indices(split_names, runner.check(cfg).names)  # bad input fails here, before any write
        tracker = Tracker(tracking_uri, study.study_name, paths.artifacts)
        runner.use_tracker(tracker)
        tracker.fail_runs_of_dead_processes()  # a killed retrain's run ends FAILED, not RUNNING for ever
        TrialLedger(study, storage, tracker).mirror_ended()
        run_id = tracker.start_run(f"retrain-trial-{best.number:04d}", cfg.params(),
                                   {"unet_opt.role": "retrain", "optuna.study": study.study_name,
                                    "source_trial": best.number, "seed": cfg.train.seed,
                                    "devices": placement.describe()})
        spec = RunSpec(cfg, split, split_names, train_on_val=True, test=True,
                       checkpoint=paths.checkpoints / f"{name}-{run_id[:8]}.pt", register_as=name)
        log.info("retraining trial #%d of '%s' on train+val (%d images) for %d epochs on %s, testing on %d images",
                 best.number, study.study_name, len(spec.fit_split["train"]), cfg.train.epochs, placement.describe(),
                 len(spec.split["test"]))
        record = train_and_record(runner, spec, run_id)
    return RunSummary(tracker.experiment_name, run_id, record.fit, record.test, record.checkpoint, name,
                      record.version, best.number)
