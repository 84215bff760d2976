"""One path for "train one config, test it, checkpoint, log, register": a trial, `retrain` and `train`.

A process that trains runs makes one `Runner` and keeps it for all of them: its pre-flight checks passed,
its data cache, its rank processes (kept across trials) and, in a search, the writer that draws a
run's files in the background (at the lowest priority on a CPU). `Runner.train` runs `fit` on every
rank of the placement, so a retrain and a baseline use every GPU exactly as a trial does;
`Runner.record` then leaves behind what the run's spec asks for: the report files, test metrics, a
checkpoint and a registered model. What differs between the three kinds of run is data, a `RunSpec`,
not code.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from unet_opt import progress, runtime
from unet_opt.config.paths import Paths, redact_url
from unet_opt.config.schema import Config, to_toml
from unet_opt.core.data import DataCache, SegmentationData, batches, check_splittable
from unet_opt.core.encoders import check_pretrained
from unet_opt.core.scoring import split_metrics
from unet_opt.core.train import Fit, FitJob, FitResult, OnEpoch, OnStep, fit_job
from unet_opt.errors import UserError
from unet_opt.parallel.placement import Placement, check_divisible
from unet_opt.parallel.ranks import RankGroup
from unet_opt.runs.checkpoint import save_checkpoint, stage_checkpoint
from unet_opt.runs.reports import split_report, trial_report
from unet_opt.tracking.registry import Registration, register_model
from unet_opt.tracking.report_files import write_report
from unet_opt.tracking.tracker import Tracker
from unet_opt.tracking.writer import ArtifactWriter, write_reports_of_dead_writers

log = logging.getLogger(__name__)


def preflight(cfg: Config, placement: Placement, searched: bool = False) -> None:
    """What can go wrong with a config before anything is written or trained, checked the same way for a
    search, a retrain and a baseline: its batch size splits evenly over the processes, the data has images
    enough for its split, its encoder has its pretrained weights. `searched`: every value the space can
    draw is checked (a search); else the config's own values (a run of one config)."""
    values = cfg.values_of if searched else (lambda dotted: [cfg.get(dotted)])
    check_divisible(values("train.batch_size"), placement.procs, searched=searched and "train.batch_size" in cfg.space)
    check_splittable(cfg.data)
    check_pretrained(values("model.encoder"), cfg.model.pretrained)


def check_frame(cfg: Config) -> Config:
    """A search's config at a frame its trials train at, where its data is checked and its names read: not
    at a `data.image_size` outside the space's sizes, which would be decoded for nothing."""
    sizes = cfg.values_of("data.image_size")
    return cfg if cfg.data.image_size in sizes else cfg.replace({"data.image_size": min(sizes)})


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
    promote: bool = False  # move @champion to it even if the model there tests better
    name: str = ""  # what its figures' titles call it: "trial #4", "retrain of trial #4"

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
    registration: Registration | None = None  # a registered model's version, and where @champion is


def epoch_count(n: int) -> str:
    """"1 epoch", "3 epochs": as every command's lines count a run's epochs."""
    return f"{n} epoch{'s' if n != 1 else ''}"


@dataclass
class RunSummary:
    """What the CLI prints about a retrain or a baseline run."""

    experiment: str
    experiment_id: str
    run_id: str
    fit: FitResult
    test: dict[str, float]
    checkpoint: Path | None
    registration: Registration | None = None  # a retrain's registered version, and where @champion is
    trial: int | None = None  # the retrained trial


