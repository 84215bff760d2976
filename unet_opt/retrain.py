"""Best trial -> retrain on train+val -> test on the held-out split -> log, register, checkpoint."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna

from unet_opt import plots
from unet_opt.artifacts import write_model_report
from unet_opt.checkpoint import save_checkpoint, stage_checkpoint
from unet_opt.config import Paths, config_from_text, redact_url, to_toml
from unet_opt.data import batches, load_data, split_indices
from unet_opt.errors import UserError
from unet_opt.search import load_existing
from unet_opt.tracking import Tracker
from unet_opt.train import fit, score

log = logging.getLogger(__name__)


@dataclass
class RetrainResult:
    study: str
    trial: int
    epochs: int
    test: dict[str, float]
    run_id: str
    model_name: str
    version: str
    checkpoint: Path


def retrain(paths: Paths, storage_url: str, tracking_uri: str, study_name: str | None, epochs: int | None = None,
            model_name: str | None = None, device: str | None = None) -> RetrainResult:
    study = load_existing(storage_url, study_name)
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise UserError(f"study '{study.study_name}' has no complete trial yet; run `unet-opt search` until one "
                        f"completes (pruned and failed trials are not retrained)")
    best = study.best_trial
    if "config_toml" not in study.user_attrs:
        raise UserError(f"study '{study.study_name}' holds no stored config (made by an older unet-opt); "
                        f"run a new search with --study NEW_NAME")
    base = config_from_text(study.user_attrs["config_toml"], f"study '{study.study_name}' (stored config)")
    # the trial's best epoch count: it was chosen on val, and val is now part of the training data
    n_epochs = epochs or best.user_attrs.get("best_epoch") or base.train.epochs
    cfg = base.replace({**best.params, "train.seed": base.train.seed + best.number, "train.epochs": n_epochs,
                        **({"train.device": device} if device else {})})
    name = model_name or f"unet-opt-{study.study_name}"
    data = load_data(cfg.data, cfg.model.depth, paths.cache)
    split = split_indices(study.user_attrs["split"], data.names)
    tracker = Tracker(tracking_uri, study.study_name, paths.artifacts)
    run_id = tracker.start_run(
        f"retrain-trial-{best.number:04d}",
        cfg.params(),
        {"unet_opt.role": "retrain", "optuna.study": study.study_name, "source_trial": best.number,
         "seed": cfg.train.seed})
    log.info("retraining trial #%d of '%s' on train+val (%d images) for %d epochs, testing on %d images",
             best.number, study.study_name, len(split["train"]) + len(split["val"]), n_epochs, len(split["test"]))

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        tracker.log_metrics(run_id, metrics, step=epoch)
        log.info("  epoch %d/%d  loss %.3f  (%.1f s)", epoch, n_epochs, metrics["train_loss"], metrics["epoch_seconds"])
        return False

    try:
        result = fit(cfg.model, cfg.train, data, {"train": split["train"] + split["val"], "val": []},
                     augment=cfg.data.augment, on_epoch=on_epoch)
        if result.model is None:
            raise UserError(f"the retrain diverged ({result.stop_reason}) in its first epoch; retrain with "
                            f"another --epochs or pick another trial's settings")
        test, matrix = score(result.model, data, split["test"], cfg.train)
        tracker.log_metrics(run_id, test, step=result.epochs_run)
        checkpoint = paths.studies / "checkpoints" / f"{name}-{run_id[:8]}.pt"
        save_checkpoint(checkpoint, result.model, cfg, data.classes, data.binary, study.user_attrs["split"])
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "config.toml").write_text(to_toml(cfg, redact_url), encoding="utf-8")
            plots.learning_curves(result.history, folder / "learning_curves.png")
            write_model_report(folder, matrix, data, result.model, split["test"], prefix="test_")
            stage_checkpoint(checkpoint, folder)
            tracker.log_files(run_id, folder)
        example = next(batches(data, split["test"][:2], 2))[0].numpy()  # (2, 3, H, W) float32 in [-1, 1]
        version = tracker.log_model(run_id, result.model, example, name)
        tracker.set_tags(run_id, {"registered_model": f"{name}/{version}"})
        tracker.end(run_id, "FINISHED")
    except KeyboardInterrupt:
        tracker.end(run_id, "KILLED")
        raise
    except BaseException:
        tracker.end(run_id, "FAILED")
        raise
    return RetrainResult(study.study_name, best.number, n_epochs, test, run_id, name, version, checkpoint)
