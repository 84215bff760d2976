"""Class tables: names and mask colours, the Semantic Drone Dataset's by default."""

from __future__ import annotations

from dataclasses import dataclass

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
    def drone(cls) -> "ClassTable":
        return cls(tuple(n for n, _ in DRONE_CLASSES), tuple(c for _, c in DRONE_CLASSES))

    def index(self, name: str) -> int:
        return self.names.index(name)
