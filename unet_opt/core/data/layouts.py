"""Recognising a data folder: Kaggle, TU Graz or generic layout; image/mask pairs; the class table.

Structural problems (no layout, empty folders, unpaired files, a bad class table) are found here,
from file names and headers alone, before anything is decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unet_opt.core.data.classes import DRONE_CLASSES, ClassTable, default_table, read_class_csv
from unet_opt.core.data.images import UNREADABLE, lossy, opened
from unet_opt.errors import UserError

# what Pillow reads, and HEIC (an iPhone's photos), which it does not: paired, then named with the fix
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".avif",
                  ".heic", ".heif"}


@dataclass(frozen=True)
class FolderLayout:
    name: str
    images: str  # folder of photos, relative to the root
    masks: str  # folder of masks
    tables: tuple[str, ...]  # where a class table may lie
    colour_masks: bool | None  # None: decided from the masks themselves


LAYOUTS = (
    FolderLayout("kaggle", "original_images", "label_images_semantic", ("class_dict_seg.csv", "class_dict.csv"), False),
    FolderLayout("tu-graz", "training_set/images", "training_set/gt/semantic/label_images",
           ("class_dict.csv", "training_set/gt/semantic/class_dict.csv", "class_dict_seg.csv"), True),
    FolderLayout("generic", "images", "masks", ("classes.csv", "class_dict.csv", "class_dict_seg.csv"), None),
)


@dataclass
class Source:
    layout: str
    root: Path
    pairs: list[tuple[str, Path, Path]]  # (name, image, mask), sorted by name
    colour_masks: bool
    classes: ClassTable
    table: Path | None


def _files(folder: Path) -> dict[str, Path]:
    """The image files of a folder by stem, dangling links included (so that they are named as such), but
    macOS's `._NAME` files (a file's metadata on a disk that macOS wrote, not a photo)."""
    try:
        entries = sorted(folder.iterdir())
    except PermissionError:
        raise UserError(f"folder {folder} cannot be read (permission denied); fix its permissions or pass another "
                        f"folder") from None
    files: dict[str, Path] = {}
    for p in entries:
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("._") or not (p.is_file() or p.is_symlink()):
            continue
        if p.stem in files:  # one of them would be left out without a word
            raise UserError(f"{files[p.stem]} and {p.name} have one name, and photos pair with masks by name; "
                            f"remove or rename one")
        files[p.stem] = p
    return files


def lossy_masks_warning(source: Source) -> str | None:
    """JPEG masks: its compression changes the class ids where classes meet, into ids of other classes too,
    which no check can tell from real labels."""
    jpegs = [mask for _, _, mask in source.pairs if lossy(mask)]
    if not jpegs:
        return None
    return (f"{len(jpegs)} of the {len(source.pairs)} masks (e.g. {jpegs[0]}) are JPEG files: JPEG is lossy and "
            f"changes class ids where classes meet, into ids of other classes; save the masks as PNG from their "
            f"source")


def dangling(files: dict[str, Path]) -> list[str]:
    """Links to files that are gone, named with their target: each is one problem, not a missing partner."""
    return [f"{p} is a link to {p.readlink()}, which does not exist; restore it or remove the link"
            for p in files.values() if p.is_symlink() and not p.exists()]


def _levels(path: Path) -> Iterator[list[Path]]:
    """`path`, then the folders below it, level by level (up to 3 down), each level sorted."""
    for depth in range(4):
        yield [path] if depth == 0 else sorted(path.glob("/".join(["*"] * depth)))


def _is_dir(path: Path) -> bool:
    """`path.is_dir()`, and False where it cannot be looked into (a `lost+found` beside the data, `/proc`)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _detect(path: Path) -> list[tuple[Path, FolderLayout]]:
    """The layout at `path`, else the layouts of the first level below it that has any (up to 3 down): one
    folder's first layout each."""
    for level in _levels(path):
        found: dict[Path, FolderLayout] = {}
        for root in filter(_is_dir, level):
            for layout in LAYOUTS:
                if _is_dir(root / layout.images) and _is_dir(root / layout.masks):
                    found.setdefault(root, layout)
        if found:
            return list(found.items())
    return []