class Runner:
    """One process's means of training runs; use it as a context manager, so that its rank processes and
    its writer end with it (the writer after writing every file it was handed)."""

    def __init__(self, paths: Paths, placement: Placement, fit: Fit = fit_job, *, keep_ranks: bool = False,
                 writer: ArtifactWriter | None = None):
        """`keep_ranks`: start the rank processes now (they import torch while the caller goes on) and keep
        them for every run. `writer`: a started writer process (`ArtifactWriter.started`) that draws each
        run's files and logs them to its MLflow store (a search's trials); the runner ends it. `fit` trains a
        run on each rank: `fit_job`, or a test's stand-in."""
        self.paths, self.placement, self.fit, self.writer = paths, placement, fit, writer
        try:
            runtime.setup_torch(placement.threads if placement.procs == 1 else 0)
            self.cache = DataCache(paths.cache)
            self.ranks = RankGroup(placement, self.cache, start=keep_ranks)
        except BaseException:
            self.close_writer()
            raise
        self.tracker: Tracker | None = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """The rank processes go at once; the writer is waited for, so that every run has its files."""
        self.ranks.close()
        self.close_writer()

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def check(self, cfg: Config, searched: bool = False) -> SegmentationData:
        """The pre-flight checks (`preflight`), then the data set, loaded into this process's cache: bad data
        fails here, before any store is opened or anything is written."""
        preflight(cfg, self.placement, searched)
        return self.data(check_frame(cfg) if searched else cfg)

    def use_tracker(self, tracker: Tracker) -> None:
        """Where runs are logged, once the stores are open."""
        self.tracker = tracker

    def write_reports_of_killed_searches(self) -> None:
        """The runs' files that a search killed with its writer left unwritten: by the writer, else here."""
        if self.writer is not None:
            self.writer.adopt_reports_of_dead_writers()
        elif done := write_reports_of_dead_writers():
            log.info("wrote the files of %d run(s) that a killed search had left unwritten", done)

    def in_background(self, work: Callable[..., None], *args: Any) -> None:
        """`work(*args)` in the writer process, after the files handed to it before (what nobody waits
        for); here and now without a writer. `work` must be a module's function, and `args` picklable."""
        if self.writer is not None:
            self.writer.call(work, *args)
        else:
            work(*args)

    def data(self, cfg: Config) -> SegmentationData:
        """The data set a run of `cfg` trains on, from this process's cache (checked when first loaded)."""
        return self.cache.get(cfg.data, cfg.model.depth)

    def data_digests(self, cfg: Config) -> dict[str, str]:
        """The content of `cfg`'s data folder by image name, to tell it from other data with the same names."""
        return self.cache.digests(cfg.data)

    def train(self, spec: RunSpec, on_epoch: OnEpoch | None, on_step: OnStep | None = None) -> FitResult:
        """`fit` on every rank of the placement. One process trains on this process's data cache; rank
        processes use theirs (and keep their data for the next run)."""
        return self.ranks.run(self.fit, FitJob(spec.cfg, spec.fit_split), on_epoch, on_step)

    def record(self, spec: RunSpec, result: FitResult, run_id: str, figures: bool = True,
               stop_reason: str = "") -> RunRecord:
        """The run's files (config, curves, the validation report), then what the spec asks for: the test
        metrics and report, a checkpoint, a registered model. Scoring runs on rank 0's device. With a
        writer, the files are drawn and logged in its process while the caller goes on. Without `figures`
        (a trial that did not complete) only the tables are written, and what `unet-opt figures` draws
        them from later. `stop_reason`: why the training stopped, in the caller's words (a trial's pruning
        rule), for the run's tag; else the training's own (`max_epochs`, `early_stopping`, ...)."""
        outcome, cfg, data, tracker = RunRecord(result), spec.cfg, self.data(spec.cfg), self.tracker
        report = trial_report(result, data, spec.split["val"], to_toml(cfg, redact_url), cfg.search.goal.metric)
        report.figures, report.name = figures, spec.name
        if result.model is not None and spec.checkpoint is not None:  # first: a failure in the test keeps it
            save_checkpoint(spec.checkpoint, result.model.cpu(), cfg, data.classes, data.binary,
                            spec.split_names, ("train", "val") if spec.train_on_val else ("train",))
            outcome.checkpoint = spec.checkpoint
        if result.model is not None and spec.test:
            model = result.model.to(self.placement.main_device)
            # here, on one device, beside the rank processes: at one rank's share of the batch
            one_device = replace(cfg.train, batch_size=max(1, cfg.train.batch_size // self.placement.procs))
            outcome.test, matrix = split_metrics(model, data, spec.split["test"], one_device)
            tracker.log_metrics(run_id, outcome.test, step=result.best_epoch)
            report.splits.append(split_report(matrix, data, model, spec.split["test"], "test_", result.best_epoch))
        if self.writer is not None and spec.checkpoint is None:
            self.writer.submit(run_id, report, tracker.local_artifact_folder(run_id))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                write_report(folder, report)
                if outcome.checkpoint is not None:
                    stage_checkpoint(outcome.checkpoint, folder)
                tracker.log_files(run_id, folder)
        if result.peak_memory_mb:  # on GPUs
            tracker.log_metrics(run_id, {"peak_memory_mb": result.peak_memory_mb}, step=result.epochs_run)
        if result.epochs_run:  # a run that failed before its first epoch has no stop to describe
            tracker.set_tags(run_id, {"stop_reason": stop_reason or result.stop_reason, "best_epoch": result.best_epoch,
                                      "epochs_run": result.epochs_run,
                                      "early_stopped": str(result.stop_reason == "early_stopping").lower()})
        if result.model is not None and spec.register_as:  # last: registered, the run is done
            example = next(batches(data, spec.split["test"][:2], 2))[0].numpy()  # (2, 3, H, W)
            # a stop now would leave a registered version (and maybe the alias) to a KILLED run
            with runtime.stops_deferred("registering the model (a few seconds)"):
                outcome.registration = register_model(tracker, run_id, result.model.cpu(), example,
                                                      spec.register_as, cfg.search.goal, spec.promote)
        return outcome


def warn_of_batches_above(cfg: Config, train_images: int) -> None:
    """Batches larger than the training split are legal (each epoch is one smaller batch), rarely meant."""
    largest = max(cfg.values_of("train.batch_size"))
    if largest > train_images:
        searched = "train.batch_size" in cfg.space
        log.warning("train.batch_size %s %d, above the %d images of the training split: %s on one batch of %d an "
                    "epoch", "goes up to" if searched else "is", largest, train_images,
                    "such trials train" if searched else "it trains", train_images)


def logging_callback(tracker: Tracker, run_id: str, cfg: Config, label: str = "",
                     decide: OnEpoch | None = None, epochs: tqdm | None = None) -> OnEpoch:
    """`on_epoch` that logs the epoch's metrics to the run and shows them on the terminal (a line, or
    the `epochs` bar when it is live), then lets `decide` (a trial's pruning) answer whether to stop."""
    metric = cfg.search.goal.metric

    def on_epoch(epoch: int, metrics: dict[str, float], best: float | None) -> bool:
        runtime.raise_pending_stop()
        tracker.log_metrics(run_id, metrics, step=epoch)
        shown = f"  {metric} {metrics[metric]:.4f}" if metric in metrics else ""
        log.log(progress.line_level(), "%s  epoch %d/%d%s  train_loss %.3f  (%.1f s)", label, epoch,
                cfg.train.epochs, shown, metrics["train_loss"], metrics["epoch_seconds"])
        if epochs is not None:
            epochs.n = epoch  # whole now: the steps moved it through the epoch
            epochs.set_postfix_str(shown.strip(), refresh=False)
            progress.refresh()
        return decide(epoch, metrics, best) if decide is not None else False

    return on_epoch


def train_and_record(runner: Runner, spec: RunSpec, run_id: str) -> RunRecord:
    """A retrain's or a baseline's run, start to end: trained with a bar of its epochs, then recorded; the
    run ends FINISHED, KILLED on Ctrl-C, FAILED on anything else."""
    cfg = spec.cfg
    with runner.tracker.closing(run_id):
        with progress.bar(cfg.train.epochs, "training", "epoch", fractional=True) as epochs:
            result = runner.train(spec, logging_callback(runner.tracker, run_id, cfg, epochs=epochs),
                                  progress.steps_of(epochs))
        if result.model is None and spec.register_as:
            raise UserError(f"the retrain diverged ({result.stop_reason}) in its first epoch; retrain with "
                            f"another --epochs or pick another trial's settings")
        try:
            return runner.record(spec, result, run_id)
        except BaseException:  # stopped, or failed in its test: the trained model saved first is kept, and said
            if spec.checkpoint is not None and spec.checkpoint.exists():
                log.warning("the trained model is kept in %s, though its run did not finish; `unet-opt evaluate "
                            "%s` tests it", spec.checkpoint, spec.checkpoint)
            raise
