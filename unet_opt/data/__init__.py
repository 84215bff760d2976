"""Data: load a data set as uint8 tensors in memory, turn it binary if asked, batch and augment it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unet_opt.config import DataConfig
from unet_opt.data import synthetic
from unet_opt.data.augment import augment as augmented
from unet_opt.data.cache import Progress, prepare, read_sizes
from unet_opt.data.classes import ClassTable
from unet_opt.data.layouts import find_source, problems_error
from unet_opt.data.splits import make_split, split_indices, split_sizes
from unet_opt.errors import UserError

__all__ = ["SegmentationData", "load_data", "frame_size", "batches", "make_split", "split_indices", "ClassTable"]

IGNORE = 255  # mask value of ignored pixels once loaded (any class id may be the configured ignore_index)


@dataclass
class SegmentationData:
    images: torch.Tensor  # (N, 3, H, W) uint8
    masks: torch.Tensor  # (N, H, W) uint8 class indices, IGNORE where not scored
    names: list[str]  # one per image: file stems, used by splits
    classes: ClassTable
    binary: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device) -> SegmentationData:
        return SegmentationData(self.images.to(device), self.masks.to(device), self.names, self.classes, self.binary)

    def pinned(self) -> SegmentationData:
        """In page-locked memory, so batches copy to the GPU asynchronously."""
        return SegmentationData(self.images.pin_memory(), self.masks.pin_memory(), self.names, self.classes,
                                self.binary)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size() + self.masks.numel() * self.masks.element_size()


def frame_size(cfg: DataConfig, depth: int, aspect: float = synthetic.ASPECT) -> tuple[int, int]:
    """(height, width): height = image_size, width from the aspect ratio rounded to a multiple of 2**depth."""
    if cfg.aspect == "square":
        return cfg.image_size, cfg.image_size
    multiple = 2**depth
    return cfg.image_size, max(multiple, round(cfg.image_size * aspect / multiple) * multiple)


def check_splittable(cfg: DataConfig) -> None:
    """Enough images for train, val and test, counted from file names: checked before anything is decoded."""
    if cfg.dataset == "synthetic":
        count = cfg.synthetic_images
    else:
        count = len(find_source(Path(cfg.dataset).expanduser(), cfg.num_classes).pairs)
    split_sizes(count, cfg.val_fraction, cfg.test_fraction)


def load_data(cfg: DataConfig, depth: int, cache_dir: Path | None = None,
              progress: Progress | None = None) -> SegmentationData:
    """The data set named by `cfg.dataset`, resized to `frame_size`, with ignore and binary rules applied.

    A folder is checked (layout, pairs, class table, headers) before anything is decoded, then read
    through the decode-once cache in `cache_dir`.
    """
    if cfg.dataset == "synthetic":
        height, width = frame_size(cfg, depth)
        images, masks, names = synthetic.generate(cfg.synthetic_images, height, width)
        classes = ClassTable.drone()
        if len(classes) != cfg.num_classes:
            raise UserError(f"data.num_classes = {cfg.num_classes} but the synthetic data has {len(classes)} "
                            f"classes; set data.num_classes = {len(classes)}")
    else:
        source = find_source(Path(cfg.dataset).expanduser(), cfg.num_classes)
        sizes, problems = read_sizes(source)
        if problems:
            raise problems_error(source.root, problems)
        aspect = float(np.median([w / h for w, h in sizes]))
        height, width = frame_size(cfg, depth, aspect)
        if cache_dir is None:
            raise ValueError("a folder data set needs a cache_dir")
        images, masks, _ = prepare(source, height, width, cache_dir, progress)
        classes, names = source.classes, [n for n, _, _ in source.pairs]
    masks, classes = relabel(masks, classes, cfg)
    return SegmentationData(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(masks), names, classes,
                            binary=bool(cfg.binary or cfg.foreground))


def relabel(masks: np.ndarray, classes: ClassTable, cfg: DataConfig) -> tuple[np.ndarray, ClassTable]:
    """Mark ignored pixels, and map to background/foreground in binary mode."""
    ignored = masks == cfg.ignore_index if cfg.ignore_index >= 0 else np.zeros(masks.shape, bool)
    if cfg.foreground:
        unknown = [n for n in cfg.foreground if n not in classes.names]
        if unknown:
            raise UserError(f"data.foreground: unknown class '{unknown[0]}'; classes are {', '.join(classes.names)}")
        fg = np.isin(masks, [classes.index(n) for n in cfg.foreground]).astype(np.uint8)
        name = "+".join(cfg.foreground)
    elif cfg.binary == "mean":
        # the original study read the colour mask as grayscale and kept what lies above its mean
        luma = np.array([0.299 * r + 0.587 * g + 0.114 * b for r, g, b in classes.colors], np.float32)
        gray = luma[masks]
        fg = (gray > gray.mean(axis=(1, 2), keepdims=True)).astype(np.uint8)
        name = "foreground"
    else:
        return np.where(ignored, IGNORE, masks).astype(np.uint8), classes
    binary = ClassTable(("background", name), ((0, 0, 0), (255, 255, 255)))
    return np.where(ignored, IGNORE, fg).astype(np.uint8), binary


def batches(data: SegmentationData, indices: list[int] | torch.Tensor, batch_size: int, *, shuffle: bool = False,
            augment: str = "none", generator: torch.Generator | None = None, drop_last: bool = False,
            shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images (B, 3, H, W) float in [-1, 1], masks (B, H, W) long) from the tensors in memory.

    `shard=(rank, world)`: every rank draws the same global batches and keeps its contiguous slice of
    each, so N processes together see exactly what one process sees. `augment` ("crop", "flip" or "none",
    see `augment.py`) runs on the data's device, once per batch: each image's crop and flips come from
    the batch's seed (drawn from `generator`) and its place in the global batch, so the same image gets
    the same crop and flips whichever rank holds it, whatever else uses the global RNG.
    """
    order = torch.as_tensor(indices, dtype=torch.long)
    if shuffle:
        order = order[torch.randperm(len(order), generator=generator)]
    stop = len(order) - (len(order) % batch_size if drop_last and len(order) > batch_size else 0)
    device = data.images.device
    rank, world = shard
    for start in range(0, stop, batch_size):
        batch = order[start:start + batch_size]
        first = rank * len(batch) // world  # this rank's slice of the global batch
        idx = batch[first:(rank + 1) * len(batch) // world].to(device)
        x, y = data.images[idx].float(), data.masks[idx]  # cropped on float: bilinear, no rounding to uint8
        if augment != "none":
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            x, y = augmented(x, y, augment, seed, first, len(batch))
        # clamped: a bilinear blend of 255s may come out a rounding error above 255
        yield x.div_(127.5).sub_(1.0).clamp_(-1.0, 1.0).contiguous(), y.long()
