"""Data: load a data set as uint8 tensors in memory, turn it binary if asked, batch and augment it.

A data set is loaded at two frames: the training frame of `data.image_size`, whose images and masks
a trial trains on, and the study's evaluation frame (`data.eval_size`), whose masks every trial is
scored against. Both are decoded from the original files, so a scored mask is never upsampled from
a smaller one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from unet_opt.config.schema import DataConfig
from unet_opt.core.data import synthetic
from unet_opt.core.data.augment import augment as augmented
from unet_opt.core.data.cache import CLASS_TABLE, Progress, pair_digests, prepare
from unet_opt.core.data.classes import ClassTable, ignored_class_warning
from unet_opt.core.data.images import large_photos, read_headers
from unet_opt.core.data.layouts import Source, find_source, lossy_masks_warning, problems_error
from unet_opt.core.data.splits import make_split, split_indices, split_sizes
from unet_opt.errors import UserError

__all__ = ["SegmentationData", "DataCache", "load_data", "frame_size", "eval_frame", "batches", "make_split",
           "split_indices", "ClassTable", "CLASS_TABLE"]

log = logging.getLogger(__name__)

IGNORE = 255  # mask value of ignored pixels once loaded (any class id may be the configured ignore_index)


@dataclass
class SegmentationData:
    images: torch.Tensor  # (N, 3, H, W) uint8 at the training frame
    masks: torch.Tensor  # (N, H, W) uint8 class indices, IGNORE where not scored
    names: list[str]  # one per image: file stems, used by splits
    classes: ClassTable
    binary: bool
    eval_masks: torch.Tensor | None = None  # (N, He, We) at the evaluation frame; None: it is the training frame
    ignored: int | None = None  # the class that data.ignore_index names: never a target, so never predicted

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def scored_masks(self) -> torch.Tensor:
        """The masks predictions are scored against: at the evaluation frame."""
        return self.masks if self.eval_masks is None else self.eval_masks

    @property
    def scored_frame(self) -> tuple[int, int]:
        return tuple(self.scored_masks.shape[-2:])

    def map(self, move) -> SegmentationData:
        """The same data set with `move` applied to each tensor (to a device, into pinned memory)."""
        return replace(self, images=move(self.images), masks=move(self.masks),
                       eval_masks=None if self.eval_masks is None else move(self.eval_masks))

    def to(self, device: torch.device) -> SegmentationData:
        return self.map(lambda t: t.to(device))

    def pinned(self) -> SegmentationData:
        """In page-locked memory, so batches copy to the GPU asynchronously."""
        return self.map(lambda t: t.pin_memory())

    @property
    def nbytes(self) -> int:
        tensors = [self.images, self.masks] + ([] if self.eval_masks is None else [self.eval_masks])
        return sum(t.numel() * t.element_size() for t in tensors)


def frame_size(cfg: DataConfig, depth: int, aspect: float = synthetic.ASPECT) -> tuple[int, int]:
    """(height, width): height = image_size, width from the aspect ratio rounded to a multiple of 2**depth."""
    if cfg.aspect == "square":
        return cfg.image_size, cfg.image_size
    multiple = 2**depth
    return cfg.image_size, max(multiple, round(cfg.image_size * aspect / multiple) * multiple)


def eval_frame(cfg: DataConfig, aspect: float = synthetic.ASPECT) -> tuple[int, int] | None:
    """(height, width) of the evaluation frame: height = eval_size, the width from the aspect ratio (no
    rounding: no model runs at this frame, it is only scored at). None: each trial is scored at its own
    frame (eval_size -1), or the size is not resolved yet (0: see `Config.with_eval_size`)."""
    if cfg.eval_size <= 0:
        return None
    if cfg.aspect == "square":
        return cfg.eval_size, cfg.eval_size
    return cfg.eval_size, max(1, round(cfg.eval_size * aspect))


def check_splittable(cfg: DataConfig) -> None:
    """Enough images for train, val and test, counted from file names: checked before anything is decoded."""
    if cfg.dataset == "synthetic":
        count = cfg.synthetic_images
    else:
        count = len(find_source(Path(cfg.dataset).expanduser(), cfg.num_classes).pairs)
    split_sizes(count, cfg.val_fraction, cfg.test_fraction)


def load_data(cfg: DataConfig, depth: int, cache_dir: Path | None = None,
              progress: Progress | None = None) -> SegmentationData:
    """The data set named by `cfg.dataset` at its training frame (`frame_size`), with the masks of its
    evaluation frame (`eval_frame`) when that differs, and the ignore and binary rules applied.

    A folder is checked (layout, pairs, class table, headers) before anything is decoded, then read
    through the decode-once cache in `cache_dir`.
    """
    return DataCache(cache_dir, progress=progress).get(cfg, depth)


class DataCache:
    """The data sets one process has loaded, by frame: trials at one image size share one data set, and
    the evaluation frame's masks are loaded once, whatever the trials' sizes. Owned by a worker (and by
    each of its rank processes) for all its trials; at most `max_frames` frames are kept."""

    says_folder_warnings = True  # what a folder deserves (huge photos, an ignored class) is said once, by the
    # command's own process, which checks the folder before it starts workers or ranks: they set this False

    def __init__(self, cache_dir: Path | None, max_frames: int = 4, progress: Progress | None = None):
        self.cache_dir, self.max_frames, self.progress = cache_dir, max_frames, progress
        self.frames: dict[tuple, SegmentationData | torch.Tensor] = {}  # (data, height, width[, "masks"]) -> what
        # was loaded at that frame: a data set, or the masks alone (the evaluation frame's)
        self.sets: dict[tuple, SegmentationData] = {}  # (data, training frame, evaluation frame) -> a data set
        self.sources: dict[str, tuple[Source | None, float]] = {}  # a folder's pairs and aspect, checked once
        self.on_device: tuple[SegmentationData, torch.device, SegmentationData] | None = None  # (data, where, copy)

    def placed(self, data: SegmentationData, device: torch.device) -> SegmentationData:
        """`data` where `device` trains on it: on a GPU the whole data set when it takes under a third of the
        free memory, else in pinned host memory; kept for this process's next runs on the same data set,
        until another replaces it. On the CPU, `data` itself."""
        if device.type != "cuda":
            return data
        if self.on_device is None or self.on_device[0] is not data or self.on_device[1] != device:
            self.on_device = None  # the previous copy goes before the next is made
            torch.cuda.empty_cache()
            free, _ = torch.cuda.mem_get_info(device)
            self.on_device = (data, device, data.to(device) if data.nbytes < free / 3 else data.pinned())
        return self.on_device[2]

    def get(self, cfg: DataConfig, depth: int) -> SegmentationData:
        source, aspect = self.source(cfg)
        train, scored = frame_size(cfg, depth, aspect), eval_frame(cfg, aspect)
        scored = None if scored == train else scored
        key = (self.identity(cfg), train, scored)
        if key not in self.sets:
            data = self.frame(cfg, source, train)
            if scored is not None:
                data = replace(data, eval_masks=self.masks_at(cfg, source, scored))
            self.sets[key] = data
            self.trim(self.sets)
        return self.sets[key]

    def digests(self, cfg: DataConfig) -> dict[str, str]:
        """A data folder's content by image name (`cache.pair_digests`); {} for the synthetic data, which
        its config makes."""
        source, _ = self.source(cfg)
        return {} if source is None or self.cache_dir is None else pair_digests(source, self.cache_dir)

    def masks_at(self, cfg: DataConfig, source: Source | None, size: tuple[int, int]) -> torch.Tensor:
        """The masks at the evaluation frame: those of a data set loaded at that frame already, else the masks
        alone (no image is generated or decoded at a frame no model runs at)."""
        loaded = self.frames.get((self.identity(cfg), *size))
        if loaded is not None:
            return loaded.masks
        key = (self.identity(cfg), *size, "masks")
        if key not in self.frames:
            _, masks, _, _ = load_arrays(cfg, source, *size, self.cache_dir, self.progress, masks_only=True)
            if masks.nbytes > 2**30:
                log.warning("the masks of the evaluation frame, %dx%d, take %.1f GB of memory; a smaller "
                            "data.eval_size takes less", *size, masks.nbytes / 2**30)
            self.frames[key] = masks
            self.trim(self.frames)
        return self.frames[key]

    @staticmethod
    def identity(cfg: DataConfig) -> str:
        """What shapes the loaded arrays, but the frame: the data set, its classes and labelling rules."""
        return repr(replace(cfg, image_size=0, eval_size=0, augment="none"))

    def source(self, cfg: DataConfig) -> tuple[Source | None, float]:
        """The folder's checked pairs and its images' median aspect ratio (None and 3:2 for synthetic data)."""
        if cfg.dataset == "synthetic":
            return None, synthetic.ASPECT
        if cfg.dataset not in self.sources:
            source = find_source(Path(cfg.dataset).expanduser(), cfg.num_classes)
            headers = read_headers(source)
            if headers.problems:
                raise problems_error(source.root, headers.problems)
            for warning in (large_photos(headers.sizes), lossy_masks_warning(source),
                            ignored_class_warning(source.classes, source.table, cfg.ignore_index)):
                if warning and self.says_folder_warnings:
                    log.warning("%s", warning)
            self.sources[cfg.dataset] = source, float(np.median([w / h for w, h in headers.sizes.values()]))
        return self.sources[cfg.dataset]

    def frame(self, cfg: DataConfig, source: Source | None, size: tuple[int, int]) -> SegmentationData:
        key = (self.identity(cfg), *size)
        if key not in self.frames:
            self.frames[key] = load_frame(cfg, source, *size, self.cache_dir, self.progress)
            self.trim(self.frames)
        return self.frames[key]

    def trim(self, entries: dict) -> None:
        while len(entries) > self.max_frames:
            entries.pop(next(iter(entries)))


def load_frame(cfg: DataConfig, source: Source | None, height: int, width: int, cache_dir: Path | None,
               progress: Progress | None = None) -> SegmentationData:
    """Images and masks at one frame: generated, or decoded through the cache from the originals."""
    images, masks, names, classes = load_arrays(cfg, source, height, width, cache_dir, progress)
    binary = bool(cfg.binary or cfg.foreground)
    return SegmentationData(images, masks, names, classes, binary,
                            ignored=ignored_class(cfg.ignore_index, len(classes), binary))


def ignored_class(ignore_index: int, num_classes: int, binary: bool) -> int | None:
    """The model output that `data.ignore_index` names (drone: 0, "unlabeled"), which no prediction takes:
    no pixel of it is ever trained or scored, so a pixel given to it would be a guess that counts as a class
    of its own in the macro mean. None in binary mode, or when the index names no class."""
    return ignore_index if not binary and 0 <= ignore_index < num_classes else None


def load_arrays(cfg: DataConfig, source: Source | None, height: int, width: int, cache_dir: Path | None,
                progress: Progress | None = None,
                masks_only: bool = False) -> tuple[torch.Tensor | None, torch.Tensor, list[str], ClassTable]:
    """(images (N, 3, H, W) uint8 or None with `masks_only`, masks (N, H, W) uint8 relabelled, names, classes)."""
    if source is None:
        images, masks, names = synthetic.generate(cfg.synthetic_images, height, width, masks_only=masks_only)
        classes = ClassTable.drone()
        if len(classes) != cfg.num_classes:
            raise UserError(f"data.num_classes = {cfg.num_classes} but the synthetic data has {len(classes)} "
                            f"classes; set data.num_classes = {len(classes)}")
    else:
        if cache_dir is None:
            raise ValueError("a folder data set needs a cache_dir")
        images, masks, _ = prepare(source, height, width, cache_dir, progress, masks_only)
        classes, names = source.classes, [n for n, _, _ in source.pairs]
    masks, classes = relabel(masks, classes, cfg)
    images = None if images is None else torch.from_numpy(images).permute(0, 3, 1, 2)
    return images, torch.from_numpy(masks), names, classes


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
        # ... of the pixels that are scored: with the ignored pixels in the mean, a dark ignored class that
        # covers most of a mask put every scored pixel above it (all foreground, a Dice of 1 for any model)
        luma = np.array([0.299 * r + 0.587 * g + 0.114 * b for r, g, b in classes.colors], np.float32)
        gray = luma[masks]
        scored = ~ignored
        mean = (gray * scored).sum(axis=(1, 2), keepdims=True) / np.maximum(scored.sum(axis=(1, 2), keepdims=True), 1)
        fg = (gray > mean).astype(np.uint8)
        name = "foreground"
    else:
        return np.where(ignored, IGNORE, masks).astype(np.uint8), classes
    binary = ClassTable(("background", name), ((0, 0, 0), (255, 255, 255)))
    return np.where(ignored, IGNORE, fg).astype(np.uint8), binary


def batches(data: SegmentationData, indices: list[int] | torch.Tensor, batch_size: int, *, shuffle: bool = False,
            augment: str = "none", generator: torch.Generator | None = None, drop_last: bool = False,
            shard: tuple[int, int] = (0, 1), scored: bool = False,
            to: torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images (B, 3, H, W) float in [-1, 1], masks (B, H, W) long) from the tensors in memory;
    `scored`: the masks at the evaluation frame (`scored_masks`), to score predictions against. `to`: the
    device the batches are for; a data set kept in host memory for a GPU sends each batch there as it is
    stored (uint8: a quarter of the bytes of float), and the crop, flips and scaling run on the GPU.

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
    masks = data.scored_masks if scored else data.masks
    if scored and augment != "none":
        raise ValueError("scored batches are never augmented")
    rank, world = shard
    for start in range(0, stop, batch_size):
        batch = order[start:start + batch_size]
        first = rank * len(batch) // world  # this rank's slice of the global batch
        idx = batch[first:(rank + 1) * len(batch) // world].to(device)
        x, y = data.images[idx], masks[idx]
        if to is not None and to != device:
            x, y = x.to(to, non_blocking=True), y.to(to, non_blocking=True)
        x = x.float()  # cropped on float: bilinear, no rounding to uint8
        if augment != "none":
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            x, y = augmented(x, y, augment, seed, first, len(batch))
        # clamped: a bilinear blend of 255s may come out a rounding error above 255
        yield x.div_(127.5).sub_(1.0).clamp_(-1.0, 1.0).contiguous(), y.long()
