"""What a trained model's report is made of: its confusion matrix and its predictions on a split's first
images, at the evaluation frame, as plain arrays (`tracking.report_files` draws them)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from unet_opt.core.data import SegmentationData, batches
from unet_opt.core.scoring import at_frame, predict_classes
from unet_opt.core.train import FitResult
from unet_opt.tracking.report_files import RunReport, SplitReport

OVERLAY_IMAGES = 4


@torch.inference_mode()
def predict_indices(model: torch.nn.Module, data: SegmentationData, indices: list[int]) -> np.ndarray:
    """The model's classes for `indices`, at the evaluation frame they are scored at."""
    model.eval()
    out = [predict_classes(at_frame(model(x), data.scored_frame), data.binary, data.ignored).cpu()
           for x, _ in batches(data, indices, 8)]
    return torch.cat(out).numpy().astype(np.uint8)


def shown_images(data: SegmentationData, indices: list[int]) -> np.ndarray:
    """(n, He, We, 3) uint8: the images at the evaluation frame, beside the masks they are scored by."""
    images = data.images[indices]
    if tuple(images.shape[-2:]) != data.scored_frame:
        images = F.interpolate(images.float(), size=data.scored_frame, mode="bilinear", align_corners=False)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


def split_report(matrix: np.ndarray, data: SegmentationData, model: torch.nn.Module, indices: list[int],
                 prefix: str = "", epoch: int | None = None) -> SplitReport:
    """The split's matrix and its first images with the model's predictions (a forward pass on a few)."""
    shown = indices[:OVERLAY_IMAGES]
    data_cpu = data.to(torch.device("cpu"))
    return SplitReport(np.asarray(matrix), list(data.classes.names), list(data.classes.colors),
                       shown_images(data_cpu, shown), data_cpu.scored_masks[shown].numpy(),
                       predict_indices(model.cpu(), data_cpu, shown), prefix, epoch)


def trial_report(result: FitResult, data: SegmentationData, val_indices: list[int], config_toml: str,
                 metric: str) -> RunReport:
    """Everything DESIGN.md lists for a trial; only the config when no epoch finished."""
    report = RunReport(config_toml, metric, list(result.history), result.best_epoch)
    if result.model is not None and result.confusion is not None:
        report.splits.append(split_report(result.confusion, data, result.model, val_indices, epoch=result.best_epoch))
    return report


