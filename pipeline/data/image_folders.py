"""Readers of image-file layouts (an ImageFolder tree, Kaggle's CSV of labels, Tiny-ImageNet): `Files`, paths not
decoded yet, so `data.classes`, `limit` and `test_limit` choose rows before any decoding."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from pipeline.data.downloads import locate
from pipeline.data.images import IMAGE_EXTS
from pipeline.data.raw import Files, RawData, natural_key
from pipeline.errors import PipelineError, warn


def image_files(folder: Path) -> tuple[list[Path], int]:
    """Image files under folder (recursive, natural order) and the count of other files ignored."""
    files, ignored = [], 0
    for p in folder.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            if p.suffix.lower() in IMAGE_EXTS:
                files.append(p)
            else:
                ignored += 1
    return sorted(files, key=lambda p: natural_key(str(p.relative_to(folder)))), ignored


def need_dir(path: Path, what: str) -> Path:
    """The folder, or an error naming what it should hold."""
    if not path.is_dir():
        raise PipelineError(f"{path}: {what} folder not found")
    return path


def class_tree(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str], int]:
    """An ImageFolder tree root/<class>/...; with `classes` given, its folders must be among them."""
    dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    if not dirs:
        raise PipelineError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        extra = sorted(set(names) - set(classes))
        if extra:
            raise PipelineError(f"{root}: class folders not in the training classes: {', '.join(extra)}")
    paths, labels, ignored = [], [], 0
    for d in dirs:
        files, ign = image_files(d)
        ignored += ign
        if not files:
            raise PipelineError(f"{d}: class `{d.name}` has no images")
        paths += files
        labels += [classes.index(d.name)] * len(files)
    return paths, labels, classes, ignored


def read_folder(
    path: Path | None, size: int, on_bad: str, train_dir="train", valid_dir="valid", test_dir="test"
) -> RawData:
    """ImageFolder: train/<class>/..., optional valid/<class>/..., optional test/ (flat = unlabeled)."""
    if path is None:
        raise PipelineError("params.yaml: `data.path` must name the folder for data.name: folder")
    root = need_dir(path, "data set")
    paths, labels, classes, ignored = class_tree(need_dir(root / train_dir, "training"))
    raw = RawData(
        classes, Files(paths, size, on_bad), np.asarray(labels, np.int64), source={"name": "folder", "path": str(root)}
    )
    if (root / valid_dir).is_dir():
        vp, vl, _, ign = class_tree(root / valid_dir, classes)
        raw.valid_x, raw.valid_y = Files(vp, size, on_bad), np.asarray(vl, np.int64)
        ignored += ign
    test = root / test_dir
    if test.is_dir():
        subdirs = [d for d in test.iterdir() if d.is_dir() and not d.name.startswith(".")]
        flat = [p for p in test.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
        if subdirs and not flat:
            tp, tl, _, ign = class_tree(test, classes)
            raw.test_x, raw.test_y = Files(tp, size, on_bad, keep_bad=True), np.asarray(tl, np.int64)
        else:
            tp, ign = image_files(test)
            if not tp:
                raise PipelineError(f"{test}: test folder has no images")
            raw.test_x = Files(tp, size, on_bad, keep_bad=True)
        raw.test_ids = [str(p.relative_to(test)) for p in tp]
        ignored += ign
    raw.ignored_files = ignored
    return raw


def read_kaggle_csv(
    path: Path | None,
    size: int,
    on_bad: str,
    train_dir="train",
    test_dir="test",
    labels_csv="trainLabels.csv",
    sample_submission="sampleSubmission.csv",
) -> RawData:
    """Kaggle layout: train images + labels CSV (id,label), test images, optional sampleSubmission.csv."""
    if path is None:
        raise PipelineError("params.yaml: `data.path` must name the folder for data.name: kaggle-csv")
    root = need_dir(path, "data set")
    train = need_dir(root / train_dir, "training images")
    csv_path = root / labels_csv
    rows = unique_labels(read_csv(csv_path), csv_path)
    if not rows:
        raise PipelineError(f"{csv_path}: no rows")
    by_id = index_by_id(train)
    missing = [r[0] for r in rows if r[0] not in by_id]
    if missing:
        raise PipelineError(
            f"{csv_path}: {len(missing)} ids have no image in {train}: {', '.join(missing[:10])}"
            + (" …" if len(missing) > 10 else "")
        )
    classes = sorted({r[1] for r in rows}, key=natural_key)
    x = Files([by_id[r[0]] for r in rows], size, on_bad)
    y = np.asarray([classes.index(r[1]) for r in rows], np.int64)
    raw = RawData(classes, x, y, source={"name": "kaggle-csv", "path": str(root), "labels_csv": str(csv_path)})
    test = need_dir(root / test_dir, "test images")
    test_files, _ = image_files(test)
    test_by_id = index_by_id(test)
    if not test_files:
        raise PipelineError(f"{test}: test folder has no images")
    sub = root / sample_submission if sample_submission else None
    if sub is not None and sub.is_file():
        sub_rows = read_csv(sub, want_header=True)
        raw.submission_header, ids = sub_rows[0], [r[0] for r in sub_rows[1:]]
        absent = [i for i in ids if i not in test_by_id]
        if absent:
            raise PipelineError(f"{sub}: {len(absent)} ids have no image in {test}: {', '.join(absent[:10])}")
        raw.source["sample_submission"] = str(sub)
    else:
        ids = [p.stem for p in test_files]
    raw.test_x, raw.test_ids = Files([test_by_id[i] for i in ids], size, on_bad, keep_bad=True), ids
    return raw


def read_csv(path: Path, want_header: bool = False) -> list[list[str]]:
    """Rows of a two-or-more-column CSV with a header, cells stripped of surrounding whitespace; a UTF-8 byte
    order mark (Excel's "CSV UTF-8") is dropped. The header is dropped unless want_header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [[c.strip() for c in r] for r in csv.reader(f) if any(c.strip() for c in r)]
    except OSError as e:
        raise PipelineError(f"{path}: cannot read CSV ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not UTF-8 text ({e}); save it as UTF-8 CSV") from e
    if not rows or len(rows[0]) < 2:
        raise PipelineError(f"{path}: expected a header with at least two columns (id,label)")
    bad = next((i for i, r in enumerate(rows) if len(r) < 2), None)
    if bad is not None:
        raise PipelineError(f"{path}: line {bad + 1} has fewer than two columns")
    return rows if want_header else rows[1:]


def unique_labels(rows: list[list[str]], path: Path) -> list[list[str]]:
    """(id, label) rows with each id once: a repeated id with the same label is dropped with a warning, one with
    another label is an error naming both lines."""
    first: dict[str, int] = {}
    out = []
    for n, (i, label, *_) in enumerate(rows, start=2):  # line 1 is the header
        if not i or not label:
            raise PipelineError(f"{path}: line {n}: empty {'id' if not i else 'label'}")
        if i in first:
            prev = rows[first[i] - 2][1]
            if prev != label:
                raise PipelineError(
                    f"{path}: id {i!r} has label {prev!r} on line {first[i]} and {label!r} on line {n}; "
                    "keep one of them"
                )
            warn(f"{path}: id {i!r} repeated on line {n} (same label); counted once")
            continue
        first[i] = n
        out.append([i, label])
    return out


def index_by_id(folder: Path) -> dict[str, Path]:
    """Image files of a folder by file name and by stem (Kaggle ids usually omit the extension)."""
    files, _ = image_files(folder)
    out = {p.stem: p for p in files}
    out.update({p.name: p for p in files})
    return out


# --------------------------------------------------------------------------------------------- tiny-imagenet
def read_tiny_imagenet(path: Path | None, size: int, on_bad: str, download: bool) -> RawData:
    """Official tiny-imagenet-200: train/<wnid>/images, val/images + val_annotations.txt, test/images."""
    dest = path or Path("data/raw/tiny-imagenet")
    root = next((p for p in (dest / "tiny-imagenet-200", dest) if (p / "wnids.txt").is_file()), None)
    if root is None:
        zip_dir = locate("tiny-imagenet", ["tiny-imagenet-200.zip"], [dest], download, dest)
        try:
            with zipfile.ZipFile(zip_dir / "tiny-imagenet-200.zip") as z:
                z.extractall(dest)
        except zipfile.BadZipFile as e:
            raise PipelineError(f"{zip_dir / 'tiny-imagenet-200.zip'}: not a zip file ({e})") from e
        root = dest / "tiny-imagenet-200"
    classes = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    paths, labels = [], []
    for i, wnid in enumerate(classes):
        files, _ = image_files(need_dir(root / "train" / wnid / "images", f"class {wnid}'s image"))
        if not files:
            raise PipelineError(f"{root / 'train' / wnid / 'images'}: class `{wnid}` has no images")
        paths += files
        labels += [i] * len(files)
    raw = RawData(
        classes,
        Files(paths, size, on_bad),
        np.asarray(labels, np.int64),
        class_names=[words.get(w, w) for w in classes],
        source={"name": "tiny-imagenet", "path": str(root)},
    )
    ann = root / "val" / "val_annotations.txt"
    if ann.is_file():
        vp, vl = [], []
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in classes:
                raise PipelineError(f"{ann}: line {n}: expected `file<TAB>wnid` with a known wnid, got {line!r}")
            vp.append(root / "val" / "images" / parts[0])
            vl.append(classes.index(parts[1]))
        missing = [str(p) for p in vp if not p.is_file()]
        if missing:
            raise PipelineError(f"{ann}: {len(missing)} listed files do not exist: {', '.join(missing[:5])}")
        raw.valid_x, raw.valid_y = Files(vp, size, on_bad), np.asarray(vl, np.int64)
    test = root / "test" / "images"
    if test.is_dir():
        tp, _ = image_files(test)
        if not tp:
            raise PipelineError(f"{test}: test folder has no images")
        raw.test_x = Files(tp, size, on_bad, keep_bad=True)
        raw.test_ids = [p.name for p in tp]
    return raw
