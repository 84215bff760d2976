"""Figures from plain arrays, saved as PNG: confusion matrix, learning curves, prediction overlays.

Each `*_figure()` builds a matplotlib Figure (what the tests look at) and its wrapper saves it. Figures are
made with `Figure()`, not pyplot: nothing keeps a reference to them, so a long search holds none once saved.
matplotlib, scikit-learn and torchvision (seconds to import together) are imported by the functions that
draw: importing this module costs nothing before a figure is drawn.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
LOG_LOSS_RANGE = 30  # largest / smallest loss beyond which the loss panel has a log axis


def import_drawing_libraries() -> None:
    """What the figures need, imported ahead of the first one (a writer process does it while it waits)."""
    import matplotlib.figure  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torchvision.utils  # noqa: F401


def save(fig: Figure, path: Path) -> None:
    # at the figure's own dpi, so that figimage pixels are not resampled; zlib's fastest level: 40 % of the
    # encoding time for files ~15 % larger
    fig.savefig(path, dpi=fig.dpi, pil_kwargs={"compress_level": 1})
    fig.clear()


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each true class's row as fractions of its pixels; a class with no true pixels keeps a row of zeros."""
    matrix = np.asarray(matrix, dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)  # no 0/0, no NaN warning


def matrix_title(split: str, epoch: int | None = None, run: str = "", frame: str = "") -> str:
    """E.g. "val split, epoch 7"; just the split where the epoch is not known; with the run first and the frame
    last when given ("trial #4, val split, epoch 7", "models:/m@champion, test split, at 64x96"), so that a
    downloaded file still says whose it is."""
    where = "all images" if split == "all" else f"{split} split"
    return ", ".join(filter(None, (run, f"{where}, epoch {epoch}" if epoch else where, frame and f"at {frame}")))


