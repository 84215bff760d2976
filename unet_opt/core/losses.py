"""Training losses (`train.loss`) and class weights (`train.class_weights`).

Every loss is a mean over the scored pixels of the whole global batch: pixels equal to IGNORE are left
out of the numerator and the denominator alike, and in a process group the sums are taken over every
rank's shard, so that 2 processes train as 1 does. A binary task has one logit per pixel (foreground
when positive); the same four losses have a one-logit form for it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from unet_opt.core.data import IGNORE
from unet_opt.core.group import Group

FOCAL_GAMMA = 2.0  # Lin et al. (2017): down-weights pixels the model already gets right
MAX_CLASS_WEIGHT = 50.0  # times the average pixel's weight
DICE_SMOOTH = 1.0  # keeps a class's Dice defined, and its gradient tame, when it has few pixels


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, binary: bool, kind: str = "ce",
                      weights: torch.Tensor | None = None, group: Group | None = None) -> torch.Tensor:
    """`kind` of loss of (B, C, H, W) logits (C = 1 when `binary`) against (B, H, W) class indices.
    `weights`: one per class (two for a binary task: background, foreground), or None.

    One log-softmax serves both terms of "ce+dice": the cross-entropy is minus its value at the true class,
    the Dice term's probabilities are its exponential, and the true class's probability is exp(-ce).
    Ignored pixels are masked by multiplying, never by boolean indexing (which copies, and on a GPU waits
    for the device)."""
    group = group or Group(logits.device)
    keep = target != IGNORE
    truth = torch.where(keep, target, 0).long()  # any class at ignored pixels: they are masked out below
    dice = kind in ("dice", "ce+dice")
    if binary:
        logit = logits[:, 0]
        per_pixel = F.binary_cross_entropy_with_logits(logit, truth.float(), reduction="none")  # -log p(true)
        p_foreground = torch.sigmoid(logit) if dice else None
        probabilities = torch.stack([1 - p_foreground, p_foreground], dim=1) if dice else None
    else:
        log_probabilities = F.log_softmax(logits, dim=1)
        per_pixel = -log_probabilities.gather(1, truth.unsqueeze(1))[:, 0]  # -log p(true)
        probabilities = log_probabilities.exp() if dice else None
    loss = 0.0
    if dice:
        loss = soft_dice_loss(probabilities, torch.exp(-per_pixel), truth, keep, group)
    if kind == "focal":
        per_pixel = (1 - torch.exp(-per_pixel)) ** FOCAL_GAMMA * per_pixel
    if kind != "dice":
        pixel_weights = keep.to(per_pixel.dtype) * (weights[truth] if weights is not None else 1.0)
        loss = loss + mean_over_ranks((per_pixel * pixel_weights).sum(), pixel_weights.sum(), group)
    return loss


def mean_over_ranks(total: torch.Tensor, count: torch.Tensor, group: Group) -> torch.Tensor:
    """total / count over the whole global batch. Each rank's share is total_r * world / count, which
    DDP's averaging of the gradients over the ranks turns into the gradient of sum(total_r) / count."""
    count = count.detach().clone()
    group.sum_(count)
    return total * group.world / count.clamp_min(1e-12)


def soft_dice_loss(probabilities: torch.Tensor, p_true: torch.Tensor, truth: torch.Tensor, keep: torch.Tensor,
                   group: Group) -> torch.Tensor:
    """1 - the mean soft Dice over the classes present, from (B, C, H, W) probabilities and each pixel's
    probability of its true class `p_true` (B, H, W), taken over the scored pixels of the whole batch (batch
    Dice: a class with a few pixels in one image still counts). Every class counts alike, however few its
    pixels: class weights are for the pixel-wise losses."""
    classes = probabilities.shape[1]
    scored = keep.to(probabilities.dtype)  # (B, H, W)
    zeros = torch.zeros(classes, dtype=probabilities.dtype, device=probabilities.device)
    intersection = zeros.index_add(0, truth.flatten(), (p_true * scored).flatten())
    predicted = (probabilities * scored.unsqueeze(1)).sum(dim=(0, 2, 3))  # each class's probability mass
    # the global batch's sums on every rank; the backward pass sums each rank's gradient of them over the
    # ranks (world times the one gradient), which DDP's averaging brings back to the gradient of one process
    intersection, predicted = group.sum_with_grad(torch.stack([intersection, predicted]))
    true = zeros.index_add(0, truth.flatten(), scored.flatten())
    group.sum_(true)
    dice = (2 * intersection + DICE_SMOOTH) / (predicted + true + DICE_SMOOTH)
    present = true > 0
    return 1 - (dice * present).sum() / present.sum().clamp_min(1)


def class_weights(masks: torch.Tensor, classes: int, kind: str) -> torch.Tensor | None:
    """Per-class weights from the pixel frequencies of `masks` (the training split only):
    "inverse" 1/f, "sqrt_inverse" 1/sqrt(f), scaled so that the average pixel weighs 1, and at most
    MAX_CLASS_WEIGHT: a class of a few pixels would otherwise weigh thousands and swamp every batch it is
    in. A class with no training pixel gets the largest weight of the others (it is in val or test only)."""
    if kind == "none":
        return None
    counts = np.zeros(classes, np.float64)
    for mask in masks:  # one image at a time: no (N, H, W) int64 copy of the whole set
        values = mask.to("cpu", torch.long).flatten()
        counts += np.bincount(values[values != IGNORE].numpy(), minlength=classes)[:classes]
    frequency = counts / max(1.0, counts.sum())
    seen = frequency > 0
    if not seen.any():
        return None
    weights = np.zeros(classes)
    weights[seen] = 1 / frequency[seen] if kind == "inverse" else 1 / np.sqrt(frequency[seen])
    weights = np.minimum(weights / (weights * frequency).sum(), MAX_CLASS_WEIGHT)
    weights[~seen] = weights[seen].max()
    return torch.tensor(weights, dtype=torch.float32)
