"""Readers: one function per `data.name`, each returning a RawData (images, labels, classes).

Readers find files (data.path, then known install places, then a download where allowed). Array formats
(IDX, CIFAR, digits) come back as uint8 N×H×W×C arrays; image-file formats (folder, kaggle-csv, tiny-imagenet)
come back as `Files`, a list of paths not decoded yet, so `data.classes`, `limit` and `test_limit` choose rows
before any decoding. `decode_files` decodes a Files in parallel, in a fixed order, and reports bad images by
path. Readers never write into data/prepared; pipeline/prepare.py does that.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import multiprocessing
import os
import pickle
import re
import struct
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, warn
from pipeline.data.images import IMAGE_EXTS, decode, is_gray, luma, open_image

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IDX_FILES = {  # split -> (images, labels), without the optional .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
URLS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
    "tiny-imagenet": "http://cs231n.stanford.edu/",
}
DEBIAN_PLACES = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
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


# --------------------------------------------------------------------------------------------- locating
def locate(name: str, files: list[str], places: list[Path], download: bool, dest: Path) -> Path:
    """The first place holding every file in `files` (each may also be gzipped); else download into dest."""
    for place in places:
        if all(find_variant(place / f) for f in files):
            return place
    if download:
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for f in files:
                if not find_variant(dest / f):
                    fetch(URLS[name] + f, dest / f)
            return dest
        except (urllib.error.URLError, OSError) as e:
            reason = f"download failed ({getattr(e, 'reason', e)})"
    else:
        reason = "downloads are off (data.download: false)"
    looked = "\n".join(f"  - {p}: missing {', '.join(f for f in files if not find_variant(p / f))}" for p in places)
    how = f"Put the files in {places[0]}"
    deb = DEBIAN_PLACES.get(name)
    if deb is not None and deb not in places and all(find_variant(deb / f) for f in files):
        how += f" (`make data` copies them from Debian's {deb}), or set `data.path: {deb}`"
    elif deb is not None:
        how += f", install Debian's package dataset-{name} (apt-get install dataset-{name}; `make data` does it)"
    if name in URLS:
        how += f", or download them from {URLS[name]}"
    raise PipelineError(f"{name}: data set not found and {reason}. Looked in:\n{looked}\n{how}.")


def find_variant(path: Path) -> Path | None:
    """path itself, or path + '.gz'."""
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            return p
    return None


def fetch(url: str, dest: Path) -> None:
    """Download url to dest whole: into a .part file, renamed when complete."""
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
    part.replace(dest)


# --------------------------------------------------------------------------------------------- IDX (MNIST)
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array; a truncated or foreign file names itself."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        raise PipelineError(f"{path}: cannot read IDX file ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise PipelineError(f"{path}: not an unsigned-byte IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise PipelineError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:head])
    expected = int(np.prod(dims))
    if len(data) - head != expected:
        raise PipelineError(
            f"{path}: truncated or padded IDX file: header says {'×'.join(map(str, dims))} = {expected} bytes, "
            f"file has {len(data) - head}"
        )
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims)


def read_mnist_like(name: str, path: Path | None, download: bool) -> RawData:
    """fashion-mnist and mnist: the four official IDX files, in `path` (the prepare stage's dependency: nothing
    else is read) or, from Python with path None, in data/raw/<name> or Debian's folder."""
    dest = path or Path("data/raw") / name
    places = [dest] + ([DEBIAN_PLACES[name]] if name in DEBIAN_PLACES and path is None else [])
    files = [f for pair in IDX_FILES.values() for f in pair]
    root = locate(name, files, places, download, dest)
    arrays = {}
    for split, (img, lab) in IDX_FILES.items():
        x, y = read_idx(find_variant(root / img)), read_idx(find_variant(root / lab))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise PipelineError(f"{root / img}: {len(x)} images of shape {x.shape[1:]} but {len(y)} labels")
        if y.max() >= 10:
            raise PipelineError(f"{root / lab}: label {int(y.max())} is outside 0..9")
        arrays[split] = (x[..., None].copy(), y.astype(np.int64))
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return RawData(
        classes,
        *arrays["train"],
        *arrays["test"],
        test_ids=[str(i) for i in range(len(arrays["test"][1]))],
        source={"name": name, "path": str(root)},
    )