def cell_values(normalised: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(rows, columns, "0.93"-style texts) of the cells worth a number: under 0.5 % stays blank, so that the
    eye finds the large ones."""
    rows, columns = np.nonzero(normalised >= 0.005)
    return rows, columns, [f"{v:.2f}" for v in normalised[rows, columns]]


@functools.lru_cache(maxsize=1024)
def centred_text_path(text: str, fontsize: float):
    """`text`'s outline in the default font, in points, centred on (0, 0)."""
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    path = TextPath((0, 0), text, size=fontsize)  # in points, the default font
    box = path.get_extents()
    return path.transformed(Affine2D().translate(-(box.x0 + box.x1) / 2, -(box.y0 + box.y1) / 2))


def centred_texts(texts: list[str], centres: np.ndarray, transform, fontsize: float, colors: list[str]):
    """Many short texts as one collection of their outlines, each centred on its point: one draw call. A
    24x24 matrix's 576 values as `Text` artists took 0.7 s to draw (glyph layout, one by one) of the
    figure's 1.1 s; the whole figure now takes 0.35 s. A value has 101 possible texts, each outlined once."""
    from matplotlib.collections import PathCollection
    from matplotlib.transforms import Affine2D

    return PathCollection([centred_text_path(t, fontsize) for t in texts], offsets=centres,
                          offset_transform=transform, transform=Affine2D().scale(DPI / 72),  # points -> pixels
                          facecolors=colors, edgecolors="none")


def confusion_matrix_figure(matrix: np.ndarray, names: list[str], title: str = "") -> Figure:
    """Every class in the table, in its order (the same layout in every run); rows normalised per true class."""
    from matplotlib.figure import Figure  # lazy: ~0.5 s, not needed before a trial's end
    from sklearn.metrics import ConfusionMatrixDisplay  # lazy: scikit-learn is ~1 s

    matrix, n = np.asarray(matrix), len(names)
    normalised = normalise_rows(matrix)
    # sizes in inches: ~0.4 in a cell holds "0.93" (24 classes -> ~1200 px); margins fit the longest name.
    # Fixed margins rather than a layout solver, and text in the visible cells only: 576 texts and
    # constrained layout cost a second a trial at 24 classes.
    side, names_in = max(4.0, 0.4 * n), 0.4 + 0.075 * max(map(len, names), default=1)
    width, height = names_in + side + 1.3, names_in + side + 0.7
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((names_in / width, names_in / height, side / width, side / height))
    display = ConfusionMatrixDisplay(normalised, display_labels=names)
    display.plot(ax=ax, include_values=False, cmap="Blues", xticks_rotation=90, colorbar=False,
                 im_kw={"vmin": 0, "vmax": 1})
    fig.colorbar(display.im_, cax=fig.add_axes(((names_in + side + 0.2) / width, names_in / height, 0.2 / width,
                                                side / height)), label="fraction of the true class's pixels")
    rows, columns, values = cell_values(normalised)
    ax.add_collection(centred_texts(values, np.column_stack([columns, rows]), ax.transData, fontsize=8 if n > 12 else 10,
                                    colors=["white" if normalised[i, j] > 0.5 else "black"
                                            for i, j in zip(rows, columns)]), autolim=False)
    for label, missing in zip(ax.get_yticklabels(), matrix.sum(axis=1) == 0):
        label.set_color("0.6" if missing else "black")  # no true pixels of that class: its row is empty
    ax.tick_params(labelsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix, {title}" if title else "Confusion matrix", fontsize=12, pad=20)
    ax.text(0.5, 1 + 0.08 / side, "each row sums to 1; a grey name: no scored pixels of that class (none, or ignored)",
            transform=ax.transAxes, ha="center", va="bottom", fontsize=9, color="0.3")
    return fig


def confusion_matrix(matrix: np.ndarray, names: list[str], path: Path, title: str = "") -> None:
    save(confusion_matrix_figure(matrix, names, title), path)


# two different measures on one axis: the training objective (the recipe's loss, class weights and all) and the
# plain cross-entropy that every trial is validated with, so a val_loss below train_loss is no paradox
LOSS_LABELS = {"train_loss": "train_loss (the training objective)", "val_loss": "val_loss (cross-entropy, unweighted)"}


def learning_curves_figure(history: list[dict[str, float]], metric: str = "val_dice",
                           best_epoch: int | None = None, run: str = "") -> Figure:
    """Losses on the left, validation scores on the right, one point per epoch; the search goal drawn bold;
    titled with the `run` when given, so that a downloaded file still says whose it is."""
    from matplotlib.figure import Figure  # lazy: ~0.5 s, not needed before a trial's end
    from matplotlib.ticker import FixedLocator, MaxNLocator

    epochs = np.arange(1, len(history) + 1)
    present = set(history[0]) if history else set()  # a retrain on train+val has no val_* keys
    scores = [k for k in dict.fromkeys((metric, "val_dice", "val_miou", "val_pixel_accuracy")) if "loss" not in k]
    validated = any(k in present for k in scores)
    height = 4.2 if run else 3.8  # inches; the title takes the difference
    fig = Figure(figsize=(10 if validated else 5.5, height), dpi=DPI)
    # fixed margins that fit the labels: a layout solver costs a tenth of a second a figure
    panels = fig.subplots(1, 2 if validated else 1, squeeze=False,
                          gridspec_kw={"left": 0.07 if validated else 0.13, "right": 0.98, "bottom": 0.13 * 3.8 / height,
                                       "top": 1 - 0.08 * 3.8 / height - (0.4 / height if run else 0), "wspace": 0.2})[0]
    if run:
        fig.suptitle(f"Learning curves, {run}", fontsize=12, y=1 - 0.08 / height)
    left = panels[0]
    if not validated:  # no score to draw, and no best epoch: the run trained for a count of epochs it was given
        best_epoch = None
    for ax, keys in zip(panels, (("train_loss", "val_loss"), scores)):
        for key in (k for k in keys if k in present):
            goal = key == metric
            ax.plot(epochs, [h[key] for h in history], marker="o", lw=2.5 if goal else 1.2,
                    label=f"{key} (search goal)" if goal else LOSS_LABELS.get(key, key), zorder=3 if goal else 2)
        if best_epoch:
            ax.axvline(best_epoch, color="0.5", ls=":", label=f"best epoch ({best_epoch})")
        # epochs are whole numbers: each one ticked while few (one, for most pruned trials), else some
        ax.xaxis.set_major_locator(FixedLocator(epochs) if len(epochs) <= 15 else MaxNLocator(integer=True))
        ax.set_xlim(0.5, len(history) + 0.5)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=8)
    losses = np.array([h[k] for h in history for k in ("train_loss", "val_loss") if k in h], dtype=float)
    losses = losses[np.isfinite(losses)]
    # a first epoch's loss of ~1000 beside later ones of ~1 flattens a linear axis to a line at 0
    log_scale = losses.size and losses.min() > 0 and losses.max() / losses.min() > LOG_LOSS_RANGE
    if log_scale:
        left.set_yscale("log")
    left.set_ylabel("loss (log scale)" if log_scale else "loss")
    left.set_title("loss" if validated else "loss (trained on train+val: no validation)")
    if validated:
        right = panels[1]
        right.set_ylim(0, 1)
        right.set_ylabel(f"score (search goal: {metric})" if metric in present and "loss" not in metric else "score")
        right.set_title("validation")
    return fig


def learning_curves(history: list[dict[str, float]], path: Path, metric: str = "val_dice",
                    best_epoch: int | None = None, run: str = "") -> None:
    save(learning_curves_figure(history, metric, best_epoch, run), path)


def colorize(mask: np.ndarray, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 in the class table's colours; unknown values black."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = colors
    return palette[mask]


def paint(image: torch.Tensor, mask: np.ndarray, colors: list[tuple[int, int, int]]) -> torch.Tensor:
    """Class colours, exact (alpha 1), over a (3, H, W) image; unscored pixels (255) leave the image seen."""
    from torchvision.utils import draw_segmentation_masks  # lazy: torchvision imports torch._dynamo, ~2 s

    ids = [int(c) for c in np.unique(mask) if c < len(colors)]
    if not ids:
        return image
    masks = torch.from_numpy(mask[None] == np.array(ids)[:, None, None])
    return draw_segmentation_masks(image, masks, alpha=1.0, colors=[tuple(colors[c]) for c in ids])


def prediction_overlays_figure(images: np.ndarray, truths: np.ndarray, preds: np.ndarray,
                               colors: list[tuple[int, int, int]], names: list[str], min_height: int = 160,
                               title: str = "") -> Figure:
    """One row per image: image | truth | prediction, with column titles, a legend of the classes shown and
    `title` above them (the run and split: "trial #4, val split, epoch 5").

    The grid is placed with `figimage`, pixel for pixel (no axes, no resampling): mask colours stay the
    table's exact colours, and a dozen axes would cost a second a trial. Small images are enlarged
    (nearest neighbour) so that single pixels stay visible.
    """
    from matplotlib.figure import Figure  # lazy: ~0.5 s, not needed before a trial's end
    from matplotlib.patches import Patch
    from torchvision.utils import make_grid  # lazy: torchvision imports torch._dynamo, ~2 s

    scale = max(1, -(-min_height // images.shape[1]))
    panels = []
    for image, truth, pred in zip(images, truths, preds):
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        panels += [tensor, paint(tensor, truth, colors), paint(tensor, pred, colors)]
    gap = 3
    grid = make_grid(panels, nrow=3, padding=gap, pad_value=255).permute(1, 2, 0).numpy()
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    shown = np.union1d(np.unique(truths), np.unique(preds))
    handles = [Patch(facecolor=np.array(colors[c]) / 255, edgecolor="0.4", label=names[c])
               for c in shown if c < len(colors)]
    if (shown >= len(colors)).any():
        handles.append(Patch(facecolor="white", edgecolor="0.4", hatch="///", label="not scored (image shows)"))
    # legend in as many columns as the grid's height needs, ~18 px a row at 9 pt
    rows_fit = max(4, (grid.shape[0] - 20) // 18)
    ncol = max(1, math.ceil(len(handles) / rows_fit))
    longest = max((len(h.get_label()) for h in handles), default=8)
    legend_w = 30 + ncol * (40 + 7 * longest)
    heading = 26 if title else 0  # px for the title
    top = heading + 28  # and for the column titles
    height = max(grid.shape[0], 18 * math.ceil(len(handles) / ncol) + 40) + top
    width = grid.shape[1] + legend_w
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.figimage(grid, xo=0, yo=height - top - grid.shape[0], origin="upper")
    if title:
        fig.text(4 / width, 1 - 0.5 * heading / height, title, ha="left", va="center", fontsize=11)
    panel_w = (grid.shape[1] - gap * scale) / 3
    for k, label in enumerate(("image", "truth", "prediction")):
        fig.text((gap * scale + panel_w * (k + 0.5)) / width, 1 - (heading + 14) / height, label,
                 ha="center", va="center", fontsize=11, weight="bold")
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(grid.shape[1] / width, 1 - top / height),
               ncol=ncol, fontsize=9, title="classes", frameon=False, handlelength=1.5)
    return fig


def prediction_overlays(images: np.ndarray, truths: np.ndarray, preds: np.ndarray, colors: list[tuple[int, int, int]],
                        names: list[str], path: Path, min_height: int = 160, title: str = "") -> None:
    save(prediction_overlays_figure(images, truths, preds, colors, names, min_height, title), path)
