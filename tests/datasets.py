"""Tiny data sets written in the three layouts the data loader recognises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unet_opt.core.data.classes import ClassTable

TABLE = ClassTable(("unlabeled", "road", "grass", "roof", "car"),
                   ((0, 0, 0), (128, 64, 128), (0, 102, 0), (70, 70, 70), (9, 143, 150)))


def block_mask(rng: np.random.Generator, height: int, width: int, classes: int, block: int = 6) -> np.ndarray:
    """Random classes in blocks, so that images have structure and resizing has something to keep."""
    coarse = rng.integers(0, classes, (-(-height // block), -(-width // block)))
    return coarse.repeat(block, 0).repeat(block, 1)[:height, :width].astype(np.uint8)


def write_table(path: Path, table: ClassTable = TABLE) -> None:
    rows = ["name, r, g, b"] + [f"{n}, {r}, {g}, {b}" for n, (r, g, b) in zip(table.names, table.colors)]
    path.write_text("\n".join(rows) + "\n")


def make_dataset(root: Path, layout: str, count: int = 6, height: int = 48, width: int = 72, seed: int = 0,
                 colour: bool | None = None) -> dict[str, np.ndarray]:
    """Write `count` photo/mask pairs; returns the class-index masks by name (the truth to compare with)."""
    images, masks, table = {"kaggle": ("original_images", "label_images_semantic", "class_dict_seg.csv"),
                            "tu-graz": ("training_set/images", "training_set/gt/semantic/label_images",
                                        "class_dict.csv"),
                            "generic": ("images", "masks", "classes.csv")}[layout]
    colour = (layout == "tu-graz") if colour is None else colour
    (root / images).mkdir(parents=True, exist_ok=True)
    (root / masks).mkdir(parents=True, exist_ok=True)
    write_table(root / table)
    rng = np.random.default_rng(seed)
    palette = np.array(TABLE.colors, np.uint8)
    truth = {}
    for i in range(count):
        name = f"{i:03d}"
        mask = block_mask(rng, height, width, len(TABLE))
        photo = np.clip(palette[mask].astype(int) + rng.integers(-20, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(root / images / f"{name}.jpg", quality=90)
        Image.fromarray(palette[mask] if colour else mask).save(root / masks / f"{name}.png")
        truth[name] = mask
    return truth


def nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize with pixel-centre sampling, computed independently of PIL."""
    ys = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(int), mask.shape[0] - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(int), mask.shape[1] - 1)
    return mask[ys][:, xs]
