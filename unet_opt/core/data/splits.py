"""Train / val / test splits by image name, fixed by a seed and stored with the study."""

from __future__ import annotations

import numpy as np

from unet_opt.errors import UserError


def take_out(names: list[str], count: int, seed: int) -> tuple[list[str], list[str]]:
    """(the rest, `count` names drawn at random): scikit-learn's `train_test_split(names, test_size=count,
    random_state=seed)`, draw for draw (one seeded permutation, the first `count` out), without importing
    scikit-learn (a second) before the first trial."""
    order = np.random.RandomState(seed).permutation(len(names))
    return [names[i] for i in order[count:]], [names[i] for i in order[:count]]


def split_sizes(count: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) image counts of a split of `count` images; too few for two training images is an error."""
    n_test = max(1, round(count * test_fraction))
    n_val = max(1, round(count * val_fraction))
    if count - n_test - n_val < 2:
        fix = "add images or lower the fractions" if count >= 4 else "add images (train needs 2, val and test 1 each)"
        raise UserError(f"{count} images are too few to split into train/val/test "
                        f"({val_fraction:g} val, {test_fraction:g} test); {fix}")
    return n_val, n_test


def make_split(names: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Test first (it must never depend on the val fraction), then val out of the rest."""
    names = sorted(names)
    n_val, n_test = split_sizes(len(names), val_fraction, test_fraction)
    rest, test = take_out(names, n_test, seed)
    train, val = take_out(rest, n_val, seed)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def split_indices(split: dict[str, list[str]], names: list[str],
                  way_out: str = "restore them or start a new study with --study NAME") -> dict[str, list[int]]:
    """Map a stored split onto the loaded images; images added later are simply not in it."""
    position = {n: i for i, n in enumerate(names)}
    missing = [n for part in split.values() for n in part if n not in position]
    if missing:
        raise UserError(f"{len(missing)} image(s) of the stored split are not in the data "
                        f"(first: {missing[0]}); {way_out}")
    return {part: [position[n] for n in split[part]] for part in ("train", "val", "test")}
