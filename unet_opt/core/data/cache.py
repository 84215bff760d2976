"""Decode once: every image and mask is decoded and resized once per frame size into uint8 arrays
under `studies/cache/<key>/`, then memory-mapped; later epochs, trials and runs never decode again.

The key is a hash of the files' content (a digest per file, remembered by path, size and mtime so
unchanged files are not re-read), the frame size and the class table. A cache is filled in a
temporary folder and renamed into place, so two processes filling it at once cannot corrupt it:
the second rename finds the folder there and its own copy is dropped. Its `done` file holds a
checksum of the arrays, checked once per process when the entry is opened: a damaged entry (zeroed,
truncated, flipped bytes) is rebuilt with one warning instead of training on wrong pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from unet_opt.core.data.images import decode_pair
from unet_opt.core.data.layouts import Source, problems_error

log = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of pairs just done
VERIFIED: set[Path] = set()  # entries whose checksum this process has checked
# how files become arrays, in the key: entries decoded another way (before EXIF orientation was applied) are not used
DECODING = "upright"


def _file_digests(paths: list[Path], index_path: Path) -> tuple[dict[str, str], dict]:
    """Content digest per file, reusing the index's entry when path, size and mtime are unchanged."""
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    digests = {}
    for p in paths:
        st = p.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        entry = index.get(str(p.resolve()))
        if not entry or entry[0] != stamp:
            h = hashlib.blake2b(digest_size=16)
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            entry = [stamp, h.hexdigest()]
            index[str(p.resolve())] = entry
        digests[str(p)] = entry[1]
    return digests, index


def cache_key(source: Source, digests: dict[str, str], height: int, width: int, masks_only: bool = False) -> str:
    content = [[n, digests[str(i)], digests[str(m)]] for n, i, m in source.pairs]
    spec = [DECODING, height, width, source.colour_masks, list(source.classes.names), list(source.classes.colors),
            content]
    spec += ["masks only"] if masks_only else []  # an entry of masks alone: the evaluation frame's
    return hashlib.blake2b(json.dumps(spec).encode(), digest_size=12).hexdigest()


CLASS_TABLE = "(the class table)"  # not an image name: a name is a file's stem


def pair_digests(source: Source, cache_root: Path) -> dict[str, str]:
    """What a study's trials were trained and scored on, by image name: a digest of the image's and its
    mask's content (unchanged files are not re-read), and of the class table under `CLASS_TABLE`."""
    paths = [p for _, i, m in source.pairs for p in (i, m)]
    digests, _ = _file_digests(paths, cache_root / "digests.json")
    pairs = {n: hashlib.blake2b(f"{digests[str(i)]} {digests[str(m)]}".encode(), digest_size=8).hexdigest()
             for n, i, m in source.pairs}
    table = json.dumps([source.colour_masks, list(source.classes.names), list(source.classes.colors)])
    return {**pairs, CLASS_TABLE: hashlib.blake2b(table.encode(), digest_size=8).hexdigest()}


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def prepare(source: Source, height: int, width: int, cache_root: Path, progress: Progress | None = None,
            masks_only: bool = False) -> tuple[np.ndarray | None, np.ndarray, Path]:
    """(images (N, H, W, 3), masks (N, H, W)) memory-mapped from the cache, filling it first if needed;
    `masks_only`: no images (None), and none decoded (the evaluation frame only scores)."""
    paths = [p for _, i, m in source.pairs for p in (i, m)]
    digests, index = _file_digests(paths, cache_root / "digests.json")
    folder = cache_root / cache_key(source, digests, height, width, masks_only)
    if (folder / "done").is_file() and folder not in VERIFIED and not entry_is_sound(folder):
        log.warning("the decoded-image cache %s is damaged; decoding the images again", folder)
        shutil.rmtree(folder, ignore_errors=True)
    if not (folder / "done").is_file():
        _fill(source, height, width, folder, progress, masks_only)
        _write_json(cache_root / "digests.json", index)
    elif progress:
        progress(len(source.pairs))
    VERIFIED.add(folder)
    images = None if masks_only else np.load(folder / "images.npy", mmap_mode="c")
    return images, np.load(folder / "masks.npy", mmap_mode="c"), folder


def checksums(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {name: hashlib.blake2b(np.ascontiguousarray(a).data, digest_size=16).hexdigest()
            for name, a in arrays.items()}


def entry_is_sound(folder: Path) -> bool:
    """The arrays its `done` file names load and match the checksums written when the entry was made."""
    try:
        expected = json.loads((folder / "done").read_text())
        if not isinstance(expected, dict) or "masks" not in expected or not set(expected) <= {"images", "masks"}:
            return False
        return checksums({name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in expected}) == expected
    except (OSError, ValueError, EOFError):  # missing, empty, truncated or unreadable
        return False


def _fill(source: Source, height: int, width: int, folder: Path, progress: Progress | None,
          masks_only: bool) -> None:
    created = [d for d in (folder.parent.parent, folder.parent) if not d.exists()]
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    n = len(source.pairs)
    try:
        tmp.mkdir(parents=True)
        arrays = {"masks": np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8,
                                                     shape=(n, height, width))}
        if not masks_only:
            arrays["images"] = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                                         shape=(n, height, width, 3))
        problems = []
        for i, (_, image, mask) in enumerate(source.pairs):
            decoded_image, decoded_mask, found = decode_pair(image, mask, height, width, source, not masks_only)
            problems += found
            if not found:
                arrays["masks"][i] = decoded_mask
                if not masks_only:
                    arrays["images"][i] = decoded_image
            if progress:
                progress(1)
        if problems:
            raise problems_error(source.root, problems)
        for array in arrays.values():
            array.flush()
        (tmp / "done").write_text(json.dumps(checksums(arrays)))
        del arrays
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same cache first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):  # leave no empty studies/ behind for bad data
            if d.exists() and not any(d.iterdir()):
                d.rmdir()
        raise
