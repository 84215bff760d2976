"""The files a trained model leaves behind: confusion matrix, per-class table, curves, overlays, config."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unet_opt.core.data import SegmentationData, batches
from unet_opt.core.metrics import per_class
from unet_opt.core.train import FitResult, at_frame, predict_classes

OVERLAY_IMAGES = 4


def write_confusion_csv(matrix: np.ndarray, names: list[str], path: Path) -> None:
    """Raw pixel counts, rows = true class, columns = predicted class."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true\\predicted", *names])
        for name, row in zip(names, np.asarray(matrix)):
            w.writerow([name, *map(int, row)])


def write_per_class_csv(matrix: np.ndarray, names: list[str], path: Path) -> None:
    pc = per_class(matrix)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "dice", "f1", "iou", "precision", "recall", "support_pixels", "present"])
        for i, name in enumerate(names):
            w.writerow([name, f"{pc['dice'][i]:.6f}", f"{pc['dice'][i]:.6f}", f"{pc['iou'][i]:.6f}",
                        f"{pc['precision'][i]:.6f}", f"{pc['recall'][i]:.6f}", int(pc["support"][i]),
                        bool(pc["present"][i])])


@torch.inference_mode()
def predict_indices(model: torch.nn.Module, data: SegmentationData, indices: list[int]) -> np.ndarray:
    """The model's classes for `indices`, at the evaluation frame they are scored at."""
    model.eval()
    out = [predict_classes(at_frame(model(x), data.scored_frame), data.binary).cpu() for x, _ in batches(data, indices, 8)]
    return torch.cat(out).numpy().astype(np.uint8)


def shown_images(data: SegmentationData, indices: list[int]) -> np.ndarray:
    """(n, He, We, 3) uint8: the images at the evaluation frame, beside the masks they are scored by."""
    images = data.images[indices]
    if tuple(images.shape[-2:]) != data.scored_frame:
        images = F.interpolate(images.float(), size=data.scored_frame, mode="bilinear", align_corners=False)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


@dataclass
class SplitReport:
    """What the files of one scored split are drawn from: plain arrays, cheap to send to another process."""

    matrix: np.ndarray
    names: list[str]
    colors: list[tuple[int, int, int]]
    images: np.ndarray  # (n, H, W, 3) uint8: the first few images of the split, at the evaluation frame
    truths: np.ndarray  # (n, H, W): their masks at that frame
    preds: np.ndarray  # (n, H, W): the model's classes at that frame
    prefix: str = ""  # "test_"; none for val
    epoch: int | None = None  # whose weights scored it, for the matrix's title


@dataclass
class RunReport:
    """Everything a run's files are made from; `write_report` draws them, here or in a writer process."""

    config_toml: str
    metric: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    splits: list[SplitReport] = field(default_factory=list)


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


def write_split(folder: Path, split: SplitReport) -> list[Path]:
    """Confusion matrix (PNG + CSV), per-class table and prediction overlays of one split."""
    from unet_opt.tracking import plots  # matplotlib, scikit-learn, torchvision: only where figures are drawn

    paths = [folder / f"{split.prefix}{name}" for name in
             ("confusion_matrix.png", "confusion_matrix.csv", "per_class.csv", "predictions.png")]
    title = plots.matrix_title(split.prefix.rstrip("_") or "val", split.epoch)
    plots.confusion_matrix(split.matrix, split.names, paths[0], title)
    write_confusion_csv(split.matrix, split.names, paths[1])
    write_per_class_csv(split.matrix, split.names, paths[2])
    plots.prediction_overlays(split.images, split.truths, split.preds, split.colors, split.names, paths[3])
    return paths


def write_report(folder: Path, report: RunReport) -> list[Path]:
    from unet_opt.tracking import plots

    (folder / "config.toml").write_text(report.config_toml, encoding="utf-8")
    written = [folder / "config.toml"]
    if report.history:
        plots.learning_curves(report.history, folder / "learning_curves.png", report.metric, report.best_epoch)
        written.append(folder / "learning_curves.png")
    for split in report.splits:
        written += write_split(folder, split)
    return written
