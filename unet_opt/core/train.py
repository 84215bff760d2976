"""`fit()`: one readable epoch loop over `train_epoch` (a pass over the training split) and `split_metrics`
(the validation split scored at the evaluation frame).

The loop knows nothing of Optuna or MLflow: after each epoch it hands the epoch's metrics and the run's
best value so far to the `on_epoch` callback it was given, which may log them, report them, and ask
to stop (prune). A run on several processes sends each of them one `FitJob`; each runs a `Fit` on it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from unet_opt.config.schema import Config
from unet_opt.core.data import DataCache, SegmentationData, batches
from unet_opt.core.group import Group
from unet_opt.core.losses import class_weights, segmentation_loss
from unet_opt.core.model import build_model
from unet_opt.core.optim import make_optimizer, make_schedule
from unet_opt.core.scoring import autocast, split_metrics

log = logging.getLogger(__name__)

OnEpoch = Callable[[int, dict[str, float], float | None], bool]  # (epoch, metrics, best so far) -> True to stop
OnStep = Callable[[int, int], None]  # (steps done in this epoch, steps in an epoch): progress within an epoch


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch run
    best_epoch: int = 0  # 1-based; 0 when no epoch finished
    best_metrics: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray | None = None  # validation confusion matrix of the best epoch
    model: nn.Module | None = None  # holding the best epoch's weights, on the CPU
    stop_reason: str = "max_epochs"  # max_epochs | early_stopping | callback | nan_loss
    peak_memory_mb: float = 0.0  # the most GPU memory the trial held at once (rank 0's); 0 on the CPU

    @property
    def epochs_run(self) -> int:
        return len(self.history)


@dataclass(frozen=True)
class FitJob:
    """One run's training as each of its processes receives it (pickled once per run)."""

    cfg: Config
    split: dict[str, list[int]]  # indices of the data set: "train", and "val" (empty: nothing validated)


class Fit(Protocol):
    """What trains one run on one process, with the process's data cache: `fit_job`, or a test's stand-in.
    Module-level functions only: rank processes import it by name."""

    def __call__(self, group: Group, job: FitJob, cache: DataCache, on_epoch: OnEpoch | None,
                 on_step: OnStep | None = None) -> FitResult: ...


def fit_job(group: Group, job: FitJob, cache: DataCache, on_epoch: OnEpoch | None,
            on_step: OnStep | None = None) -> FitResult:
    """`fit` on this process's copy of the job's data (loaded once per process, kept on its device)."""
    data = cache.placed(cache.get(job.cfg.data, job.cfg.model.depth), group.device)
    return fit(job.cfg, data, job.split, on_epoch=on_epoch, on_step=on_step, group=group)


@dataclass
class Training:
    """What one run trains with, built once: the model as the step runs it (under DDP, compiled), its plain
    module (scored and saved without gradient sync), the optimizer, its schedule, the class weights and the
    generator of shuffling and augmentation (the same on every device)."""

    model: nn.Module
    plain: nn.Module
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    weights: torch.Tensor | None
    generator: torch.Generator


def start_training(config: Config, data: SegmentationData, train: list[int], group: Group) -> Training:
    cfg, device = config.train, group.device
    torch.manual_seed(cfg.seed)
    model = build_model(config.model, 1 if data.binary else data.num_classes, pretrained=True).to(device)
    if cfg.channels_last:  # oneDNN's CPU convolutions too: a step at 64x96 takes 54 ms instead of 75
        model = model.to(memory_format=torch.channels_last)
    model = group.wrap(model)  # DDP (and synced BatchNorm) when there are several ranks
    optimizer = make_optimizer(model.parameters(), cfg)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch=max(1, len(train) // cfg.batch_size))
    weights = class_weights(data.masks[train], 2 if data.binary else data.num_classes, cfg.class_weights)
    return Training(model, model.module if group.world > 1 else model, torch.compile(model) if cfg.compile else model,
                    optimizer, schedule, None if weights is None else weights.to(device),
                    torch.Generator().manual_seed(cfg.seed))


def train_epoch(t: Training, config: Config, data: SegmentationData, train: list[int],
                group: Group, on_step: OnStep | None = None) -> tuple[float, int]:
    """One pass over the training split: (mean loss per image, images seen by every rank together). Each
    rank trains on its slice of every global batch; one host sync, at the end."""
    cfg, device = config.train, group.device
    t.model.train()
    loss_sum, seen, steps = torch.zeros((), device=device), 0, len(train) // cfg.batch_size
    for step, (x, y) in enumerate(batches(data, train, cfg.batch_size, shuffle=True, augment=config.data.augment,
                        generator=t.generator, drop_last=True, shard=(group.rank, group.world), to=device), 1):
        with autocast(device, cfg):
            loss = segmentation_loss(t.step_model(x).float(), y, data.binary, cfg.loss, t.weights, group)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.grad_clip)
        t.optimizer.step()
        t.schedule.step()
        loss_sum += loss.detach() * len(x)
        seen += len(x)
        if on_step is not None:
            on_step(step, steps)
    seen_sum = torch.tensor(float(seen), device=device)
    group.sum_(loss_sum, seen_sum)
    return loss_sum.item() / max(1.0, seen_sum.item()), int(seen_sum.item())  # .item(): waits for the device


