"""Image files: their headers, photos and masks decoded at a frame (for the decode-once cache, `data check`
and `evaluate --frame native`), and the images `predict` reads and writes.

Every way a file can fail to open (unreadable, cut short, not an image, a header claiming more pixels than
Pillow opens: a possible decompression bomb) comes back as one problem naming the file and the fix.
Photos above Pillow's warning size are decoded without extra full-size copies, so memory stays bounded
by one decoded photo. Every file is read as viewers show it: upright, its EXIF orientation applied.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from unet_opt.errors import UserError

if TYPE_CHECKING:  # for the annotations: the folder layouts open images through this module
    from unet_opt.core.data.layouts import Source

UNREADABLE = (UnidentifiedImageError, OSError, Image.DecompressionBombError)
LARGE_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow warns above this (89 M pixels) and refuses twice as many
LOOKUP_ROWS = 256  # rows of a colour mask looked up in the class table at once
TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def unreadable(path: Path, error: Exception, verb: str = "read") -> str:
    """The problem of a file that cannot be read (or decoded), as one line with the fix."""
    if isinstance(error, Image.DecompressionBombError):
        return (f"{path} claims more pixels than Pillow opens ({str(error).split(',')[0]}): it may be a "
                f"decompression bomb; replace it, or resize it under {2 * LARGE_PIXELS // 10**6} M pixels")
    if path.suffix.lower() in (".heic", ".heif") and isinstance(error, UnidentifiedImageError):
        return f"{path} is a HEIC photo, which Pillow does not read; convert it to JPEG or PNG"
    return f"{path} cannot be {verb} ({type(error).__name__}); replace or remove it"


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Image.Image]:
    """`Image.open`, without Pillow's decompression-bomb warning: `data check` names large photos itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            yield im


def orientation(im: Image.Image) -> int:
    """The EXIF orientation viewers apply (1: as stored; 6: a phone's portrait photo, stored sideways)."""
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # EXIF that cannot be parsed: viewers show the pixels as stored
        return 1


def upright(im: Image.Image) -> Image.Image:
    """The image as viewers show it, its EXIF orientation applied (no copy where there is none to apply)."""
    return ImageOps.exif_transpose(im) if orientation(im) in range(2, 9) else im


def upright_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) as viewers show it, from the header."""
    width, height = im.size
    return (height, width) if orientation(im) in TURNED else (width, height)


def header_size(path: Path, problems: list[str]) -> tuple[int, int] | None:
    """(width, height) from the file's header, upright; None, with the problem added, when it cannot be read."""
    try:
        with opened(path) as im:
            return upright_size(im)
    except UNREADABLE as e:
        problems.append(unreadable(path, e))
        return None


@dataclass
class Headers:
    """What the files' headers say: each readable image's (width, height), the problems (unreadable files,
    each named once; an image and its mask of different sizes), and the files that cannot be read."""

    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unreadable: set[Path] = field(default_factory=set)


def read_headers(source: Source) -> Headers:
    headers = Headers()
    for _, image, mask in source.pairs:
        size, mask_size = header_size(image, headers.problems), header_size(mask, headers.problems)
        headers.unreadable |= {path for path, got in ((image, size), (mask, mask_size)) if got is None}
        if size and mask_size and size != mask_size:
            headers.problems.append(f"{image} is {size[0]}x{size[1]} but its mask {mask} is {mask_size[0]}x"
                                    f"{mask_size[1]}; they must match")
        if size:
            headers.sizes[image] = size
    return headers


def large_photos(sizes: dict[Path, tuple[int, int]]) -> str | None:
    """A warning naming the photos above Pillow's warning size, with what decoding one costs; None if none."""
    large = sorted(((w * h, path, w, h) for path, (w, h) in sizes.items() if w * h > LARGE_PIXELS), reverse=True)
    if not large:
        return None
    pixels, path, w, h = large[0]
    return (f"{len(large)} photo(s) above {LARGE_PIXELS // 10**6} M pixels, the largest {path} at {w}x{h}: decoding "
            f"one holds about {4 * pixels / 2**30:.1f} GB at once (the decode-once cache does it once); resize "
            f"them if memory is short")


