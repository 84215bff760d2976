"""`fit()`: one readable epoch loop, and `loss_and_matrix()` / `split_metrics()` to score a model.

The loop knows nothing of Optuna or MLflow: after each epoch it hands the epoch's metrics and the run's
best value so far to the `on_epoch` callback it was given, which may log them, report them, and ask
to stop (prune).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unet_opt.config.schema import Config, TrainConfig
from unet_opt.core.data import IGNORE, SegmentationData, batches, load_data
from unet_opt.core.losses import class_weights, segmentation_loss
from unet_opt.core.metrics import ConfusionMatrix, scores_from_matrix
from unet_opt.core.model import build_model
from unet_opt.core.optim import make_optimizer, make_schedule
from unet_opt.parallel.placement import Group

log = logging.getLogger(__name__)

OnEpoch = Callable[[int, dict[str, float], float], bool]  # (epoch, metrics, best so far) -> True to stop


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


def predict_classes(logits: torch.Tensor, binary: bool) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, H, W) class indices."""
    return (logits[:, 0] > 0).long() if binary else logits.argmax(dim=1)


def at_frame(logits: torch.Tensor, frame: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) logits resized (bilinear, on their device) to the frame they are scored at; as they are
    when they are at it already."""
    if tuple(logits.shape[-2:]) == tuple(frame):
        return logits
    return F.interpolate(logits, size=tuple(frame), mode="bilinear", align_corners=False)


def autocast(device: torch.device, cfg: TrainConfig):
    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


_placed: dict[tuple[int, str], tuple[SegmentationData, SegmentationData]] = {}  # one data set, kept on its GPU


def place(data: SegmentationData, device: torch.device) -> SegmentationData:
    """The whole data set on the GPU when it takes under a third of the free memory, else pinned on the host.

    The placed copy is kept for the next trial of this process while it trains on the same data; another
    data set (another frame size) replaces it."""
    if device.type != "cuda":
        return data
    key = (id(data), str(device))
    if key not in _placed:
        _placed.clear()  # the previous copy goes before the next is made
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        _placed[key] = (data, data.to(device) if data.nbytes < free / 3 else data.pinned())  # data: keeps its id
    return _placed[key][1]


@torch.inference_mode()
def loss_and_matrix(model: nn.Module, data: SegmentationData, indices: list[int], batch_size: int,
                    cfg: TrainConfig | None = None, group: Group | None = None) -> tuple[float, np.ndarray]:
    """(mean loss per image, confusion matrix) over `indices`, in eval mode, at the data's evaluation frame:
    the logits are resized to it and scored against its masks, whatever frame the model runs at.

    In a process group each rank scores its shard with `batch_size / world` per step; the loss sums and
    the confusion matrices are summed over the ranks before anything is derived from them.
    """
    cfg = cfg or TrainConfig()
    device = next(model.parameters()).device
    group = group or Group(device)
    model.eval()
    matrix = ConfusionMatrix(2 if data.binary else data.num_classes, IGNORE, device)
    loss_sum = torch.zeros((), device=device)
    for x, y in batches(data, group.shard(indices), max(1, batch_size // group.world), scored=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, cfg):
            logits = model(x)
        logits = at_frame(logits.float(), y.shape[-2:])
        # plain cross-entropy whatever the trial trains with, so that val_loss compares trials
        loss_sum += segmentation_loss(logits, y, data.binary) * len(x)
        matrix.update(predict_classes(logits, data.binary), y)
    group.sum_(loss_sum, matrix.counts)
    return loss_sum.item() / max(1, len(indices)), matrix.matrix()


def split_metrics(model: nn.Module, data: SegmentationData, indices: list[int], cfg: TrainConfig,
                  prefix: str = "test_") -> tuple[dict[str, float], np.ndarray]:
    """({prefix}loss and every score of `scores_from_matrix`, confusion matrix) of a model on `indices`."""
    loss, matrix = loss_and_matrix(model, data, indices, cfg.batch_size, cfg)
    scores = scores_from_matrix(matrix, data.binary)
    return {f"{prefix}loss": loss, **{f"{prefix}{k}": v for k, v in scores.items()}}, matrix


def fit(config: Config, data: SegmentationData, split: dict[str, list[int]], *,
        on_epoch: OnEpoch | None = None, group: Group | None = None) -> FitResult:
    """Train on split["train"], score on split["val"] every epoch by `config.search.goal`; keep the best
    epoch's weights.

    With an empty split["val"] (a retrain on train+val) every epoch counts as the best: the last is kept.
    In a process group (`group`), each rank trains on its slice of every global batch under DDP, the
    metrics are summed over the ranks, `on_epoch` is called on rank 0 only and its answer is shared,
    so every rank stops together; only rank 0 keeps the best weights.
    """
    model_cfg, cfg, goal = config.model, config.train, config.search.goal
    group = group or Group(torch.device("cpu"))
    device = group.device
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation: same on every device
    data = place(data, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(model_cfg, 1 if data.binary else data.num_classes, pretrained=True).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
    model = group.wrap(model)  # DDP (and synced BatchNorm) when there are several ranks
    plain = model.module if group.world > 1 else model  # for scoring and weights: no gradient sync needed
    step_model = torch.compile(model) if cfg.compile else model
    optimizer = make_optimizer(model.parameters(), cfg)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch=max(1, len(split["train"]) // cfg.batch_size))
    weights = class_weights(data.masks[split["train"]], 2 if data.binary else data.num_classes, cfg.class_weights)
    weights = weights.to(device) if weights is not None else None
    result = FitResult()
    best: float | None = None
    since_best, best_state, last_lr = 0, None, None

    for epoch in range(1, cfg.epochs + 1):
        start, epoch_lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        model.train()
        loss_sum, seen = torch.zeros((), device=device), 0
        for x, y in batches(data, split["train"], cfg.batch_size, shuffle=True, augment=config.data.augment,
                            generator=generator, drop_last=True, shard=(group.rank, group.world)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # no-op when on the GPU
            with autocast(device, cfg):
                loss = segmentation_loss(step_model(x).float(), y, data.binary, cfg.loss, weights, group)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(x)
            seen += len(x)
        seen_sum = torch.tensor(float(seen), device=device)
        group.sum_(loss_sum, seen_sum)
        seen = int(seen_sum.item())
        train_loss = loss_sum.item() / max(1, seen)  # the epoch's one host sync: it waits for the GPU,
        train_seconds = time.perf_counter() - start  # so the time below covers the work, not its queueing
        if not math.isfinite(train_loss):
            log.info("epoch %d: training loss is %s, stopping", epoch, train_loss)
            result.stop_reason = "nan_loss"
            break

        metrics, matrix = {"train_loss": train_loss}, None
        if split["val"]:
            val_loss, matrix = loss_and_matrix(plain, data, split["val"], cfg.batch_size, cfg, group)
            metrics["val_loss"] = val_loss
            metrics.update({f"val_{k}": v for k, v in scores_from_matrix(matrix, data.binary).items()})
        lr = epoch_lr  # the rate the epoch started at: a schedule's curve, one point per epoch
        if lr != last_lr:  # in the metrics (and so logged) when it changes only
            metrics["lr"] = last_lr = lr
        metrics.update(epoch_seconds=time.perf_counter() - start,
                       images_per_second=seen / train_seconds if train_seconds > 0 else 0.0)
        result.history.append(metrics)

        value = metrics.get(goal.metric, 0.0)
        if not split["val"] or goal.improves(value, best):  # no val: keep the last epoch
            best, since_best = value, 0
            result.best_epoch, result.best_metrics, result.confusion = epoch, metrics, matrix
            if group.is_main:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in plain.state_dict().items()}
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
    if device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    if best_state is not None:
        result.model = build_model(model_cfg, 1 if data.binary else data.num_classes)
        result.model.load_state_dict(best_state)
        result.model.eval()
    return result


_loaded: dict[str, SegmentationData] = {}  # a rank process's data set, kept for its next trial


def fit_on_ranks(group: Group, on_epoch: OnEpoch | None, cfg: Config, split: dict[str, list[int]],
                 cache_dir: Path | None, data: SegmentationData | None = None) -> FitResult:
    """`fit` as `ranks.RankGroup` runs it on every rank. A rank process that is not handed the launching
    process's data loads its own (from the decode-once cache) and keeps it while trials ask for the same."""
    if data is None:
        key = repr((cfg.data, cfg.model.depth))
        if key not in _loaded:
            _loaded.clear()
            _loaded[key] = load_data(cfg.data, cfg.model.depth, cache_dir)
        data = _loaded[key]
    return fit(cfg, data, split, on_epoch=on_epoch, group=group)