# --------------------------------------------------------------------------------------------- CIFAR
class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles: allow only the globals numpy arrays need, never arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def unpickle(blob: bytes, where: str) -> dict:
    try:
        d = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # any exception: any failure here means "not a CIFAR batch"
        raise PipelineError(f"{where}: not a CIFAR batch ({e})") from e
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def read_cifar(name: str, path: Path | None, download: bool, label_mode: str = "fine") -> RawData:
    """cifar10 / cifar100: the official python-version tarball (read in place, not extracted)."""
    dest = path or Path("data/raw") / name
    tar_name = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
    root = locate(name, [tar_name], [dest], download, dest)
    tar_path = root / tar_name
    try:
        with tarfile.open(tar_path) as tf:
            members = {Path(m.name).name: m for m in tf.getmembers() if m.isfile()}
            batches = {
                k: unpickle(tf.extractfile(m).read(), f"{tar_path}:{m.name}")
                for k, m in members.items()
                if k.startswith(("data_batch", "test_batch", "batches.meta", "train", "test", "meta"))
            }
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
        raise PipelineError(f"{tar_path}: not a readable tarball ({e})") from e

    def need(key):
        if key not in batches:
            raise PipelineError(f"{tar_path}: no member named {key} (has: {', '.join(sorted(batches)) or 'none'})")
        return batches[key]

    def xy(b, label_key, member):
        where = f"{tar_path}:{member}"
        if "data" not in b or label_key not in b:
            raise PipelineError(f"{where}: no `data` or `{label_key}` entry (has: {', '.join(map(str, b))})")
        data, labels = np.asarray(b["data"], np.uint8), np.asarray(b[label_key], np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise PipelineError(f"{where}: `data` has shape {data.shape}, expected rows of 3072 bytes (3×32×32)")
        if len(data) != len(labels):
            raise PipelineError(f"{where}: {len(data)} images but {len(labels)} labels in `{label_key}`")
        x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x), labels

    if name == "cifar10":
        names = sorted((k for k in batches if k.startswith("data_batch")), key=natural_key)
        if not names:
            need("data_batch_1")
        parts = [xy(batches[k], "labels", k) for k in names]
        train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        test = xy(need("test_batch"), "labels", "test_batch")
        classes = [c.decode() if isinstance(c, bytes) else c for c in need("batches.meta")["label_names"]]
    else:
        key = f"{label_mode}_labels"
        train, test = xy(need("train"), key, "train"), xy(need("test"), key, "test")
        classes = [c.decode() if isinstance(c, bytes) else c for c in need("meta")[f"{label_mode}_label_names"]]
    return RawData(
        classes,
        *train,
        *test,
        test_ids=[str(i) for i in range(len(test[1]))],
        source={"name": name, "path": str(tar_path), "label_mode": label_mode if name == "cifar100" else None},
    )


# --------------------------------------------------------------------------------------------- image files
def decode_chunk(paths: list[Path], size: int, on_bad: str, channels) -> tuple[np.ndarray, np.ndarray, list, set]:
    """Decode image files to uint8 size×size (RGB; luma for channels 1): (images, per-image gray flags,
    [(row, reason)] of unreadable files (black rows), the PIL modes met). Runs in a worker process."""
    c = 1 if channels == 1 else 3
    out = np.zeros((len(paths), size, size, c), np.uint8)
    gray, bad, modes = np.ones(len(paths), bool), [], set()
    for i, p in enumerate(paths):
        try:
            im, mode = open_image(p, size)
            with im:
                rgb = decode(im, size)
        except Exception as e:  # any exception: PIL raises many types for broken files
            if on_bad == "fail":
                raise PipelineError(f"{p}: unreadable image ({e}); set data.on_bad_image: skip to skip it") from e
            bad.append((i, f"{type(e).__name__}: {e}"))
            continue
        modes.add(mode)
        if c == 1:
            out[i] = luma(rgb)
        else:
            out[i] = rgb
            gray[i] = is_gray(rgb[None])[0]
    return out, gray, bad, modes


def _decode_task(task):
    return decode_chunk(*task)


def cpu_count() -> int:
    """The cores this process may use (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def pool_context():
    """fork where the platform has it (Linux): no re-import per worker, and it works from a notebook or stdin,
    where spawn cannot find the main module; spawn elsewhere (macOS, Windows)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods and sys.platform == "linux" else "spawn")


CHUNK = 256  # images per worker task: large enough to amortise the pickling, small enough to keep cores busy


