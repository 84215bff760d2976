"""A run's report files drawn from plain arrays (a `RunReport`): confusion matrix (PNG + CSV), per-class
table, learning curves, prediction overlays, config. Drawn in the run's process or in a writer process."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unet_opt.core.metrics import per_class


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
