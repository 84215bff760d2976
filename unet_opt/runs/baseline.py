"""`unet-opt train`: one run with fixed params (a baseline) in an experiment of its own, validated every
epoch (early stopping applies), tested on the test split and checkpointed, through the same run path as a
trial."""

from __future__ import annotations

import logging
from pathlib import Path

from unet_opt.config.paths import Paths
from unet_opt.config.schema import Config
from unet_opt.core.data import make_split, split_indices
from unet_opt.core.train import Fit, fit_job
from unet_opt.parallel.placement import Placement
from unet_opt.runs.runner import Runner, RunSpec, RunSummary, train_and_record, warn_of_batches_above
from unet_opt.tracking.tracker import Tracker

log = logging.getLogger(__name__)

BASELINE_SUFFIX = "-baseline"  # `train` runs never mix into a study's experiment


def train_baseline(cfg: Config, paths: Paths, placement: Placement, fit: Fit = fit_job) -> RunSummary:
    cfg = cfg.with_eval_size()  # scored at the frame a study of the same space file would score it at
    with Runner(paths, placement, fit) as runner:
        names = runner.check(cfg).names  # bad input fails here, before anything is written
        tracker = Tracker(paths.tracking_uri(cfg.search.tracking_uri),
                          (cfg.search.study or Path(cfg.source).stem) + BASELINE_SUFFIX, paths.artifacts)
        runner.use_tracker(tracker)
        split_names = make_split(names, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
        warn_of_batches_above(cfg, len(split_names["train"]))
        tracker.fail_runs_of_dead_processes()
        with tracker.stopped_runs_killed():
            run_id = tracker.start_run("train", cfg.params(), {"unet_opt.role": "train", "seed": cfg.train.seed,
                                                               "devices": placement.describe()})
            spec = RunSpec(cfg, split_indices(split_names, names), split_names, test=True,
                           checkpoint=paths.checkpoints / f"{tracker.experiment_name}-train-{run_id[:8]}.pt",
                           name=f"train run {run_id[:8]}")
            shown = "  ".join(f"{k}={cfg.get(k)}" for k in ("train.lr", "train.batch_size", "data.image_size",
                                                               "train.epochs"))
            log.info("training once with %s on %s", shown, placement.describe())
            record = train_and_record(runner, spec, run_id)
    return RunSummary(tracker.experiment_name, tracker.experiment_id, run_id, record.fit, record.test, record.checkpoint)
