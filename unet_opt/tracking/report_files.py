"""A run's report files drawn from plain arrays (a `RunReport`): confusion matrix (PNG + CSV), per-class
table, learning curves, prediction overlays, config. Drawn in the run's process or in a writer process."""

from __future__ import annotations

import csv
import json
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
    """Everything a run's files are made from; `write_report` draws them, here or in a writer process.
    Without `figures` (a pruned trial's) only the tables are written, with the report itself in
    `FIGURES_LATER`, from which `unet-opt figures` draws the figures into the run when they are wanted."""

    config_toml: str
    metric: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    splits: list[SplitReport] = field(default_factory=list)
    figures: bool = True
    name: str = ""  # the run, as its figures' titles name it: a file downloaded still says whose it is


FIGURES_LATER = "figures.npz"  # a report whose figures were not drawn: what they are drawn from
FIGURES = ("learning_curves.png", "confusion_matrix.png", "predictions.png")
SHOWN_ROWS = 256  # the prediction images kept for later are at most this tall (nearest for masks)


def write_split(folder: Path, split: SplitReport, figures: bool = True, run_name: str = "") -> list[Path]:
    """Confusion matrix (CSV, and its PNG), per-class table and (with `figures`) prediction overlays."""
    paths = [folder / f"{split.prefix}{name}" for name in ("confusion_matrix.csv", "per_class.csv")]
    write_confusion_csv(split.matrix, split.names, paths[0])
    write_per_class_csv(split.matrix, split.names, paths[1])
    if not figures:
        return paths
    from unet_opt.tracking import plots  # matplotlib, scikit-learn, torchvision: only where figures are drawn

    drawn = [folder / f"{split.prefix}{name}" for name in ("confusion_matrix.png", "predictions.png")]
    title = plots.matrix_title(split.prefix.rstrip("_") or "val", split.epoch, run_name)
    plots.confusion_matrix(split.matrix, split.names, drawn[0], title)
    plots.prediction_overlays(split.images, split.truths, split.preds, split.colors, split.names, drawn[1],
                              title=title)
    return paths + drawn


def write_report(folder: Path, report: RunReport) -> list[Path]:
    (folder / "config.toml").write_text(report.config_toml, encoding="utf-8")
    written = [folder / "config.toml"]
    if report.history and report.figures:
        from unet_opt.tracking import plots

        plots.learning_curves(report.history, folder / "learning_curves.png", report.metric, report.best_epoch,
                              report.name)
        written.append(folder / "learning_curves.png")
    for split in report.splits:
        written += write_split(folder, split, report.figures, report.name)
    if not report.figures and report.history:
        save_report(report, folder / FIGURES_LATER)
        written.append(folder / FIGURES_LATER)
    return written


def save_report(report: RunReport, path: Path) -> None:
    """The report as one compressed NumPy file (no pickle): its figures can be drawn from it anywhere."""
    arrays = {"meta": np.array(json.dumps({"config_toml": report.config_toml, "metric": report.metric, "name": report.name,
                                             "history": report.history, "best_epoch": report.best_epoch,
                                             "splits": [{"names": s.names, "colors": [list(c) for c in s.colors],
                                                         "prefix": s.prefix, "epoch": s.epoch}
                                                        for s in report.splits]}))}
    for i, split in enumerate(report.splits):
        step = max(1, -(-split.truths.shape[1] // SHOWN_ROWS))  # keep every step-th row and column
        arrays.update({f"matrix{i}": split.matrix, f"images{i}": split.images[:, ::step, ::step],
                       f"truths{i}": split.truths[:, ::step, ::step], f"preds{i}": split.preds[:, ::step, ::step]})
    np.savez_compressed(path, **arrays)


def load_report(path: Path) -> RunReport:
    """A report saved by `save_report`, with its figures to draw."""
    with np.load(path, allow_pickle=False) as saved:
        meta = json.loads(str(saved["meta"]))
        splits = [SplitReport(saved[f"matrix{i}"], s["names"], [tuple(c) for c in s["colors"]], saved[f"images{i}"],
                              saved[f"truths{i}"], saved[f"preds{i}"], s["prefix"], s["epoch"])
                  for i, s in enumerate(meta["splits"])]
    return RunReport(meta["config_toml"], meta["metric"], meta["history"], meta["best_epoch"], splits,
                     name=meta.get("name", ""))  # saved before runs were named: none
