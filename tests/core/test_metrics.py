"""The confusion matrix and its scores, checked against scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from unet_opt.core.metrics import ConfusionMatrix, per_class, scores_from_matrix

IGNORE = 255


def confusion(pred, target, k, ignore=None):
    cm = ConfusionMatrix(k, ignore)
    # accumulate in two halves: counts must add up exactly like one pass over everything
    half = len(pred) // 2
    cm.update(torch.as_tensor(pred[:half]), torch.as_tensor(target[:half]))
    cm.update(torch.as_tensor(pred[half:]), torch.as_tensor(target[half:]))
    return cm.matrix()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn_with_ignore_and_absent_classes(seed):
    rng = np.random.default_rng(seed)
    k = 7  # class 6 never occurs in truth nor prediction; class 5 only in prediction
    target = rng.choice([0, 1, 2, 3, 4], size=(6, 9, 11))
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.choice([0, 1, 2, 3, 4, 5], size=target.shape))
    target[rng.random(target.shape) < 0.1] = IGNORE
    matrix = confusion(pred.astype(np.int64), target.astype(np.int64), k, IGNORE)

    keep = target.ravel() != IGNORE
    y, p = target.ravel()[keep], pred.ravel()[keep]
    s = scores_from_matrix(matrix)
    labels = sorted(set(y) | set(p))  # the classes present in truth or prediction
    # dice is macro F1 over the present classes, exactly as sklearn computes it
    assert s["dice"] == pytest.approx(f1_score(y, p, average="macro"))
    assert s["f1_macro"] == pytest.approx(f1_score(y, p, average="macro"))
    assert s["f1_weighted"] == pytest.approx(f1_score(y, p, average="weighted"))
    assert s["miou"] == pytest.approx(jaccard_score(y, p, average="macro"))
    assert s["pixel_accuracy"] == pytest.approx(accuracy_score(y, p))
    pc = per_class(matrix)
    # per-class scores equal sklearn's for each present class; absent classes are flagged
    assert pc["dice"][labels] == pytest.approx(f1_score(y, p, average=None, labels=labels))
    assert pc["precision"][labels] == pytest.approx(precision_score(y, p, average=None, labels=labels, zero_division=0))
    assert pc["recall"][labels] == pytest.approx(recall_score(y, p, average=None, labels=labels, zero_division=0))
    assert pc["present"].tolist() == [True] * 6 + [False]


def test_ignored_pixels_are_not_counted():
    target = torch.tensor([[0, 1, IGNORE, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 0]])
    matrix = confusion(pred, target, 2, IGNORE)
    # only the two labelled pixels count
    assert matrix.sum() == 2 and scores_from_matrix(matrix)["dice"] == 1.0


def test_binary_dice_is_the_foreground_dice():
    target = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    pred = np.array([0, 0, 1, 1, 1, 0, 0, 0])
    matrix = confusion(torch.as_tensor(pred), torch.as_tensor(target), 2)
    # binary: dice is the positive class's F1; f1_macro still averages both classes
    assert scores_from_matrix(matrix, binary=True)["dice"] == pytest.approx(f1_score(target, pred))
    assert scores_from_matrix(matrix, binary=True)["f1_macro"] == pytest.approx(f1_score(target, pred, average="macro"))


def test_empty_matrix_scores_zero():
    assert scores_from_matrix(np.zeros((3, 3))) == {"dice": 0.0, "f1_macro": 0.0, "f1_weighted": 0.0, "miou": 0.0,
                                        "pixel_accuracy": 0.0}


def test_counting_a_batch_uses_no_operation_that_waits_for_a_gpu():
    # boolean indexing (nonzero) and bincount size their output from the data: on a GPU each waits for it, every
    # batch; the matrix is counted with operations whose output size is known (a review of the CUDA paths)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    pred, target = torch.randint(0, 4, (2, 8, 8)), torch.randint(0, 4, (2, 8, 8))
    target[0, 0] = 255
    matrix = ConfusionMatrix(4, ignore_index=255)
    with Ops() as ops:
        matrix.update(pred, target)
    assert not [n for n in ops.names if n.split(".")[0] in ("nonzero", "bincount", "index", "masked_select")], ops.names
    keep = target != 255
    expected = np.zeros((4, 4), np.int64)
    np.add.at(expected, (target[keep].numpy(), pred[keep].numpy()), 1)
    assert (matrix.matrix() == expected).all()
