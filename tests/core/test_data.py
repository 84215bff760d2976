"""Data sets in memory: synthetic scenes, frames, relabelling, splits, batches and augmentation."""

import numpy as np
import pytest
import torch

from unet_opt.config.schema import DataConfig
from unet_opt.core.data import (
    IGNORE,
    DataCache,
    SegmentationData,
    batches,
    frame_size,
    load_data,
    make_split,
    split_indices,
    synthetic,
)
from unet_opt.core.data.classes import ClassTable
from unet_opt.errors import UserError


def test_synthetic_is_deterministic_and_labelled_with_drone_classes():
    a_img, a_mask, names = synthetic.generate(3, 32, 48)
    b_img, b_mask, _ = synthetic.generate(3, 32, 48)
    # the same call gives the same bytes; scenes differ from each other
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_mask[0], a_mask[1])
    assert names == ["synthetic-0000", "synthetic-0001", "synthetic-0002"]
    _, masks, _ = synthetic.generate(40, 32, 48)
    used = set(np.unique(masks))
    # roads, grass, roofs, trees and cars all occur, all within the 24 drone classes
    assert {synthetic.PAVED, synthetic.GRASS, synthetic.ROOF, synthetic.TREE, synthetic.CAR} <= used
    assert max(used) < len(ClassTable.drone())


def test_same_scene_at_every_size():
    _, small, _ = synthetic.generate(1, 32, 48)
    _, large, _ = synthetic.generate(1, 64, 96)
    # downsampling the large mask by 2 agrees with the small one almost everywhere
    assert (large[0, ::2, ::2] == small[0]).mean() > 0.95


def test_frame_size_follows_aspect_and_depth():
    assert frame_size(DataConfig(image_size=64), depth=3) == (64, 96)
    assert frame_size(DataConfig(image_size=256), depth=4, aspect=1.5) == (256, 384)
    assert frame_size(DataConfig(image_size=40, aspect="square"), depth=3) == (40, 40)
    assert frame_size(DataConfig(image_size=40), depth=3) == (40, 64)  # 60 rounded to a multiple of 8


def test_ignore_index_and_binary_relabelling():
    cfg = DataConfig(image_size=32, synthetic_images=12, ignore_index=synthetic.GRASS)
    data = load_data(cfg, depth=3)
    # the ignored class becomes IGNORE and is never a target
    assert (data.masks == IGNORE).any() and not (data.masks == synthetic.GRASS).any()
    binary = load_data(DataConfig(image_size=32, synthetic_images=12, foreground=["roof", "car"]), depth=3)
    _, raw, _ = synthetic.generate(12, 32, 48)
    expected = np.isin(raw, [synthetic.ROOF, synthetic.CAR]).astype(np.uint8)
    expected[raw == 0] = IGNORE
    # foreground = exactly the roof and car pixels
    assert binary.binary and binary.classes.names == ("background", "roof+car")
    assert np.array_equal(binary.masks.numpy(), expected)


def test_binary_mean_thresholds_the_grayscale_mask():
    data = load_data(DataConfig(image_size=32, synthetic_images=12, binary="mean"), depth=3)
    fg = (data.masks == 1).float().mean(dim=(1, 2))
    # every image has some foreground and some background
    assert data.binary and bool(((fg > 0) & (fg < 1)).all())


def test_unknown_foreground_class_is_a_user_error():
    with pytest.raises(UserError, match="unknown class 'cat'"):
        load_data(DataConfig(image_size=32, synthetic_images=12, foreground=["cat"]), depth=3)


def test_split_is_fixed_disjoint_and_complete():
    names = [f"img{i:03d}" for i in range(100)]
    split = make_split(names, 0.15, 0.15, seed=42)
    assert split == make_split(list(reversed(names)), 0.15, 0.15, seed=42)  # order of discovery is irrelevant
    assert [len(split[p]) for p in ("train", "val", "test")] == [70, 15, 15]
    assert sorted(split["train"] + split["val"] + split["test"]) == names
    # images added later are not in a stored split; images removed are an error
    idx = split_indices(split, names + ["new"])
    assert len(idx["train"]) == 70 and 100 not in idx["train"] + idx["val"] + idx["test"]
    with pytest.raises(UserError, match="not in the data.*--study NAME"):
        split_indices(split, names[1:])


