"""Scoring at the evaluation frame: logits resized to it, masks drawn at it, scored as scikit-learn scores."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from unet_opt.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from unet_opt.core.data import IGNORE, SegmentationData, load_data, make_split, relabel, split_indices, synthetic
from unet_opt.core.data.classes import ClassTable
from unet_opt.core.metrics import scores_from_matrix
from unet_opt.core.native import resized_bands
from unet_opt.core.scoring import loss_and_matrix
from unet_opt.core.train import fit


def sklearn_dice(truth: torch.Tensor, pred: torch.Tensor) -> float:
    """Macro F1 over the classes present in truth or prediction, scored pixels only: the study's `dice`."""
    keep = truth != IGNORE
    t, p = truth[keep].numpy(), pred[keep].numpy()
    return f1_score(t, p, labels=np.union1d(t, p), average="macro")


def test_a_trial_at_32_px_is_scored_against_masks_drawn_at_64_px_as_scikit_learn_scores_it():
    data = load_data(DataConfig(image_size=32, eval_size=64, synthetic_images=24), depth=2)
    assert tuple(data.images.shape[-2:]) == (32, 48) and data.scored_frame == (64, 96)
    # the masks it is scored by are drawn at 64x96 from the scene itself, not upsampled from 32x48
    _, drawn, _ = synthetic.generate(24, 64, 96)
    expected, _ = relabel(drawn, ClassTable.drone(), DataConfig())
    assert torch.equal(data.eval_masks, torch.from_numpy(expected))
    split = split_indices(make_split(data.names, 0.2, 0.2, 0), data.names)
    cfg = Config(data=DataConfig(augment="none"), model=ModelConfig(base_channels=4, depth=2),
                 train=TrainConfig(lr=0.01, batch_size=4, epochs=2, patience=9))
    result = fit(cfg, data, split)
    # the confusion matrix counts the scored pixels of the 64x96 masks
    val_truth = data.eval_masks[split["val"]]
    assert result.confusion.sum() == int((val_truth != IGNORE).sum())
    # the logged Dice is scikit-learn's on the prediction upsampled (bilinear logits, then argmax) to 64x96
    x = data.images[split["val"]].float() / 127.5 - 1
    with torch.no_grad():
        logits = F.interpolate(result.model(x), size=(64, 96), mode="bilinear", align_corners=False)
    logits[:, 0] = float("-inf")  # "unlabeled" (the ignore_index) is never a target, so never a prediction
    pred = logits.argmax(1)
    assert result.best_metrics["val_dice"] == pytest.approx(sklearn_dice(val_truth, pred), abs=1e-9)


def test_resizing_logits_band_by_band_equals_resizing_them_at_once():
    logits = torch.randn(1, 5, 7, 11)
    whole = F.interpolate(logits, size=(45, 61), mode="bilinear", align_corners=False)
    bands = list(resized_bands(logits, 45, 61, band_bytes=5 * 61 * 4 * 4))  # 4 rows a band
    assert len(bands) == 12 and all(band.shape[-2] <= 4 for _, band in bands)
    assert torch.allclose(torch.cat([band for _, band in bands], dim=2), whole, atol=1e-5)


class Replay(nn.Module):
    """A "model" that answers each batch with the next of the given logits."""

    def __init__(self, logits: list[torch.Tensor]):
        super().__init__()
        self.weight, self.logits = nn.Parameter(torch.zeros(1)), list(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.pop(0)


def test_no_pixel_is_predicted_as_the_ignored_class_so_it_never_counts_as_a_class():
    """A model whose largest logit is "unlabeled" (never trained, never scored) everywhere and the true class
    next: each pixel takes the true class, and "unlabeled" is no class of the macro mean."""
    data = load_data(DataConfig(image_size=32, synthetic_images=6), depth=2)
    assert data.ignored == 0
    truth = data.masks.long()
    logits = F.one_hot(truth.clamp_max(23), 24).permute(0, 3, 1, 2).float() * 5
    logits[:, 0] = 10.0
    _, matrix = loss_and_matrix(Replay([logits]), data, list(range(6)), batch_size=6)
    assert matrix[:, 0].sum() == 0 and np.trace(matrix) == matrix.sum()
    assert scores_from_matrix(matrix)["dice"] == 1.0


def test_the_loss_is_a_mean_over_scored_pixels_whatever_the_batch_size():
    """Images with few scored pixels weigh by their pixels, as the confusion matrix counts them: the same
    val_loss at batch 1, 2 and 6 (batch_size is searched), the cross-entropy of all scored pixels at once."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 4, (6, 8, 12), generator=generator, dtype=torch.uint8)
    for i, scored_columns in enumerate((12, 1, 12, 2, 6, 12)):
        masks[i, :, scored_columns:] = IGNORE
    data = SegmentationData(torch.zeros(6, 3, 8, 12, dtype=torch.uint8), masks, [str(i) for i in range(6)],
                            ClassTable(tuple("abcd"), ((0, 0, 0),) * 4), binary=False)
    logits = torch.randn(6, 4, 8, 12, generator=generator)
    expected = float(F.cross_entropy(logits, masks.long(), ignore_index=IGNORE))
    for batch in (1, 2, 6):
        loss, _ = loss_and_matrix(Replay(list(logits.split(batch))), data, list(range(6)), batch_size=batch)
        assert loss == pytest.approx(expected, abs=1e-6), batch
