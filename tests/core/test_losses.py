"""The training recipe's arithmetic: losses, class weights and learning-rate schedules."""

import math

import numpy as np
import pytest
import torch

from unet_opt.config.schema import TrainConfig
from unet_opt.core.data import IGNORE
from unet_opt.core.losses import class_weights, segmentation_loss
from unet_opt.core.optim import lr_factor, make_optimizer, make_schedule


def two_pixels(p_first: float, p_second: float, extra_ignored: bool = False):
    """Two scored pixels of a 2-class task, true classes 0 then 1, with the softmax probabilities
    (p, 1 - p) at each; optionally a third pixel, ignored, with wild logits."""
    probabilities = [[p_first, 1 - p_first], [p_second, 1 - p_second]]
    target = [0, 1]
    if extra_ignored:
        probabilities.append([0.999, 0.001])
        target.append(IGNORE)
    logits = torch.tensor(probabilities).log().T.reshape(1, 2, 1, -1)
    return logits, torch.tensor(target).reshape(1, 1, -1)


# by hand: pixel 1 has p(true) = 0.8, pixel 2 has p(true) = 0.6
CE = (-math.log(0.8) - math.log(0.6)) / 2


DICE = 1 - ((2 * 0.8 + 1) / (0.8 + 0.4 + 1 + 1) + (2 * 0.6 + 1) / (0.2 + 0.6 + 1 + 1)) / 2  # smooth 1


FOCAL = (0.2**2 * -math.log(0.8) + 0.4**2 * -math.log(0.6)) / 2


@pytest.mark.parametrize("kind,expected", [("ce", CE), ("dice", DICE), ("ce+dice", CE + DICE), ("focal", FOCAL)])
@pytest.mark.parametrize("ignored", [False, True], ids=["all scored", "one ignored"])
def test_each_loss_matches_its_hand_computed_value_and_leaves_ignored_pixels_out(kind, expected, ignored):
    logits, target = two_pixels(0.8, 0.4, ignored)
    assert segmentation_loss(logits, target, False, kind).item() == pytest.approx(expected, rel=1e-5)


def test_binary_losses_on_one_logit():
    logits = torch.tensor([math.log(4), -math.log(4), 5.0]).reshape(1, 1, 1, 3)  # p(fg) = 0.8, 0.2, (ignored)
    target = torch.tensor([1, 0, IGNORE]).reshape(1, 1, 3)
    bce = -math.log(0.8)
    dice = 1 - (2 * 0.8 + 1) / (1 + 1 + 1)  # both classes (bg, fg): p sums 1.0, one true pixel each
    assert segmentation_loss(logits, target, True, "ce").item() == pytest.approx(bce, rel=1e-5)
    assert segmentation_loss(logits, target, True, "dice").item() == pytest.approx(dice, rel=1e-5)
    assert segmentation_loss(logits, target, True, "ce+dice").item() == pytest.approx(bce + dice, rel=1e-5)
    assert segmentation_loss(logits, target, True, "focal").item() == pytest.approx(0.2**2 * bce, rel=1e-5)


def test_class_weights_weigh_each_pixel_by_its_class():
    logits, target = two_pixels(0.8, 0.4)
    weights = torch.tensor([1.0, 3.0])
    expected = (-math.log(0.8) - 3 * math.log(0.6)) / 4  # a weighted mean, as F.cross_entropy(weight=) takes
    assert segmentation_loss(logits, target, False, "ce", weights).item() == pytest.approx(expected, rel=1e-5)
    assert segmentation_loss(logits, target, False, "focal", weights).item() == pytest.approx(
        (0.2**2 * -math.log(0.8) + 3 * 0.4**2 * -math.log(0.6)) / 4, rel=1e-5)


def test_the_dice_term_counts_every_class_alike_whatever_the_class_weights():
    logits, target = two_pixels(0.8, 0.4)
    weighted = segmentation_loss(logits, target, False, "dice", torch.tensor([1.0, 100.0]))
    assert weighted.item() == pytest.approx(DICE, rel=1e-5)


def test_class_weights_are_capped():
    mask = torch.zeros(1, 1, 100_000, dtype=torch.uint8)
    mask[0, 0, :3] = 1  # 3 pixels in 100,000: 1/f would weigh them 16,667 times the average pixel
    assert class_weights(mask, 2, "inverse")[1].item() == 50.0


def test_class_weights_from_a_known_mask():
    mask = torch.tensor([[0] * 6 + [1] * 3 + [2] + [IGNORE] * 5], dtype=torch.uint8)  # 60%, 30%, 10%, class 3 absent
    assert class_weights(mask[None], 4, "none") is None
    inverse = class_weights(mask[None], 4, "inverse")
    assert inverse.tolist() == pytest.approx([1 / 1.8, 1 / 0.9, 1 / 0.3, 1 / 0.3], rel=1e-5)  # 1/f over 3
    root = class_weights(mask[None], 4, "sqrt_inverse")
    f = np.array([0.6, 0.3, 0.1])
    w = 1 / np.sqrt(f) / (np.sqrt(f).sum())
    assert root.tolist() == pytest.approx([*w, w.max()], rel=1e-5)
    assert float((root[:3] * torch.tensor(f, dtype=torch.float32)).sum()) == pytest.approx(1.0)  # the average pixel


@pytest.mark.parametrize("schedule,points", [
    ("constant", {0: 1 / 3, 1: 2 / 3, 2: 1.0, 50: 1.0, 101: 1.0}),  # warm-up of 2 steps, then flat
    ("cosine", {2: 1.0, 52: 0.5, 102: 0.0}),
    ("poly", {2: 1.0, 52: 0.5**0.9, 102: 0.0}),
])
def test_each_schedule_s_curve(schedule, points):
    for step, factor in points.items():
        assert lr_factor(schedule, step, warmup=2, total=102) == pytest.approx(factor, abs=1e-9), step


def test_the_schedule_steps_per_optimizer_step_and_onecycle_peaks_at_lr():
    cfg = TrainConfig(lr=0.1, epochs=4, schedule="onecycle", warmup_epochs=1, optimizer="sgd", momentum=0.5)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    assert optimizer.defaults["nesterov"]
    schedule = make_schedule(optimizer, cfg, steps_per_epoch=10)
    rates = []
    for _ in range(40):
        rates.append(optimizer.param_groups[0]["lr"])
        assert optimizer.param_groups[0]["momentum"] == 0.5  # train.momentum holds: onecycle cycles the rate only
        optimizer.step()
        schedule.step()
    assert max(rates) == pytest.approx(0.1) and rates.index(max(rates)) == 10  # the top after 1 epoch of warm-up
    assert rates[0] == pytest.approx(0.1 / 25) and rates[-1] < 1e-3


@pytest.mark.parametrize("schedule", ["constant", "cosine", "poly", "onecycle"])
@pytest.mark.parametrize("epochs,steps,warmup", [(1, 1, 0), (1, 2, 1), (2, 1, 1), (3, 1, 0), (2, 3, 2)])
def test_every_schedule_runs_on_the_shortest_trials(schedule, epochs, steps, warmup):
    cfg = TrainConfig(lr=0.01, epochs=epochs, schedule=schedule, warmup_epochs=warmup)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch=steps)
    for _ in range(epochs * steps):
        assert 0 < optimizer.param_groups[0]["lr"] <= 0.01
        optimizer.step()
        schedule.step()