@pytest.mark.parametrize("count, seed", [(12, 0), (24, 7), (120, 0), (400, 123), (401, 2**31 - 1)])
def test_splits_are_scikit_learns_draw_for_draw(count, seed):
    # the split was made by train_test_split before; studies made since must get the very same split
    from sklearn.model_selection import train_test_split

    names = [f"img{i:04d}" for i in range(count)]
    rest, test = train_test_split(names, test_size=round(count * 0.15), random_state=seed)
    train, val = train_test_split(rest, test_size=round(count * 0.15), random_state=seed)
    assert make_split(names, 0.15, 0.15, seed) == {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def test_augmentation_moves_image_and_mask_together():
    n, h, w = 16, 32, 48
    # four quadrants, each a grey level in the image and a class in the mask, placed at random per image
    levels = torch.tensor([20, 90, 160, 230], dtype=torch.uint8)
    quadrant = torch.zeros(h, w, dtype=torch.long)
    quadrant[: h // 2, w // 2:], quadrant[h // 2:, : w // 2], quadrant[h // 2:, w // 2:] = 1, 2, 3
    perms = [torch.randperm(4, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    masks = torch.stack([p[quadrant] for p in perms]).to(torch.uint8)
    images = levels[masks.long()][:, None].repeat(1, 3, 1, 1)
    data = SegmentationData(images, masks, [str(i) for i in range(n)], ClassTable.drone(), binary=False)
    x, y = next(batches(data, list(range(n)), n, augment="crop", generator=torch.Generator().manual_seed(0)))
    grey = torch.round((x[:, 0] + 1) * 127.5).to(torch.uint8)
    exact = torch.isin(grey, levels)  # pixels away from a blended quadrant border (a blend may hit a level)
    # wherever the image shows a quadrant's grey, the mask holds that quadrant's class; apart they would
    # agree on about a quarter of the pixels
    assert (levels[y[exact]] == grey[exact]).float().mean() > 0.99 and exact.float().mean() > 0.8
    assert not torch.equal(y, masks.long())  # the batch really was transformed
    again = next(batches(data, list(range(n)), n, augment="crop", generator=torch.Generator().manual_seed(0)))
    assert torch.equal(again[1], y)  # seeded: the same generator gives the same batch


def test_augmented_batches_depend_on_their_generator_only_and_leave_the_global_rng_alone():
    data = load_data(DataConfig(image_size=32, synthetic_images=12), depth=3)

    def epoch(global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        out = [x for x, _ in batches(data, list(range(12)), 4, shuffle=True, augment="crop",
                                     generator=torch.Generator().manual_seed(0))]
        assert torch.equal(torch.get_rng_state(), before)  # a training loop's own draws stay as they were
        return out

    assert all(torch.equal(a, b) for a, b in zip(epoch(1), epoch(2)))


def test_flip_augmentation_keeps_pixels_exact():
    n = 16
    # every mask value derives from the image's red channel: flips must keep that pairing exactly
    images = torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8)
    masks = (images[:, 0] % 7).to(torch.uint8)
    data = SegmentationData(images, masks, [str(i) for i in range(n)], ClassTable.drone(), binary=False)
    x, y = next(batches(data, list(range(n)), n, augment="flip", generator=torch.Generator().manual_seed(0)))
    red = torch.round((x[:, 0] + 1) * 127.5).long()
    assert torch.equal(red % 7, y) and not torch.equal(red, images[:, 0].long())


def test_batches_cover_the_split_and_drop_last_only_when_asked():
    data = load_data(DataConfig(image_size=32, synthetic_images=12), depth=3)
    sizes = [len(x) for x, _ in batches(data, list(range(10)), 4)]
    assert sizes == [4, 4, 2]
    assert [len(x) for x, _ in batches(data, list(range(10)), 4, drop_last=True)] == [4, 4]
    x, y = next(batches(data, [0, 1], 4))
    assert x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1 and y.dtype == torch.long


def test_synthetic_masks_alone_are_the_masks_of_the_scenes():
    images, masks, _ = synthetic.generate(6, 40, 60)
    none, alone, _ = synthetic.generate(6, 40, 60, masks_only=True)
    assert none is None and np.array_equal(alone, masks)  # every random draw made either way


def test_binary_mean_is_the_mean_of_the_scored_pixels_so_an_ignored_dark_class_leaves_a_background():
    from unet_opt.core.data import relabel

    table = ClassTable(("background", "road", "roof"), ((0, 0, 0), (120, 120, 120), (250, 250, 250)))
    mask = np.zeros((1, 10, 10), np.uint8)  # background (ignored) covers 70 % of the mask
    mask[0, :2], mask[0, 2] = 1, 2  # road 20 %, roof 10 %: only roof is above the mean of what is scored
    binary, _ = relabel(mask, table, DataConfig(binary="mean", ignore_index=0))
    assert (binary[0, :2] == 0).all() and (binary[0, 2] == 1).all() and (binary[0, 3:] == IGNORE).all()
    # (with the ignored black in the mean, road was foreground too: every scored pixel, a Dice of 1 for any model,
    # found by a review); with nothing ignored, the mean of the whole mask as before
    whole, _ = relabel(mask, table, DataConfig(binary="mean", ignore_index=-1))
    assert (whole[0, :3] == 1).all() and (whole[0, 3:] == 0).all()


@pytest.mark.parametrize("augment", ["crop", "flip"])
def test_a_batch_for_another_device_is_sent_as_stored_and_augmented_there(augment):
    # a data set too big for the GPU stays in host memory: its batches used to be converted to float and
    # augmented on the CPU, then copied (4x the bytes). "meta" stands for the GPU here: no CPU has one
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if first is not None and first.is_floating_point() and first.numel() >= 32 * 48:  # image-sized
                self.seen.append((func.__name__.split(".")[0], first.device.type))
            if func.__name__.startswith("_to_copy") and (kwargs or {}).get("device") == torch.device("meta"):
                self.seen.append(("sent", str(first.dtype)))
            return func(*args, **(kwargs or {}))

    data = DataCache(None).get(DataConfig(synthetic_images=24, image_size=32), 3)
    with Ops() as ops:
        x, y = next(batches(data, list(range(8)), 4, augment=augment, generator=torch.Generator().manual_seed(0),
                            to=torch.device("meta")))
    assert x.device.type == y.device.type == "meta" and x.dtype == torch.float32 and y.dtype == torch.int64
    assert ("sent", "torch.uint8") in ops.seen and ("sent", "torch.float32") not in ops.seen, ops.seen
    # no image-sized float work on the CPU (the crops' and flips' random draws are made there, as on a GPU)
    assert {where for what, where in ops.seen if what != "sent"} == {"meta"}, ops.seen
