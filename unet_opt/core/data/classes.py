"""Class tables: names and mask colours, the Semantic Drone Dataset's by default."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet_opt.errors import UserError

# (name, mask colour) as in the data set's class_dict_seg.csv
DRONE_CLASSES = [
    ("unlabeled", (0, 0, 0)), ("paved-area", (128, 64, 128)), ("dirt", (130, 76, 0)),
    ("grass", (0, 102, 0)), ("gravel", (112, 103, 87)), ("water", (28, 42, 168)),
    ("rocks", (48, 41, 30)), ("pool", (0, 50, 89)), ("vegetation", (107, 142, 35)),
    ("roof", (70, 70, 70)), ("wall", (102, 102, 156)), ("window", (254, 228, 12)),
    ("door", (254, 148, 12)), ("fence", (190, 153, 153)), ("fence-pole", (153, 153, 153)),
    ("person", (255, 22, 96)), ("dog", (102, 51, 0)), ("car", (9, 143, 150)),
    ("bicycle", (119, 11, 32)), ("tree", (51, 51, 0)), ("bald-tree", (190, 250, 190)),
    ("ar-marker", (112, 150, 146)), ("obstacle", (2, 135, 115)), ("conflicting", (255, 0, 0)),
]


@dataclass(frozen=True)
class ClassTable:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def drone(cls) -> ClassTable:
        return cls(tuple(n for n, _ in DRONE_CLASSES), tuple(c for _, c in DRONE_CLASSES))

    def index(self, name: str) -> int:
        return self.names.index(name)


def read_class_csv(path: Path) -> ClassTable:
    """`name, r, g, b` per row, a header first (Kaggle's class_dict_seg.csv, TU Graz's class_dict.csv)."""
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"class table {path} cannot be read ({type(e).__name__}); fix or remove it") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if not {"name", "r", "g", "b"} <= set(header):
        got = rows[0] if rows else "nothing"
        raise UserError(f"class table {path}: the header must name the columns name, r, g, b (got {got})")
    col = {k: header.index(k) for k in ("name", "r", "g", "b")}
    names, colors = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            name = row[col["name"]].strip()
            rgb = tuple(int(row[col[c]]) for c in "rgb")
            if not name or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except (ValueError, IndexError):
            raise UserError(f"class table {path}, line {line}: expected a name and r, g, b in 0..255, got "
                            f"{','.join(row)!r}; fix the row") from None
        if rgb in colors:
            raise UserError(f"class table {path}, line {line}: colour {rgb} is already class "
                            f"'{names[colors.index(rgb)]}'; each class needs its own colour")
        names.append(name)
        colors.append(rgb)
    if not names:
        raise UserError(f"class table {path} lists no class; add rows of name, r, g, b")
    return ClassTable(tuple(names), tuple(colors))


def default_table(num_classes: int) -> ClassTable:
    """For index masks without a class table: the drone table if it fits, else numbered classes."""
    if num_classes == len(DRONE_CLASSES):
        return ClassTable.drone()
    rng = np.random.default_rng(0)
    colors = [(0, 0, 0)] + [tuple(int(v) for v in rng.integers(40, 256, 3)) for _ in range(num_classes - 1)]
    return ClassTable(tuple(f"class_{i}" for i in range(num_classes)), tuple(colors))


UNSCORED_NAMES = {"unlabeled", "unlabelled", "void", "ignore", "ignored", "unknown", "undefined", "dontcare"}


def ignored_class_warning(classes: ClassTable, table: Path | None, ignore_index: int) -> str | None:
    """A warning when `data.ignore_index` leaves out a class that a folder's own class table names as one to
    learn ('background', not 'unlabeled'), or a class of masks that come without a table (whose class 0 may
    well be background): every pixel of it is then left out of the loss and the scores, and no prediction
    takes it, and nothing else would say so."""
    if not 0 <= ignore_index < len(classes):
        return None
    fix = f"(data.ignore_index = {ignore_index}); if it is a class to learn, pass --set data.ignore_index=-1"
    if table is None:
        return (f"the masks come without a class table, and their class {ignore_index} is left out of training and "
                f"of every score, and never predicted {fix}")
    name = classes.names[ignore_index]
    if "".join(c for c in name.lower() if c.isalpha()) in UNSCORED_NAMES:
        return None
    return (f"class {ignore_index} of {table}, '{name}', is left out of training and of every score, and never "
            f"predicted {fix}")
