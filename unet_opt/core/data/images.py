"""Reading photos and writing masks for `predict`: the only image file I/O outside the data loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unet_opt.errors import UserError


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8; an unreadable file is a UserError naming it."""
    if path.exists() and not path.is_file():  # a folder, a FIFO or a device would hang or fail late
        raise UserError(f"image {path} is not a regular file; pass a JPEG or PNG file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist; check the path") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise UserError(f"image {path} cannot be read ({type(e).__name__}); pass a JPEG or PNG file") from None


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.array(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))  # writable


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest neighbour: class indices must never be blended."""
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))


def write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)
