"""What a reader returns: RawData (images, labels, classes) and Files, image files not decoded yet."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

DEFAULT_FILE_SIZE = 64  # side for data sets read from image files when data.size is null


@dataclass(frozen=True)
class Files:
    """A split of image files, not decoded yet: decoded to uint8 size×size RGB by `decode_files`. A file that
    cannot be read is skipped (`on_bad: skip`, a training or validation image), kept as a black image
    (`keep_bad`: a test image, so the submission keeps its id) or an error (`on_bad: fail`)."""

    paths: list[Path]
    size: int
    on_bad: str = "skip"
    keep_bad: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, idx) -> Files:
        """The files at rows idx, still not decoded."""
        return replace(self, paths=[self.paths[i] for i in idx])


Images = np.ndarray | Files


def take(x: Images, idx) -> Images:
    """Rows idx of an array or of a Files (still not decoded)."""
    return x.take(idx) if isinstance(x, Files) else x[idx]


@dataclass
class RawData:
    """What a reader returns; valid_* is the data set's own validation split, if it has one."""

    classes: list[str]
    train_x: Images
    train_y: np.ndarray
    test_x: Images | None = None
    test_y: np.ndarray | None = None
    test_ids: list[str] | None = None
    valid_x: Images | None = None
    valid_y: np.ndarray | None = None
    class_names: list[str] | None = None  # display names where `classes` are codes (tiny-imagenet wnids)
    source: dict = field(default_factory=dict)
    bad_images: list[str] = field(default_factory=list)  # skipped (train/valid) or blanked (test), by path
    ignored_files: int = 0  # files whose extension no image reader knows
    submission_header: list[str] | None = None


def natural_key(s: str):
    """Sort '2.png' before '10.png'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def bytes_needed(xs: dict, size: int | None, channels) -> int:
    """The most disk the prepared arrays take while being written: every split's uint8 images (file data sets
    decoded as RGB, before any turn to one channel), the largest split once more (a rewrite: gray, or without its
    unreadable files), the int64 labels, and a MiB for headers and meta."""
    total = largest = rows = 0
    files = False
    for x in xs.values():
        if x is None:
            continue
        if isinstance(x, Files):
            files, side, c = True, x.size, 1 if channels == 1 else 3
        else:
            side, c = (
                size or x.shape[1],
                1 if channels == 1 else 3 if channels == 3 else (x.shape[3] if x.ndim == 4 else 1),
            )
        b = len(x) * side * side * c
        total, largest, rows = total + b, max(largest, b), rows + len(x)
    return total + (largest if files else 0) + 8 * rows + 2**20
