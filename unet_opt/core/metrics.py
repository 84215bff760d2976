"""One confusion matrix over a whole split, and every score derived from it.

`ConfusionMatrix.update` only adds counts (on the device, no host sync); scores are computed once, at
the end, from the summed counts: a ratio is never averaged over batches or processes.
Rows are the true class, columns the predicted one.
"""

from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int | None = None, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # one cell more than the matrix: where ignored pixels are counted, then left out
        self.counts = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: integer class maps of the same shape, e.g. (B, H, W). Neither boolean indexing nor
        `bincount` (both wait for a GPU to size their output): ignored pixels go to the extra cell."""
        pred, target = pred.reshape(-1), target.reshape(-1)
        cells = target.long() * self.num_classes + pred.long()  # values in range: masks are checked as data loads
        if self.ignore_index is not None:
            cells = torch.where(target == self.ignore_index, self.num_classes**2, cells)
        self.counts.index_add_(0, cells, torch.ones_like(cells))

    def matrix(self) -> np.ndarray:
        return self.counts[:-1].view(self.num_classes, self.num_classes).cpu().numpy()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, float), where=den > 0)


def per_class(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class dice (= F1), iou, precision, recall, true-pixel support, and whether the class is present."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    true, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    fp, fn = predicted - tp, true - tp
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, true),
        "support": true,
        "present": (true + predicted) > 0,  # in truth or prediction: the classes a macro mean counts
    }


def scores_from_matrix(matrix: np.ndarray, binary: bool = False) -> dict[str, float]:
    """dice, f1_macro, f1_weighted, miou and pixel_accuracy.

    Multiclass: `dice` is the macro mean over present classes (so it equals `f1_macro`, as sklearn's
    macro F1 over the labels seen). Binary: `dice` is the foreground class's Dice, the usual meaning.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    pc = per_class(matrix)
    present = pc["present"]
    total = matrix.sum()
    f1_macro = float(pc["dice"][present].mean()) if present.any() else 0.0
    return {
        "dice": float(pc["dice"][1]) if binary else f1_macro,
        "f1_macro": f1_macro,
        "f1_weighted": float((pc["dice"] * pc["support"]).sum() / total) if total else 0.0,
        "miou": float(pc["iou"][present].mean()) if present.any() else 0.0,
        "pixel_accuracy": float(np.trace(matrix) / total) if total else 0.0,
    }