def fit(config: Config, data: SegmentationData, split: dict[str, list[int]], *,
        on_epoch: OnEpoch | None = None, on_step: OnStep | None = None, group: Group | None = None) -> FitResult:
    """Train on split["train"], score on split["val"] every epoch by `config.search.goal`; keep the best
    epoch's weights. `data` is on the group's device (or pinned for it).

    With an empty split["val"] (a retrain on train+val) every epoch counts as the best: the last is kept.
    In a process group (`group`), each rank trains on its slice of every global batch under DDP, the
    metrics are summed over the ranks, `on_epoch` is called on rank 0 only and its answer is shared,
    so every rank stops together; only rank 0 keeps the best weights. `on_step`, given to rank 0 only, hears
    of each training step (a progress bar within the epoch; it must not wait on the other ranks).
    """
    cfg, goal = config.train, config.search.goal
    group = group or Group(torch.device("cpu"))
    if group.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(group.device)
    with group.in_lockstep():  # an error in here leaves the ranks out of step (see Group.in_lockstep)
        t = start_training(config, data, split["train"], group)
        result, best, since_best, best_state, last_lr = FitResult(), None, 0, None, None
        for epoch in range(1, cfg.epochs + 1):
            start, lr = time.perf_counter(), t.optimizer.param_groups[0]["lr"]  # the rate the epoch starts at
            train_loss, seen = train_epoch(t, config, data, split["train"], group, on_step)
            train_seconds = time.perf_counter() - start
            if not math.isfinite(train_loss):
                log.info("epoch %d: training loss is %s, stopping", epoch, train_loss)
                result.stop_reason = "nan_loss"
                break
            metrics, matrix = {"train_loss": train_loss}, None
            if split["val"]:
                scores, matrix = split_metrics(t.plain, data, split["val"], cfg, "val_", group)
                metrics.update(scores)
                if not math.isfinite(scores["val_loss"]):  # diverged as it trained: its outputs overflow
                    log.info("epoch %d: validation loss is %s, stopping", epoch, scores["val_loss"])
                    result.stop_reason = "nan_loss"
                    break
            if lr != last_lr:  # a schedule's curve, one point per epoch, logged when it changes
                metrics["lr"] = last_lr = lr
            metrics.update(epoch_seconds=time.perf_counter() - start,
                           images_per_second=seen / train_seconds if train_seconds > 0 else 0.0)
            result.history.append(metrics)

            value = metrics.get(goal.metric, 0.0)
            if not split["val"] or goal.improves(value, best):  # no val: keep the last epoch
                best, since_best = value, 0
                result.best_epoch, result.best_metrics, result.confusion = epoch, metrics, matrix
                if group.is_main:
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in t.plain.state_dict().items()}
            else:
                since_best += 1
            # the callback gets the run's best so far, which is what a trial is scored (and pruned) by
            stop = group.agree(on_epoch(epoch, metrics, best) if on_epoch is not None else False)
            if stop and epoch < cfg.epochs:  # after the last epoch a stop saves nothing: the trial completes
                result.stop_reason = "callback"
                break
            if since_best >= cfg.patience and epoch < cfg.epochs:  # on the last epoch it is simply the end
                result.stop_reason = "early_stopping"
                break
    if group.device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated(group.device) / 2**20
    if best_state is not None:
        result.model = build_model(config.model, 1 if data.binary else data.num_classes)
        result.model.load_state_dict(best_state)
        result.model.eval()
    return result