def as_rgb(im: Image.Image) -> Image.Image:
    """The photo in 8-bit RGB. Pillow's `convert` clips 16-bit grey (modes I;16 and I) at 255, which turns a
    16-bit photo white: its values are scaled to 0..255 instead."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I"):
        grey = np.asarray(im).astype(np.float64)
        top = 255 if im.mode == "I" and grey.max(initial=0) <= 255 else 65535  # an 8-bit range stored as I
        return Image.fromarray(np.rint(grey * (255 / top)).clip(0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


LOSSY_FIX = "it is a JPEG, whose compression changes class ids where classes meet: save the masks as PNG"


def lossy(path: Path) -> bool:
    """A JPEG by its name (masks are looked at before they are decoded)."""
    return path.suffix.lower() in (".jpg", ".jpeg", ".jfif", ".jpe")


def decode_image(path: Path, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8, resized bilinear. A JPEG is decoded at 1/2..1/8 scale when that still covers
    the frame (draft mode); other photos are reduced by an integer factor before resampling, without a
    full-size copy for the colour conversion of an RGB photo."""
    with opened(path) as im:
        im.draft("RGB", (height, width) if orientation(im) in TURNED else (width, height))  # as stored
        rgb = as_rgb(upright(im))
        return np.asarray(rgb.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0))


def decode_mask(path: Path, height: int, width: int, source: Source) -> tuple[np.ndarray | None, str | None]:
    """(class indices (H, W) uint8, None) or (None, the problem). Nearest neighbour: classes never blend."""
    num_classes = len(source.classes)
    with opened(path) as stored:
        im = upright(stored)
        if source.colour_masks:
            # resize first (nearest keeps colours exact), then look the pixels up in the table, a band of rows
            # at a time: a mask at a photo's own size (`evaluate --frame native`) is 24 M pixels
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            rgb = np.asarray(rgb.resize((width, height), Image.Resampling.NEAREST))
            keys = np.array([(r << 16) | (g << 8) | b for r, g, b in source.classes.colors])
            order = np.argsort(keys)
            classes = np.empty((height, width), np.uint8)
            for top in range(0, height, LOOKUP_ROWS):
                band = rgb[top:top + LOOKUP_ROWS].astype(np.int64)
                packed = (band[..., 0] << 16) | (band[..., 1] << 8) | band[..., 2]
                pos = np.clip(np.searchsorted(keys[order], packed), 0, len(keys) - 1)
                known = keys[order][pos] == packed
                if not known.all():
                    v = int(packed[~known][0])
                    return None, (f"{path}: colour ({v >> 16}, {(v >> 8) & 255}, {v & 255}) is not in the class "
                                  f"table {source.table}; " + (LOSSY_FIX if lossy(path) else "add it or fix the mask"))
                classes[top:top + LOOKUP_ROWS] = order[pos]
            return classes, None
        if im.mode in ("RGB", "RGBA"):
            return None, f"{path} is a colour mask but this layout expects class indices; convert it"
        if im.mode in ("LA", "PA"):  # the indices and an alpha band: the alpha is no class
            im = im.getchannel(0)
        indices = im if im.mode in ("L", "P") else Image.fromarray(np.asarray(im).astype(np.int64).clip(0, 255)
                                                                    .astype(np.uint8))
        largest = indices.getextrema()[1] if im.mode in ("L", "P") else int(np.asarray(im).max())
        if largest >= num_classes:
            return None, (f"{path}: mask value {int(largest)} is not a class (there are {num_classes}, 0.."
                          f"{num_classes - 1}); " + (LOSSY_FIX if lossy(path) else "fix the mask or data.num_classes"))
        return np.asarray(indices.resize((width, height), Image.Resampling.NEAREST)), None


def decode_pair(image: Path, mask: Path, height: int, width: int, source: Source,
                with_image: bool = True) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """A photo and its mask decoded at (height, width) (the mask alone without `with_image`), and every
    problem with them (none if all decoded)."""
    problems, decoded_image, decoded_mask = [], None, None
    try:
        decoded_image = decode_image(image, height, width) if with_image else None
    except UNREADABLE as e:
        problems.append(unreadable(image, e, "decoded"))
    try:
        decoded_mask, problem = decode_mask(mask, height, width, source)
        problems += [problem] if problem else []
    except UNREADABLE as e:
        problems.append(unreadable(mask, e, "decoded"))
    return decoded_image, decoded_mask, problems


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8; an unreadable file is a UserError naming it."""
    if path.exists() and not path.is_file():  # a folder, a FIFO or a device would hang or fail late
        raise UserError(f"image {path} is not a regular file; pass an image file (.jpg, .png, .tif, .webp, ...)")
    try:
        with opened(path) as im:
            return np.asarray(as_rgb(upright(im)))
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist; check the path") from None
    except UNREADABLE as e:
        raise UserError(f"image {unreadable(path, e).removesuffix('; replace or remove it')}; pass an image file "
                        f"(.jpg, .png, .tif, .webp, ...)") from None


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.array(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))  # writable


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest neighbour: class indices must never be blended."""
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))


def write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)