def _half_layout(path: Path) -> str | None:
    """What is missing of a layout whose images or masks folder alone is there (a download half unpacked)."""
    for root in (root for level in _levels(path) for root in level):
        for layout in LAYOUTS:
            there = [_is_dir(root / part) for part in (layout.images, layout.masks)]
            if any(there) and not all(there):
                have, missing = (layout.images, layout.masks) if there[0] else (layout.masks, layout.images)
                return (f"{root / have}/ is there but not {root / missing}/, which the {layout.name} layout "
                        f"needs beside it; add it{' (unpack the whole download)' if layout.name != 'generic' else ''} "
                        f"or pass another folder")
    return None


def scan(path: Path, num_classes: int | None) -> tuple[Source | None, list[str]]:
    """(the source, every structural problem found); the source is None when nothing usable was found.
    `num_classes` None (`data check` without --num-classes): the class table's, else the drone data set's."""
    if not path.exists():
        where = "" if path.is_absolute() else f" (from {Path.cwd()})"
        return None, [f"data folder {path} does not exist{where}; pass the folder holding the images and masks"]
    if not path.is_dir():
        return None, [f"data path {path} is not a folder; pass the folder holding the images and masks"]
    detected = _detect(path)
    if not detected and (half := _half_layout(path)):
        return None, [half]
    if not detected:
        return None, [f"no known layout in {path}: expected original_images/ + label_images_semantic/ (Kaggle), "
                      f"training_set/images/ + training_set/gt/semantic/label_images/ (TU Graz) or images/ + masks/"]
    if len(detected) > 1:  # which one was meant is not ours to guess
        shown = " and ".join(f"{root} ({layout.name})" for root, layout in detected[:2])
        more = f" (and {len(detected) - 2} more)" if len(detected) > 2 else ""
        return None, [f"{len(detected)} data sets below {path}: {shown}{more}; pass the one to use, e.g. "
                      f"--data {detected[0][0]}"]
    root, layout = detected[0]
    images, masks = _files(root / layout.images), _files(root / layout.masks)
    problems = []
    if not images:
        problems.append(f"{root / layout.images} holds no image (.jpg, .png, ...); put the photos there")
    if not masks:
        problems.append(f"{root / layout.masks} holds no mask (.png); put the masks there")
    problems += dangling(images) + dangling(masks)  # and not as a partner's missing file: one problem each
    problems += [f"{images[n]} has no mask (no {n}.* in {root / layout.masks})"
                 for n in sorted(images.keys() - masks.keys()) if images[n].exists()]
    problems += [f"{masks[n]} has no image (no {n}.* in {root / layout.images})"
                 for n in sorted(masks.keys() - images.keys()) if masks[n].exists()]
    images = {n: p for n, p in images.items() if p.exists()}
    masks = {n: p for n, p in masks.items() if p.exists()}
    # beside the images, else in a folder above them up to `path` (Kaggle's download keeps class_dict_seg.csv
    # two levels above original_images/)
    above = [root, *(p for p in root.parents if p == path or path in p.parents)]
    table_path = next((folder / t for folder in above for t in layout.tables if (folder / t).is_file()), None)
    classes = None
    try:
        classes = read_class_csv(table_path) if table_path else default_table(num_classes or len(DRONE_CLASSES))
    except UserError as e:
        problems.append(str(e))
    colour = layout.colour_masks
    for mask in masks.values() if colour is None else ():  # the first mask that opens tells (`read_headers`
        try:  # names every one that does not)
            with opened(mask) as im:
                colour = im.mode in ("RGB", "RGBA")
            break
        except UNREADABLE:
            continue
    if colour and table_path is None:
        problems.append(f"{root} has colour masks but no class table; add {layout.tables[0]} with rows name, r, g, b")
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        problems.append(f"data.num_classes = {num_classes} but {table_path or 'the data'} has {len(classes)} classes; "
                        f"set data.num_classes = {len(classes)} (--set data.num_classes={len(classes)}; `data check` takes "
                        f"--num-classes {len(classes)})")
    if classes is None or not images:
        return None, problems
    pairs = [(n, images[n], masks[n]) for n in sorted(images.keys() & masks.keys())]
    return Source(layout.name, root, pairs, bool(colour), classes, table_path), problems


def problems_error(path: Path, problems: list[str]) -> UserError:
    """Many problems, one line: the first few, a count, and where to see them all."""
    shown = "; ".join(problems[:3])
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    if len(problems) == 1:
        return UserError(problems[0])
    return UserError(f"{len(problems)} problems with the data in {path}: {shown}{more} "
                     f"(`unet-opt data check {path}` lists them all)")


def find_source(path: Path, num_classes: int) -> Source:
    source, problems = scan(path, num_classes)
    if problems:
        raise problems_error(path, problems)
    return source
