"""Batched augmentation: one random resized crop and two flips per image, drawn for a whole global
batch at once and applied as one operation on the data's device.

Pure torch on purpose: torchvision's transforms import torch._dynamo, seconds of start-up in every
process, and they work one image at a time (a Python loop and a reseed per image).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE = (0.5, 1.0)  # the crop's area, as a fraction of the frame's
STRETCH = (0.8, 1.25)  # the crop's aspect ratio, relative to the frame's
TRIES = 10  # as torchvision's RandomResizedCrop, before it falls back to a central crop
DRAWS = 2 * TRIES + 4  # uniforms per image: areas, log-ratios, top, left, horizontal flip, vertical flip


def draw(seed: int, count: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes (count, 4) long as (top, left, h, w), and flips (count, 2) bool as (horizontal, vertical).

    Distributed as torchvision's RandomResizedCrop(scale=SCALE, ratio=aspect * STRETCH) then flips with
    p = 0.5, all on the CPU from one generator seeded by `seed`. Each image takes one row of DRAWS
    uniforms, drawn in order (CPU uniforms are serial), so image k's parameters depend on (seed, k) alone:
    every rank draws the whole global batch and keeps its slice, and the slices agree.
    """
    u = torch.rand(count, DRAWS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    aspect = width / height
    low, high = math.log(aspect * STRETCH[0]), math.log(aspect * STRETCH[1])
    # all TRIES candidates at once; torchvision keeps the first that fits in the frame
    area = height * width * (SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, :TRIES])
    ratio = torch.exp(low + (high - low) * u[:, TRIES:2 * TRIES])
    w, h = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()  # round half to even, as round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)  # the first fitting try (argmax returns the first maximum)
    found = fits.any(1)
    # no try fits: torchvision's central-crop fallback, which is the whole frame since the frame's own
    # aspect lies within the ratio range
    h = torch.where(found, h.gather(1, first)[:, 0], float(height))
    w = torch.where(found, w.gather(1, first)[:, 0], float(width))
    # top and left uniform over the positions that keep the box inside the frame (randint(0, H - h + 1))
    top = torch.minimum((u[:, 2 * TRIES] * (height - h + 1)).floor(), height - h)
    left = torch.minimum((u[:, 2 * TRIES + 1] * (width - w + 1)).floor(), width - w)
    boxes = torch.stack([top, left, h, w], 1).long()
    return boxes, u[:, -2:] < 0.5


def pick(pixels: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """pixels (N, ..., H, W) taken at source rows (N, H) and columns (N, W): one gather, values copied as they are."""
    height, width = pixels.shape[-2:]
    source = (row[:, :, None] * width + col[:, None, :]).flatten(1)
    flat = pixels.flatten(-2)  # (N, ..., H * W)
    source = source.view(len(source), *[1] * (flat.dim() - 2), -1).expand(*flat.shape[:-1], -1)
    return flat.gather(-1, source).view(pixels.shape)


def flip(images: torch.Tensor, masks: torch.Tensor, flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip the selected images and masks by a gather: pixel-exact, and no host sync on a GPU."""
    height, width = masks.shape[-2:]
    flips = flips.to(images.device, non_blocking=True)
    rows, cols = torch.arange(height, device=images.device), torch.arange(width, device=images.device)
    row = torch.where(flips[:, 1:], height - 1 - rows, rows)
    col = torch.where(flips[:, :1], width - 1 - cols, cols)
    return pick(images, row, col), pick(masks, row, col)


def resized_crop(images: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                 flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's box resized to the whole frame (bilinear, as torchvision resizes images up), then
    flipped; each mask likewise with its nearest source pixel, so class ids (and IGNORE) are never blended.

    `images` (N, C, H, W) float, `masks` (N, H, W) integer class ids.
    """
    n, channels, height, width = images.shape
    top, left, h, w = boxes.double().unbind(1)
    sign = 1.0 - 2.0 * flips.double()  # a flip mirrors the output: a negative scale
    # affine_grid maps the output's [-1, 1] to the box's edges in the input's [-1, 1] (align_corners=False)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sign[:, 0] * w / width, (2 * left + w) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = sign[:, 1] * h / height, (2 * top + h) / height - 1
    theta = theta.to(images.device, torch.float32, non_blocking=True)
    grid = F.affine_grid(theta, [n, channels, height, width], align_corners=False)
    # at the frame's edges border padding clamps, as resize does; at a box's edge the half pixel beyond
    # blends in the true neighbour where resizing the cut-out box would repeat its edge
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # the nearest source pixel of every output pixel, from the same grid: a gather, no interpolation.
    # No rotation, so x depends on the column only and y on the row only: round one row and one column
    col = ((grid[:, 0, :, 0] + 1) * width - 1).mul_(0.5).round_().clamp_(0, width - 1).long()
    row = ((grid[:, :, 0, 1] + 1) * height - 1).mul_(0.5).round_().clamp_(0, height - 1).long()
    return images, pick(masks, row, col)


def augment(images: torch.Tensor, masks: torch.Tensor, kind: str, seed: int, first: int,
            total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`kind` "crop" (random resized crop, then flips), "flip" or "none" applied to one rank's slice of a
    global batch of `total` images, the slice starting at place `first`: parameters come from `seed` and
    each image's place in the global batch, so whichever rank holds an image gives it the same crop."""
    if kind == "none" or not len(images):  # nothing to do, or a rank with no image of a small last batch
        return images, masks
    boxes, flips = draw(seed, total, *images.shape[-2:])
    boxes, flips = boxes[first:first + len(images)], flips[first:first + len(images)]
    if kind == "flip":
        return flip(images, masks, flips)
    if kind == "crop":
        return resized_crop(images, masks, boxes, flips)
    raise ValueError(f"unknown augmentation {kind!r}")
