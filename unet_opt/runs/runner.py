"""One path for "train one config, test it, checkpoint, log, register": a trial, `retrain` and `train`.

`train` runs `fit` on every rank of a placement through `ranks.RankGroup`, so a retrain and a
baseline use every GPU exactly as a trial does; `record` then leaves behind what the run's spec asks
for: the report files, test metrics, a checkpoint and a registered model. What differs between the
three kinds of run is data, a `RunSpec`, not code.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from unet_opt import progress, runtime
from unet_opt.config.paths import redact_url
from unet_opt.config.schema import Config, to_toml
from unet_opt.core.data import SegmentationData, batches
from unet_opt.core.train import FitResult, fit_on_ranks, split_metrics
from unet_opt.parallel.placement import Placement
from unet_opt.parallel.ranks import OnEpoch, RankGroup, launch
from unet_opt.runs.checkpoint import save_checkpoint, stage_checkpoint
from unet_opt.tracking.report_files import split_report, trial_report, write_report
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.writer import ArtifactWriter

log = logging.getLogger(__name__)

Fit = Callable[..., FitResult]  # `fit_on_ranks` or a test's stand-in; module-level, so spawned ranks import it


@dataclass(frozen=True)
class RunSpec:
    """What one run trains on and what it leaves behind."""

    cfg: Config
    split: dict[str, list[int]]  # the data's indices: train, val, test
    split_names: dict[str, list[str]]  # the same split by image name, kept in checkpoints
    train_on_val: bool = False  # a retrain: val joins the training data and nothing is validated
    test: bool = False  # score the best weights on split["test"]
    checkpoint: Path | None = None  # where to save them
    register_as: str = ""  # registered model name (alias @champion)

    @property
    def fit_split(self) -> dict[str, list[int]]:
        if self.train_on_val:
            return {"train": self.split["train"] + self.split["val"], "val": []}
        return {"train": self.split["train"], "val": self.split["val"]}


@dataclass
class RunRecord:
    fit: FitResult
    test: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    version: str = ""


def logging_callback(tracker: Tracker, run_id: str, cfg: Config, label: str = "",
                     decide: OnEpoch | None = None, epochs: tqdm | None = None) -> OnEpoch:
    """`on_epoch` that logs the epoch's metrics to the run and shows them on the terminal (a line, or
    the `epochs` bar when it is live), then lets `decide` (a trial's pruning) answer whether to stop."""
    metric = cfg.search.goal.metric

    def on_epoch(epoch: int, metrics: dict[str, float], best: float) -> bool:
        runtime.raise_pending_stop()
        tracker.log_metrics(run_id, metrics, step=epoch)
        shown = f"  {metric} {metrics[metric]:.4f}" if metric in metrics else ""
        log.log(progress.line_level(), "%s  epoch %d/%d%s  train_loss %.3f  (%.1f s)", label, epoch,
                cfg.train.epochs, shown, metrics["train_loss"], metrics["epoch_seconds"])
        if epochs is not None:
            epochs.update(epoch - epochs.n)
            epochs.set_postfix_str(shown.strip(), refresh=False)
            progress.refresh()
        return decide(epoch, metrics, best) if decide is not None else False

    return on_epoch


def train(spec: RunSpec, placement: Placement, data: SegmentationData, cache_dir: Path | None,
          on_epoch: OnEpoch | None, fit: Fit = fit_on_ranks, ranks: RankGroup | None = None) -> FitResult:
    """`fit` on every rank of `placement`: on the worker's `ranks`, kept across trials, or on new ones.
    One process trains on `data` itself; rank processes load theirs (and keep it for the next trial)."""
    args = (spec.cfg, spec.fit_split, cache_dir, data if placement.procs == 1 else None)
    return ranks.run(fit, args, on_epoch) if ranks is not None else launch(placement, fit, args, on_epoch)


def record(spec: RunSpec, result: FitResult, data: SegmentationData, tracker: Tracker, run_id: str,
           device: torch.device, writer: ArtifactWriter | None = None) -> RunRecord:
    """The run's files (config, curves, the validation report), then what the spec asks for: the test
    metrics and report, a checkpoint, a registered model. Scoring runs on `device`. With a `writer` (a
    search's), the files are drawn and logged in its process while the caller goes on."""
    outcome = RunRecord(result)
    cfg = spec.cfg
    report = trial_report(result, data, spec.split["val"], to_toml(cfg, redact_url), cfg.search.goal.metric)
    if result.model is not None and spec.test:
        outcome.test, matrix = split_metrics(result.model.to(device), data, spec.split["test"], cfg.train)
        tracker.log_metrics(run_id, outcome.test, step=result.best_epoch)
        report.splits.append(split_report(matrix, data, result.model, spec.split["test"], "test_", result.best_epoch))
    if writer is not None and spec.checkpoint is None:
        writer.submit(run_id, report)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_report(folder, report)
            if result.model is not None and spec.checkpoint is not None:
                save_checkpoint(spec.checkpoint, result.model.cpu(), cfg, data.classes, data.binary, spec.split_names)
                stage_checkpoint(spec.checkpoint, folder)
                outcome.checkpoint = spec.checkpoint
            tracker.log_files(run_id, folder)
    if result.model is not None and spec.register_as:
        example = next(batches(data.to(torch.device("cpu")), spec.split["test"][:2], 2))[0].numpy()  # (2, 3, H, W)
        outcome.version = tracker.log_model(run_id, result.model.cpu(), example, spec.register_as)
        tracker.set_tags(run_id, {"registered_model": f"{spec.register_as}/{outcome.version}"})
    if result.peak_memory_mb:  # on GPUs
        tracker.log_metrics(run_id, {"peak_memory_mb": result.peak_memory_mb}, step=result.epochs_run)
    if result.epochs_run:  # a run that failed before its first epoch has no stop to describe
        tracker.set_tags(run_id, {"stop_reason": result.stop_reason, "best_epoch": result.best_epoch,
                                  "epochs_run": result.epochs_run,
                                  "early_stopped": str(result.stop_reason == "early_stopping").lower()})
    return outcome
