"""Scoring at the photos' own resolution (`unet-opt evaluate --frame native`): the figure to quote for a
real data set.

The model runs at its own frame; its logits are resized (bilinear) to each photo's size and compared
with the photo's original mask. One photo at a time, and its logits resized a band of rows at a time,
so memory does not grow with the photos' size or number: a 6000x4000 photo with 24 classes would take
2.3 GB of float logits at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from unet_opt.config.schema import DataConfig
from unet_opt.core.data import IGNORE, SegmentationData, relabel
from unet_opt.core.data.images import decode_mask, opened, upright_size
from unet_opt.core.data.layouts import Source
from unet_opt.core.losses import segmentation_loss
from unet_opt.core.metrics import ConfusionMatrix
from unet_opt.core.scoring import predict_classes
from unet_opt.errors import UserError

BAND_BYTES = 2**24  # float logits held at once while resizing: 16 MB


def resized_bands(logits: torch.Tensor, height: int, width: int,
                  band_bytes: int = BAND_BYTES) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, logits (1, C, rows, width)) of `logits` (1, C, h, w) resized to height x width, band by
    band: the same values as `F.interpolate(..., mode="bilinear", align_corners=False)` at once. Bilinear
    resizing is separable: the columns are resized first (h rows of the full width), then each band of
    output rows blends its two source rows as `interpolate` does (source row (r + 0.5) * h / height - 0.5)."""
    h = logits.shape[-2]
    wide = F.interpolate(logits, size=(h, width), mode="bilinear", align_corners=False)  # (1, C, h, width)
    rows = max(1, band_bytes // (logits.shape[1] * width * 4))
    for first in range(0, height, rows):
        r = torch.arange(first, min(first + rows, height), dtype=torch.float64)
        source = ((r + 0.5) * (h / height) - 0.5).clamp_min(0)
        low = source.floor().long()
        high = (low + 1).clamp_max(h - 1)
        weight = (source - low).to(logits.dtype)[:, None]
        yield first, wide[:, :, low] * (1 - weight) + wide[:, :, high] * weight


def classes_at(logits: torch.Tensor, height: int, width: int, binary: bool, ignored: int | None) -> np.ndarray:
    """(height, width) uint8 class indices of `logits` (1, C, h, w) resized to that size, band by band:
    the classes a photo's own-size evaluation scores, which `predict` writes (never the `ignored` one)."""
    classes = np.empty((height, width), np.uint8)
    for first, band in resized_bands(logits, height, width):
        classes[first:first + band.shape[-2]] = predict_classes(band, binary, ignored)[0].numpy()
    return classes


def native_mask(source: Source, name: str, cfg: DataConfig) -> torch.Tensor:
    """The photo's original mask at its own size, with the ignore and binary rules applied: (H, W)."""
    path = next(mask for n, _, mask in source.pairs if n == name)
    with opened(path) as im:
        width, height = upright_size(im)
    mask, problem = decode_mask(path, height, width, source)
    if problem:
        raise UserError(problem)
    return torch.from_numpy(relabel(mask[None], source.classes, cfg)[0][0])


@torch.inference_mode()
def native_loss_and_matrix(model: torch.nn.Module, data: SegmentationData, indices: list[int], source: Source,
                           cfg: DataConfig) -> tuple[float, np.ndarray]:
    """(mean loss per scored pixel, confusion matrix) of `model` on `indices`, each photo scored at its own
    size against its original mask. `data` holds the images at the model's frame."""
    model.eval()
    matrix = ConfusionMatrix(2 if data.binary else data.num_classes, IGNORE)
    loss_sum, counted = 0.0, 0
    for i in indices:
        x = data.images[i:i + 1].float().div_(127.5).sub_(1.0)
        logits = model(x).float()
        truth = native_mask(source, data.names[i], cfg).long()
        for first, band in resized_bands(logits, *truth.shape):
            target = truth[None, first:first + band.shape[-2]]
            kept = int((target != IGNORE).sum())
            if kept:
                loss_sum += float(segmentation_loss(band, target, data.binary)) * kept
            counted += kept
            matrix.update(predict_classes(band, data.binary, data.ignored), target)
    return loss_sum / max(1, counted), matrix.matrix()
