"""Batched augmentation (unet_opt/data/augment.py): torchvision's crop and flip distribution, image and
mask moving together, masks never interpolated, and the same batch whichever rank holds which image."""

import subprocess
import sys

import pytest
import torch

from unet_opt.core.data import IGNORE, SegmentationData, batches
from unet_opt.core.data.augment import SCALE, STRETCH, draw
from unet_opt.core.data.classes import ClassTable

DRAWN = 4000


def torchvision_boxes(height: int, width: int) -> torch.Tensor:
    """(DRAWN, 4) boxes (top, left, h, w) from torchvision's own RandomResizedCrop, at fixed seeds."""
    from torchvision.transforms import RandomResizedCrop

    aspect, frame = width / height, torch.zeros(1, height, width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ratio = [aspect * STRETCH[0], aspect * STRETCH[1]]
        return torch.tensor([RandomResizedCrop.get_params(frame, list(SCALE), ratio) for _ in range(DRAWN)])


def summary(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values.mean()[None], values.quantile(torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=values.dtype))])


def coordinate_data(n: int, height: int, width: int) -> SegmentationData:
    """Images whose red and green channels are their pixels' row and column, masks the pixel's number
    (odd numbers only, so an interpolated mask shows) and IGNORE on the top two rows."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    assert 2 * height * width < IGNORE and 30 * (height - 1) <= 255 and 20 * (width - 1) <= 255
    image = torch.stack([rows * 30, cols * 20, torch.zeros_like(rows)]).to(torch.uint8)
    mask = 2 * (rows * width + cols) + 1
    mask[:2] = IGNORE
    images, masks = image.repeat(n, 1, 1, 1), mask.to(torch.uint8).repeat(n, 1, 1)
    return SegmentationData(images, masks, [str(i) for i in range(n)], ClassTable.drone(), binary=False)


@pytest.mark.parametrize("height, width", [(64, 96), (40, 40), (24, 36), (16, 24)])
def test_crops_are_distributed_as_torchvisions(height, width):
    ours = draw(7, DRAWN, height, width)[0].double()
    theirs = torchvision_boxes(height, width).double()
    for boxes in (ours, theirs):
        top, left, h, w = boxes.unbind(1)
        # every box lies within the frame
        assert bool(((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width)).all())
    stats = {}
    for name, boxes in (("ours", ours), ("theirs", theirs)):
        top, left, h, w = boxes.unbind(1)
        area = h * w / (height * width)
        stats[name] = {
            "area": summary(area),
            "aspect": summary((w / h).log()),
            "centre": summary(torch.cat([(top + h / 2) / height, (left + w / 2) / width])),
        }
        # at least half the frame (up to rounding to whole pixels), at most all of it
        assert area.min() > SCALE[0] - 2 * (height + width) / (height * width) and area.max() <= 1
    for key in ("area", "aspect", "centre"):
        # 4000 draws: the means and quantiles of two samples of one distribution agree to about 0.01
        assert torch.allclose(stats["ours"][key], stats["theirs"][key], atol=0.025), (key, stats)
    # rounding to whole pixels makes some sizes more likely than others: the same ones as torchvision's
    # and rounded as torchvision rounds (half a pixel lost to floor() shows on small frames)
    assert (ours[:, 2:].mean(0) - theirs[:, 2:].mean(0)).abs().max() < height / 100
    heights_ours, heights_theirs = (torch.bincount(b[:, 2].long(), minlength=height + 1) / DRAWN for b in (ours, theirs))
    assert (heights_ours - heights_theirs).abs().sum() < 0.1


def test_flips_are_independent_coin_tosses():
    _, flips = draw(3, DRAWN, 64, 96)
    horizontal, vertical = flips.double().unbind(1)
    assert abs(horizontal.mean() - 0.5) < 0.03 and abs(vertical.mean() - 0.5) < 0.03
    assert abs((horizontal * vertical).mean() - 0.25) < 0.03  # independent: both in a quarter of the images


def test_parameters_depend_on_the_seed_and_the_place_only():
    boxes, flips = draw(11, 64, 64, 96)
    fewer_boxes, fewer_flips = draw(11, 10, 64, 96)
    # the first 10 of 64 images get what the first 10 of 10 get: a rank's slice needs no other image's draws
    assert torch.equal(boxes[:10], fewer_boxes) and torch.equal(flips[:10], fewer_flips)
    assert not torch.equal(draw(12, 64, 64, 96)[0], boxes)


def test_a_mask_pixel_is_the_nearest_source_pixel_of_the_image_content():
    n, height, width = 64, 8, 12
    data = coordinate_data(n, height, width)
    x, y = next(batches(data, list(range(n)), n, augment="crop", generator=torch.Generator().manual_seed(0)))
    # where each output pixel's content came from, in source pixels (bilinear of a ramp is the ramp)
    row, col = (x[:, 0] + 1) * 127.5 / 30, (x[:, 1] + 1) * 127.5 / 20
    scored = y != IGNORE
    # a scored mask pixel is the source pixel nearest the content (within half a pixel: ties either way)
    number = (y[scored] - 1) // 2
    assert (row[scored] - number // width).abs().max() <= 0.5 + 1e-3
    assert (col[scored] - number % width).abs().max() <= 0.5 + 1e-3
    # IGNORE stays IGNORE, wherever the content comes from the two ignored rows, and only there
    assert (row[~scored] <= 1.5 + 1e-3).all() and (row[scored] >= 1.5 - 1e-3).all() and (~scored).any()
    # no new mask values: nothing interpolated
    assert set(y.unique().tolist()) <= set(data.masks.unique().tolist())
    # crops and flips really happened, and differ between the images
    assert not torch.equal(y, data.masks.long()) and len({tuple(m.flatten().tolist()) for m in y}) > n // 2
    flipped = x[:, 1, :, 0] > x[:, 1, :, -1]  # the left column shows later columns than the right one
    assert 0.3 < flipped.all(1).float().mean() < 0.7


def test_flips_alone_move_no_pixel_off_the_grid():
    n, height, width = 32, 8, 12
    data = coordinate_data(n, height, width)
    x, y = next(batches(data, list(range(n)), n, augment="flip", generator=torch.Generator().manual_seed(0)))
    frame = data.images[0].float() / 127.5 - 1
    sources = [frame.flip(d) for d in [(), (-1,), (-2,), (-2, -1)]]
    # each image is bit for bit one of the 4 flips of the frame (no resampling), and all 4 occur
    matches = [[k for k, source in enumerate(sources) if torch.equal(image, source)] for image in x]
    assert all(len(m) == 1 for m in matches) and {m[0] for m in matches} == {0, 1, 2, 3}
    kinds = [m[0] for m in matches]
    # its mask is the same flip of the frame's mask
    assert all(torch.equal(mask, data.masks[0].long().flip(d)) for mask, d in
               zip(y, [[(), (-1,), (-2,), (-2, -1)][k] for k in kinds]))


@pytest.mark.parametrize("augment", ["crop", "flip"])
def test_same_seed_same_batches_and_rank_slices_put_together_are_the_single_process_batch(augment):
    n = 32
    data = coordinate_data(n, 8, 12)

    def epoch(shard=(0, 1), seed=5):
        return list(batches(data, list(range(n)), 8, shuffle=True, augment=augment, shard=shard,
                            generator=torch.Generator().manual_seed(seed)))

    whole = epoch()
    again, other = epoch(), epoch(seed=6)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(whole, other))
    for world in (2, 4):
        parts = [epoch((rank, world)) for rank in range(world)]
        for step, (x, y) in enumerate(whole):
            assert torch.equal(torch.cat([p[step][0] for p in parts]), x)
            assert torch.equal(torch.cat([p[step][1] for p in parts]), y)


def test_the_data_package_does_not_import_torchvision():
    # torchvision imports torch._dynamo: seconds of start-up in every process that batches data
    code = "import sys, unet_opt.core.data; assert 'torchvision' not in sys.modules, 'torchvision imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
