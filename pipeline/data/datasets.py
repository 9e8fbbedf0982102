"""Readers: one function per `data.name`, each returning a RawData (images, labels, classes).

Readers find files (data.path, then known install places, then a download where allowed). Array formats
(IDX, CIFAR, digits) come back as uint8 N×H×W×C arrays; image-file formats (folder, kaggle-csv, tiny-imagenet)
come back as `Files`, a list of paths not decoded yet, so `data.classes`, `limit` and `test_limit` choose rows
before any decoding. pipeline.data.images.decode_files decodes a Files in parallel, in a fixed order, and reports bad
images by path. Readers never write into data/prepared; pipeline/prepare.py does that.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.data.array_formats import read_cifar, read_digits, read_mnist_like
from pipeline.data.image_folders import read_folder, read_kaggle_csv, read_tiny_imagenet
from pipeline.data.raw import DEFAULT_FILE_SIZE, RawData, take
from pipeline.errors import PipelineError
from pipeline.params import DataParams


def subset_classes(raw: RawData, wanted: int | list | None) -> RawData:
    """`data.classes`: keep a count of classes (the first N in the data set's order) or the classes a list names
    (codes or display names); labels are renumbered 0..k-1 in the data set's order. Training and validation rows
    of other classes are dropped, and test rows too where the test split is labelled; an unlabelled test split is
    kept whole, so its submission still has every id."""
    if wanted is None:
        return raw
    names = raw.class_names or raw.classes
    where = raw.source.get("path") or raw.source.get("name") or "the data set"
    if isinstance(wanted, int):
        if not 2 <= wanted <= len(raw.classes):
            raise PipelineError(
                f"params.yaml: `data.classes` = {wanted}: {where} has {len(raw.classes)} classes; keep 2 to "
                f"{len(raw.classes)}"
            )
        keep = list(range(wanted))
    else:
        keep = []
        for w in map(str, wanted):
            if w not in raw.classes and w not in names:
                raise PipelineError(
                    f"params.yaml: `data.classes` names {w!r}, not a class of {where}; its classes: "
                    + ", ".join(names[:30])
                    + (" …" if len(names) > 30 else "")
                )
            keep.append(raw.classes.index(w) if w in raw.classes else names.index(w))
        keep = sorted(set(keep))
        if len(keep) < 2:
            raise PipelineError(f"params.yaml: `data.classes` = {wanted!r}: name at least 2 different classes")
    remap = np.full(len(raw.classes), -1, np.int64)
    remap[keep] = np.arange(len(keep))

    def rows(x, y):
        if x is None or y is None:
            return x, y, None
        m = np.flatnonzero(remap[y] >= 0)
        return take(x, m), remap[y[m]], m

    train_x, train_y, _ = rows(raw.train_x, raw.train_y)
    valid_x, valid_y, _ = rows(raw.valid_x, raw.valid_y)
    test_x, test_y, kept = rows(raw.test_x, raw.test_y)
    test_ids = raw.test_ids if kept is None or raw.test_ids is None else [raw.test_ids[i] for i in kept]
    return replace(
        raw,
        classes=[raw.classes[i] for i in keep],
        class_names=[raw.class_names[i] for i in keep] if raw.class_names else None,
        train_x=train_x,
        train_y=train_y,
        valid_x=valid_x,
        valid_y=valid_y,
        test_x=test_x,
        test_y=test_y,
        test_ids=test_ids,
    )


def read(data: DataParams, seed: int) -> RawData:
    """The data set data.name names, with `data.classes` applied; `data` is the checked params section."""
    return subset_classes(read_all(data, seed), data.classes)


def read_all(data: DataParams, seed: int) -> RawData:
    """Dispatch on data.name."""
    name = data.name
    path = Path(data.path) if data.path else None
    size = data.size or DEFAULT_FILE_SIZE
    if name in ("fashion-mnist", "mnist"):
        return read_mnist_like(name, path, data.download)
    if name in ("cifar10", "cifar100"):
        return read_cifar(name, path, data.download, data.label_mode)
    if name == "tiny-imagenet":
        return read_tiny_imagenet(path, size, data.on_bad_image, data.download)
    if name == "folder":
        return read_folder(path, size, data.on_bad_image, data.train_dir, data.valid_dir, data.test_dir)
    if name == "kaggle-csv":
        return read_kaggle_csv(
            path,
            size,
            data.on_bad_image,
            data.train_dir,
            data.test_dir,
            data.labels_csv,
            data.sample_submission,
        )
    if name == "digits":
        return read_digits(seed, path)
    raise PipelineError(f"params.yaml: `data.name` = {name!r} has no reader")
