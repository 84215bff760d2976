"""Figures from plain arrays, saved as PNG: confusion matrix, learning curves, prediction overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # the backend is Agg: runtime.setup sets MPLBACKEND before this import
import numpy as np


def confusion_matrix(matrix: np.ndarray, names: list[str], path: Path, title: str = "") -> None:
    """Row-normalised (each true class sums to 1); classes absent from truth and prediction are dropped."""
    matrix = np.asarray(matrix, dtype=float)
    keep = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    matrix, names = matrix[keep][:, keep], [n for n, k in zip(names, keep) if k]
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = 2.5 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 16:
        for i, j in np.ndindex(normalised.shape):
            if normalised[i, j] >= 0.01:
                ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if normalised[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or "confusion matrix (row-normalised)")
    fig.subplots_adjust(left=0.25, bottom=0.25, right=0.95, top=0.92)  # room for class names, no layout solver
    fig.savefig(path, dpi=80)
    plt.close(fig)


def learning_curves(history: list[dict[str, float]], path: Path, metric: str = "val_dice") -> None:
    """Losses on the left, validation scores on the right, one point per epoch."""
    epochs = np.arange(1, len(history) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    present = set(history[0]) if history else set()  # a retrain on train+val has no val_* keys
    for key in ("train_loss", "val_loss"):
        if key in present:
            left.plot(epochs, [h[key] for h in history], marker="o", label=key)
    left.set_xlabel("epoch")
    left.set_title("loss")
    left.legend()
    for key in dict.fromkeys((metric, "val_dice", "val_miou", "val_pixel_accuracy")):
        if key != "val_loss" and key in present:
            right.plot(epochs, [h[key] for h in history], marker="o", label=key)
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.set_title("validation" if right.lines else "no validation (trained on train+val)")
    if right.lines:
        right.legend()
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.9, wspace=0.2)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def colorize(mask: np.ndarray, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 in the class table's colours; unknown values black."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = colors
    return palette[mask]


def prediction_overlays(images: np.ndarray, truths: np.ndarray, preds: np.ndarray,
                        colors: list[tuple[int, int, int]], path: Path, min_height: int = 160) -> None:
    """One row per image: image | truth | prediction, masks blended over the image.

    Composed as one array and written with `imsave`: a figure with a dozen axes costs a second a trial.
    Small images are enlarged (nearest neighbour) so that single pixels stay visible.
    """
    scale = max(1, -(-min_height // images.shape[1]))
    rows = []
    for image, truth, pred in zip(images, truths, preds):
        panels = [image] + [(0.4 * image + 0.6 * colorize(m, colors)).astype(np.uint8) for m in (truth, pred)]
        gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows[:-1], axis=0)
    plt.imsave(path, grid.repeat(scale, axis=0).repeat(scale, axis=1))
