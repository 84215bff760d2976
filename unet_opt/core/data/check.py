"""`unet-opt data check`: what a data folder holds, its rare classes and everything wrong with it, without
training."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unet_opt.config.schema import DataConfig
from unet_opt.core.data.classes import ClassTable, ignored_class_warning
from unet_opt.core.data.images import decode_pair, large_photos, read_headers
from unet_opt.core.data.layouts import lossy_masks_warning, scan
from unet_opt.core.data.splits import split_sizes
from unet_opt.errors import UserError

CHECK_HEIGHT = 128  # masks are sampled at this height (nearest) to count class pixels quickly
RARE = 0.005  # a class under 0.5% of the pixels scores a Dice near 0 unless the training weighs it up


@dataclass
class Report:
    path: Path
    layout: str = ""
    root: Path | None = None
    pairs: int = 0
    colour_masks: bool = False
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    classes: ClassTable | None = None
    frequencies: np.ndarray | None = None  # share of pixels per class
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what works but deserves a look (huge photos)


def check(path: Path, num_classes: int | None, progress=None, ignore_index: int = 0) -> Report:
    """`num_classes` None: the class table's, else the drone data set's."""
    source, problems = scan(path, num_classes)
    report = Report(path, problems=problems)
    if source is None:
        return report
    report.layout, report.root, report.pairs = source.layout, source.root, len(source.pairs)
    report.colour_masks, report.classes = source.colour_masks, source.classes
    headers = read_headers(source)
    report.sizes, report.problems = Counter(headers.sizes.values()), problems + headers.problems
    report.warnings = [w for w in [large_photos(headers.sizes), lossy_masks_warning(source),
                                   ignored_class_warning(source.classes, source.table, ignore_index)] if w]
    defaults = DataConfig()
    try:  # what `search` refuses with its default fractions is a problem here too
        split_sizes(len(source.pairs), defaults.val_fraction, defaults.test_fraction)
    except UserError as e:
        report.problems.append(str(e))
    if source.colour_masks and source.table is None:  # no colour can be read as a class: that one problem
        report.classes = None  # is the answer, not a class table at 0 % and every mask's colours
        return report
    counts = np.zeros(len(source.classes), np.int64)
    for _, image, mask in source.pairs:
        if not {image, mask} & headers.unreadable:  # each unreadable file is named once, by its header
            # decoded fully, as the cache will: a truncated file has a sound header
            _, decoded, found = decode_pair(image, mask, CHECK_HEIGHT, CHECK_HEIGHT * 3 // 2, source)
            report.problems += found
            if decoded is not None:
                counts += np.bincount(decoded.ravel(), minlength=len(counts))[: len(counts)]
        if progress:
            progress(1)
    if counts.sum():  # no mask decoded: a table at 0 % would say the classes are absent
        report.frequencies = counts / counts.sum()
    return report


def rare_classes_advice(report: Report, ignore_index: int = 0) -> str | None:
    """The classes present in under RARE of the pixels, and what helps them, as one paragraph."""
    if report.classes is None or report.frequencies is None:
        return None
    rare = [f"{name} {100 * f:.2g}%" for i, (name, f) in enumerate(zip(report.classes.names, report.frequencies))
            if 0 < f < RARE and i != ignore_index]
    if not rare:
        return None
    return (f"rare classes (under {100 * RARE:g}% of the pixels): {', '.join(rare)}. Unweighted, they score a "
            f"Dice near 0; train.class_weights = \"inverse\" (the default) weighs them up, train.loss = "
            f"\"ce+dice\" counts each class alike, and a larger data.image_size (384 px or more, on a GPU) "
            f"makes small objects more than a few pixels wide. search/drone.toml searches these.")
