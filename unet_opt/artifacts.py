"""The files a trained model leaves behind: confusion matrix, per-class table, curves, overlays, config."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from unet_opt import plots
from unet_opt.data import SegmentationData, batches
from unet_opt.metrics import per_class
from unet_opt.train import FitResult, predict_classes

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
    model.eval()
    out = [predict_classes(model(x), data.binary).cpu() for x, _ in batches(data, indices, 8)]
    return torch.cat(out).numpy().astype(np.uint8)


def write_model_report(folder: Path, matrix: np.ndarray, data: SegmentationData, model: torch.nn.Module,
                       indices: list[int], prefix: str = "", epoch: int | None = None) -> list[Path]:
    """Confusion matrix (PNG + CSV), per-class table and prediction overlays for `indices`: the split that
    `prefix` names ("test_"; none for val), scored with the weights of `epoch` (in the matrix's title)."""
    names = list(data.classes.names)
    paths = [folder / f"{prefix}confusion_matrix.png", folder / f"{prefix}confusion_matrix.csv",
             folder / f"{prefix}per_class.csv", folder / f"{prefix}predictions.png"]
    plots.confusion_matrix(matrix, names, paths[0], plots.matrix_title(prefix.rstrip("_") or "val", epoch))
    write_confusion_csv(matrix, names, paths[1])
    write_per_class_csv(matrix, names, paths[2])
    shown = indices[:OVERLAY_IMAGES]
    data_cpu = data.to(torch.device("cpu"))
    preds = predict_indices(model.cpu(), data_cpu, shown)
    images = data_cpu.images[shown].permute(0, 2, 3, 1).numpy()
    plots.prediction_overlays(images, data_cpu.masks[shown].numpy(), preds, list(data.classes.colors), names, paths[3])
    return paths


def write_trial_artifacts(folder: Path, result: FitResult, data: SegmentationData, val_indices: list[int],
                          config_toml: str, metric: str) -> list[Path]:
    """Everything DESIGN.md lists for a trial; only the config when no epoch finished."""
    (folder / "config.toml").write_text(config_toml, encoding="utf-8")
    written = [folder / "config.toml"]
    if result.history:
        plots.learning_curves(result.history, folder / "learning_curves.png", metric, result.best_epoch)
        written.append(folder / "learning_curves.png")
    if result.model is not None and result.confusion is not None:
        written += write_model_report(folder, result.confusion, data, result.model, val_indices, epoch=result.best_epoch)
    return written
