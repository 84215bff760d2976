"""Scoring a model on a split: its loss and one confusion matrix over the whole split, at the data's
evaluation frame, and every score derived from that matrix."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unet_opt.config.schema import TrainConfig
from unet_opt.core.data import IGNORE, SegmentationData, batches
from unet_opt.core.group import Group
from unet_opt.core.losses import segmentation_loss
from unet_opt.core.metrics import ConfusionMatrix, scores_from_matrix


def autocast(device: torch.device, cfg: TrainConfig):
    """bf16 autocast on CUDA when `train.amp` asks for it; nothing on the CPU."""
    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict_classes(logits: torch.Tensor, binary: bool, ignored: int | None = None) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, H, W) class indices; never the `ignored` class (`SegmentationData.ignored`)."""
    if binary:
        return (logits[:, 0] > 0).long()
    if ignored is not None:  # a copy, filled on its device: no index tensor sent there (a wait on a GPU)
        logits = logits.clone()
        logits[:, ignored] = float("-inf")
    return logits.argmax(dim=1)


def at_frame(logits: torch.Tensor, frame: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) logits resized (bilinear, on their device) to the frame they are scored at; as they are
    when they are at it already."""
    if tuple(logits.shape[-2:]) == tuple(frame):
        return logits
    return F.interpolate(logits, size=tuple(frame), mode="bilinear", align_corners=False)


@torch.inference_mode()
def loss_and_matrix(model: nn.Module, data: SegmentationData, indices: list[int], batch_size: int,
                    cfg: TrainConfig | None = None, group: Group | None = None) -> tuple[float, np.ndarray]:
    """(mean loss per scored pixel, confusion matrix) over `indices`, in eval mode, at the data's evaluation
    frame: the logits are resized to it and scored against its masks, whatever frame the model runs at.

    In a process group each rank scores its shard with `batch_size / world` per step; the loss sums, pixel
    counts and confusion matrices are summed over the ranks before anything is derived from them, so the
    figures do not depend on the batch size or the number of processes.
    """
    cfg = cfg or TrainConfig()
    device = next(model.parameters()).device
    group = group or Group(device)
    model.eval()
    matrix = ConfusionMatrix(2 if data.binary else data.num_classes, IGNORE, device)
    loss_sum, pixels = torch.zeros((), device=device), torch.zeros((), device=device)
    for x, y in batches(data, group.shard(indices), max(1, batch_size // group.world), scored=True, to=device):
        with autocast(device, cfg):
            logits = model(x)
        logits = at_frame(logits.float(), y.shape[-2:])
        # plain cross-entropy whatever the trial trains with, so that val_loss compares trials; weighted by
        # the batch's scored pixels, as images with more ignored pixels have fewer
        scored = (y != IGNORE).sum()
        loss_sum += segmentation_loss(logits, y, data.binary) * scored
        pixels += scored
        matrix.update(predict_classes(logits, data.binary, data.ignored), y)
    group.sum_(loss_sum, pixels, matrix.counts)
    return loss_sum.item() / max(1.0, pixels.item()), matrix.matrix()


def split_metrics(model: nn.Module, data: SegmentationData, indices: list[int], cfg: TrainConfig,
                  prefix: str = "test_", group: Group | None = None) -> tuple[dict[str, float], np.ndarray]:
    """({prefix}loss and every score of `scores_from_matrix`, confusion matrix) of a model on `indices`."""
    loss, matrix = loss_and_matrix(model, data, indices, cfg.batch_size, cfg, group)
    scores = scores_from_matrix(matrix, data.binary)
    return {f"{prefix}loss": loss, **{f"{prefix}{k}": v for k, v in scores.items()}}, matrix