def decoder_processes(workers: int | None, n_files: int) -> int:
    """How many processes decode n_files: `workers` (default: every core this process may use), no more than
    there are chunks of files."""
    return max(1, min(workers or cpu_count(), -(-n_files // CHUNK)))


@contextlib.contextmanager
def decoder_pool(workers: int | None, n_files: int) -> Iterator:
    """A pool of decoder_processes(...) processes for decode_files, or None where one process will do (a single
    chunk of files); one pool serves every split."""
    if decoder_processes(workers, n_files) == 1:
        yield None
        return
    pool = pool_context().Pool(decoder_processes(workers, n_files))
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def decode_files(
    files: Files, channels="auto", pool=None, desc: str = "decode"
) -> Iterator[tuple[np.ndarray, np.ndarray, list, set]]:
    """Chunks of decode_chunk's results, in file order, decoded by `pool` (a decoder_pool; None: this process).
    The order and the bytes do not depend on the number of workers. A progress bar with images/s goes to stderr
    for long decodes. Bad rows come back with their index in `files` and are warned about here, by path."""
    chunk = CHUNK
    tasks = [(files.paths[i : i + chunk], files.size, files.on_bad, channels) for i in range(0, len(files), chunk)]
    from tqdm import tqdm

    bar = tqdm(
        total=len(files), desc=desc, unit="img", file=sys.stderr, disable=len(files) < 5000, mininterval=2, delay=2
    )
    try:
        results = pool.imap(_decode_task, tasks) if pool else map(_decode_task, tasks)
        for k, (x, gray, bad, modes) in enumerate(results):
            start = k * chunk
            for i, why in bad:
                warn(f"skipping unreadable image {files.paths[start + i]} ({why})")
            yield x, gray, [start + i for i, _ in bad], modes
            bar.update(len(x))
    finally:
        bar.close()


def decoded(files: Files, channels="auto", workers: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A Files decoded in memory (for small sets; the prepare stage streams into files instead): (images,
    the rows kept, the bad files' paths). Bad rows are dropped, or kept black where files.keep_bad."""
    parts, bad = [], []
    with decoder_pool(workers, len(files)) as pool:
        for x, _, bad_rows, _ in decode_files(files, channels, pool):
            parts.append(x)
            bad += bad_rows
    c = 1 if channels == 1 else 3
    x = np.concatenate(parts) if parts else np.zeros((0, files.size, files.size, c), np.uint8)
    kept = np.arange(len(x)) if files.keep_bad else np.setdiff1d(np.arange(len(x)), bad)
    return x[kept], kept, [str(files.paths[i]) for i in bad]


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


# --------------------------------------------------------------------------------------------- digits
def digits_file() -> Path:
    """scikit-learn's bundled digits.csv.gz: 64 pixel values (0-16) then the label, one image per row."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"


def read_digits(seed: int, path: Path | None = None) -> RawData:
    """scikit-learn's 8×8 digits (offline), from `path` or the bundled digits.csv.gz (a folder holding it is
    fine); a seeded stratified 20 % becomes the test split."""
    from sklearn.model_selection import train_test_split

    f = path or digits_file()
    f = f / "digits.csv.gz" if f.is_dir() else f
    if path is not None and not f.exists() and digits_file().is_file():
        # e.g. `dvc exp run -S data.name=digits` with data.path still naming another data set's folder
        warn(
            f"{f} does not exist: reading scikit-learn's bundled copy instead; set `data.path: {digits_file()}` "
            "(or null) so that DVC tracks the file the stage reads"
        )
        f = digits_file()
    try:
        d = np.loadtxt(f, delimiter=",", ndmin=2)
    except (OSError, ValueError, EOFError) as e:
        raise PipelineError(f"{f}: cannot read digits CSV (64 pixel values then the label per row): {e}") from e
    if d.shape[1] != 65 or not len(d) or d[:, :64].min() < 0 or d[:, :64].max() > 16:
        raise PipelineError(f"{f}: expected rows of 64 pixel values in 0..16 then the label, got shape {d.shape}")
    y = d[:, 64].astype(np.int64)
    x = np.round(d[:, :64].reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)[..., None]
    idx_train, idx_test = train_test_split(np.arange(len(x)), test_size=0.2, stratify=y, random_state=seed)
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    classes = [str(c) for c in range(10)]
    return RawData(
        classes,
        x[idx_train],
        y[idx_train],
        x[idx_test],
        y[idx_test],
        test_ids=[str(i) for i in idx_test],
        source={"name": "digits", "path": str(f)},
    )


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


def read(data: dict, seed: int) -> RawData:
    """The data set data.name names, with `data.classes` applied; `data` is the checked params section."""
    return subset_classes(read_all(data, seed), data["classes"])


def read_all(data: dict, seed: int) -> RawData:
    """Dispatch on data.name."""
    name = data["name"]
    path = Path(data["path"]) if data["path"] else None
    size = data["size"] or DEFAULT_FILE_SIZE
    if name in ("fashion-mnist", "mnist"):
        return read_mnist_like(name, path, data["download"])
    if name in ("cifar10", "cifar100"):
        return read_cifar(name, path, data["download"], data["label_mode"])
    if name == "tiny-imagenet":
        return read_tiny_imagenet(path, size, data["on_bad_image"], data["download"])
    if name == "folder":
        return read_folder(path, size, data["on_bad_image"], data["train_dir"], data["valid_dir"], data["test_dir"])
    if name == "kaggle-csv":
        return read_kaggle_csv(
            path,
            size,
            data["on_bad_image"],
            data["train_dir"],
            data["test_dir"],
            data["labels_csv"],
            data["sample_submission"],
        )
    if name == "digits":
        return read_digits(seed, path)
    raise PipelineError(f"params.yaml: `data.name` = {name!r} has no reader")
