"""`unet-opt train`: one run with fixed params (the original study's "train" mode), logged like a trial.

Trains on train, scores val every epoch (early stopping applies), keeps the best epoch, then tests it
on the test split. The run gets the trial artifacts, test_* metrics and a checkpoint, so `evaluate`
and `predict` take it by run id.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from unet_opt.artifacts import write_model_report, write_trial_artifacts
from unet_opt.checkpoint import save_checkpoint, stage_checkpoint
from unet_opt.config import Config, Paths, redact_url, to_toml
from unet_opt.data import load_data, make_split, split_indices
from unet_opt.tracking import Tracker
from unet_opt.train import fit, resolve_device, score

log = logging.getLogger(__name__)


@dataclass
class BaselineResult:
    experiment: str
    run_id: str
    best_epoch: int
    epochs_run: int
    stop_reason: str
    val: dict[str, float]
    test: dict[str, float]
    checkpoint: Path | None


def train_once(cfg: Config, paths: Paths) -> BaselineResult:
    resolve_device(cfg.train.device)
    data = load_data(cfg.data, cfg.model.depth, paths.cache)
    split_names = make_split(data.names, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    split = split_indices(split_names, data.names)
    experiment = cfg.search.study or Path(cfg.source).stem
    tracker = Tracker(paths.tracking_uri(cfg.search.tracking_uri), experiment, paths.artifacts)
    run_id = tracker.start_run("train", cfg.params(),
                               {"unet_opt.role": "train", "seed": cfg.train.seed})
    metric = cfg.search.metric

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        tracker.log_metrics(run_id, metrics, step=epoch)
        log.info("epoch %d/%d  %s %.4f  loss %.3f  (%.1f s)", epoch, cfg.train.epochs, metric, metrics[metric],
                 metrics["train_loss"], metrics["epoch_seconds"])
        return False

    status = "FAILED"
    try:
        result = fit(cfg.model, cfg.train, data, split, metric=metric, maximize=cfg.search.direction == "maximize",
                     augment=cfg.data.augment, on_epoch=on_epoch)
        test, checkpoint = {}, None
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_trial_artifacts(folder, result, data, split["val"], to_toml(cfg, redact_url), metric)
            if result.model is not None:
                test, matrix = score(result.model, data, split["test"], cfg.train)
                tracker.log_metrics(run_id, test, step=result.best_epoch)
                write_model_report(folder, matrix, data, result.model, split["test"], prefix="test_")
                checkpoint = paths.studies / "checkpoints" / f"{experiment}-train-{run_id[:8]}.pt"
                save_checkpoint(checkpoint, result.model, cfg, data.classes, data.binary, split_names)
                stage_checkpoint(checkpoint, folder)
            tracker.log_files(run_id, folder)
        tracker.set_tags(run_id, {"stop_reason": result.stop_reason, "best_epoch": result.best_epoch,
                                  "early_stopped": str(result.stop_reason == "early_stopping").lower()})
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(run_id, status)
    return BaselineResult(experiment, run_id, result.best_epoch, result.epochs_run, result.stop_reason,
                          result.best_metrics, test, checkpoint)
