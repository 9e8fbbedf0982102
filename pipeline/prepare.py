"""Stage `prepare`: read the data set named in params.yaml `data:`, write data/prepared/ whole or not at all.

Reads:  params.yaml (`data`, `seed`), the data set's files (see pipeline/data/datasets.py).
Writes: data/prepared/{train,valid,test}_x.npy (uint8 N×H×W×C), *_y.npy (int64), test_ids.json, meta.json.
Run:    dvc repro prepare    (or: python -m pipeline.prepare)

Memory stays near one copy of the prepared arrays whatever the data set's size: rows (`limit`, `test_limit`,
`data.classes`) are chosen from the file list and labels before anything is decoded, image files are decoded in
parallel and streamed chunk by chunk into the .npy files of the staging folder, and the channel statistics are
integer sums over chunks of the written training file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.artifacts import (
    PREPARED,
    ids_file,
    images_file,
    labels_file,
    meta_file,
    read_prepared,
    save_prepared_meta,
)
from pipeline.data import datasets, images
from pipeline.data.images import luma, to_channels
from pipeline.data.raw import Files, RawData, bytes_needed, take
from pipeline.data.splits import split_valid, stratified_subset
from pipeline.errors import PipelineError, check_space
from pipeline.inspect.scores import imbalance_line, resolve_metric
from pipeline.io import staged
from pipeline.params import data_params, load_params, metric_param, seed_param
from pipeline.records import PreparedMeta

OUT = PREPARED
ROWS_PER_CHUNK = 4096  # rows read at a time when a written file is converted, compacted or summed


def resize_all(x: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 N×H×W×C images to size×size (bilinear, with antialiasing when shrinking)."""
    if x.shape[1:3] == (size, size) or len(x) == 0:
        return x
    c = x.shape[3]
    out = np.empty((len(x), size, size, c), np.uint8)
    for i, im in enumerate(x):
        pil = Image.fromarray(im[..., 0] if c == 1 else im)
        arr = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))
        out[i] = arr[..., None] if c == 1 else arr
    return out


# --------------------------------------------------------------------------------------------- .npy streams
class NpyWriter:
    """Rows appended to an .npy file whose shape is known up front; the bytes are np.save's."""

    def __init__(self, path: Path, shape: tuple, dtype=np.uint8):
        self.path, self.shape, self.dtype, self.n = path, tuple(shape), np.dtype(dtype), 0
        # numpy writes the header (and sizes the file); the rows are then streamed with plain writes, not through
        # the map: pages written through a map stay resident, and a full disk there is a SIGBUS, not an OSError
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=self.shape)
        offset = mm.offset
        del mm
        self.f = open(path, "r+b")  # closed in close()
        self.f.seek(offset)

    def write(self, rows: np.ndarray) -> None:
        """Append rows."""
        self.f.write(np.ascontiguousarray(rows, self.dtype).tobytes())
        self.n += len(rows)

    def close(self) -> None:
        """Close the file (its header already holds the final shape)."""
        self.f.close()
        if self.n != self.shape[0]:
            raise RuntimeError(f"{self.path}: wrote {self.n} rows of {self.shape[0]}")


def save(path: Path, a: np.ndarray) -> None:
    """An array as a .npy file, written through NpyWriter."""
    w = NpyWriter(path, a.shape, a.dtype)
    w.write(a)
    w.close()


def read_chunks(path: Path, rows: int | None = None):
    """(start, rows) of an .npy file read with plain reads, not a memory map: nothing stays resident."""
    with open(path, "rb") as f:
        shape, _, dtype = read_header(f)
        row, rows = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize, rows or ROWS_PER_CHUNK
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            yield start, np.frombuffer(f.read(n * row), dtype).reshape(n, *shape[1:])


def read_header(f) -> tuple:
    """(shape, fortran_order, dtype) of an open .npy file, which is left at its first data byte."""
    major, _ = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return read(f)


def npy_shape(path: Path) -> tuple:
    """A .npy file's shape, read from its header."""
    with open(path, "rb") as f:
        return read_header(f)[0]


def rewrite(path: Path, fn, keep: np.ndarray | None = None) -> None:
    """Rewrite an image .npy chunk by chunk: only the rows `keep` (sorted), each chunk mapped by fn; whole or not
    at all (io.staged)."""
    shape = npy_shape(path)
    n = shape[0] if keep is None else len(keep)
    first = fn(np.zeros((1, *shape[1:]), np.uint8))
    with staged(path) as (tmp,):
        w = NpyWriter(tmp, (n, *first.shape[1:]))
        for start, x in read_chunks(path):
            if keep is not None:
                sel = keep[(keep >= start) & (keep < start + len(x))] - start
                x = x[sel]
            w.write(fn(x))
        w.close()


def channel_stats(path: Path) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a uint8 image file in [0, 1], from exact integer sums over chunks (each
    channel's histogram of the 256 values: the sums are the same integers, far faster than widening every pixel)."""
    s = ss = 0
    n = 0
    v = np.arange(256, dtype=np.int64)
    for _, x in read_chunks(path):
        flat = x.reshape(-1, x.shape[-1])
        counts = np.stack([np.bincount(flat[:, c], minlength=256) for c in range(flat.shape[1])]).astype(np.int64)
        s = s + counts @ v
        ss = ss + counts @ (v * v)
        n += len(flat)
    if n == 0:
        return [0.0], [0.0]
    mean = np.asarray(s, np.float64) / n
    var = np.maximum(np.asarray(ss, np.float64) / n - mean * mean, 0.0)
    return list(mean / 255), list(np.sqrt(var) / 255)


# --------------------------------------------------------------------------------------------- the stage
def select_rows(raw: RawData, valid_pct: float, seed: int, limit: int | None, test_limit: int | None):
    """Train / valid / test rows (images not decoded yet where they are Files): the data set's own validation
    split or a seeded stratified one, `limit` and `test_limit` as seeded stratified subsets."""
    if len(raw.train_y) == 0:
        raise PipelineError(f"{raw.source.get('path')}: no readable training images")
    if raw.valid_x is not None:  # the data set's own validation split
        tr_x, tr_y, va_x, va_y = raw.train_x, raw.train_y, raw.valid_x, raw.valid_y
        if limit:
            n_va = max(1, round(limit * len(va_y) / (len(tr_y) + len(va_y))))
            t, v = stratified_subset(tr_y, limit - n_va, seed), stratified_subset(va_y, n_va, seed)
            tr_x, tr_y, va_x, va_y = take(tr_x, t), tr_y[t], take(va_x, v), va_y[v]
    else:
        x, y = raw.train_x, raw.train_y
        if limit:
            keep = stratified_subset(y, limit, seed)
            x, y = take(x, keep), y[keep]
        t, v = split_valid(y, valid_pct, seed)
        tr_x, tr_y, va_x, va_y = take(x, t), y[t], take(x, v), y[v]
    te_x, te_y, ids = raw.test_x, raw.test_y, raw.test_ids
    if te_x is None:
        ids = []
    if te_x is not None and test_limit and test_limit < len(te_x):
        if raw.submission_header:
            raise PipelineError(
                "params.yaml: `data.test_limit` cannot be used with a sampleSubmission.csv, "
                "whose every id the submission must contain"
            )
        keep = stratified_subset(te_y, test_limit, seed) if te_y is not None else np.arange(test_limit)
        te_x, ids = take(te_x, keep), [ids[i] for i in keep]
        te_y = te_y[keep] if te_y is not None else None
    return {"train": tr_x, "valid": va_x, "test": te_x}, {"train": tr_y, "valid": va_y, "test": te_y}, list(ids)


def write_arrays(folder: Path, xs: dict, size: int | None, channels) -> list[int]:
    """Array data sets (IDX, CIFAR, digits: in memory already): channels, size, then each split's file."""
    shape = next(x.shape for x in xs.values() if x is not None)
    xs = {k: (x if x is not None else np.zeros((0, *shape[1:]), np.uint8)) for k, x in xs.items()}
    xs = to_channels(xs, channels)
    if size:
        xs = {k: resize_all(x, size) for k, x in xs.items()}
    for k, x in xs.items():
        save(images_file(folder, k), x)
    return list(xs["train"].shape[1:])


def write_files(folder: Path, xs: dict, ys: dict, channels, workers: int | None) -> tuple[list[int], list, list]:
    """File data sets: each split's Files decoded in parallel straight into its .npy file. Unreadable training
    and validation images are then dropped (their labels too), test ones stay black; with `channels: auto` the
    files become one channel when every image's colour channels are equal. Returns (image shape, bad paths,
    PIL modes)."""
    size = next(x.size for x in xs.values() if isinstance(x, Files))
    c = 1 if channels == 1 else 3
    all_gray, bad_paths, modes = True, [], set()
    n_files = sum(len(x) for x in xs.values() if isinstance(x, Files))
    t0 = time.perf_counter()
    n_proc = images.decoder_processes(workers, n_files)
    with images.decoder_pool(workers, n_files) as pool:
        for k, files in xs.items():
            flags: list = []
            bad_paths += decode_split(folder, k, files, ys, channels, (size, c, n_proc), pool, modes, flags)
            all_gray &= all(flags)
    dt = time.perf_counter() - t0
    print(f"decoded {n_files} image files in {dt:.1f} s ({n_files / dt:.0f} img/s, {n_proc} processes)", flush=True)
    if channels == "auto" and all_gray and c == 3:
        for k in xs:
            rewrite(images_file(folder, k), luma)
        c = 1
    return [size, size, c], bad_paths, sorted(modes)


def decode_split(folder: Path, k: str, files, ys: dict, channels, shape: tuple, pool, modes: set, gray: list):
    """One split's Files decoded into {k}_x.npy (an empty file where the split has none) by `pool`; `shape`: (side,
    channels, the pool's processes). Returns the bad files' paths, drops their rows (and labels) unless the split
    keeps them black; appends per-chunk gray flags."""
    size, c, n_proc = shape
    path = images_file(folder, k)
    if not isinstance(files, Files):  # no such split
        save(path, np.zeros((0, size, size, c), np.uint8))
        return []
    w = NpyWriter(path, (len(files), size, size, c))
    bad = []
    for x, g, bad_rows, m in images.decode_files(files, channels, pool, desc=f"decode {k}", processes=n_proc):
        w.write(x)
        good = np.ones(len(x), bool)
        good[np.asarray(bad_rows, np.int64) - (w.n - len(x))] = False
        gray.append(bool(g[good].all()))
        bad += bad_rows
        modes |= m
    w.close()
    if bad and not files.keep_bad:
        keep = np.setdiff1d(np.arange(len(files)), bad)
        rewrite(path, lambda a: a, keep)
        ys[k] = ys[k][keep]
    return [str(files.paths[i]) for i in bad]


def check_labels(raw: RawData, ys: dict) -> None:
    """Every split's labels index a class."""
    n_cls = len(raw.classes)
    for k, y in ys.items():
        if y is not None and len(y) and (y.min() < 0 or y.max() >= n_cls):
            raise PipelineError(f"{raw.source.get('path')}: {k} label {int(y.max())} outside 0..{n_cls - 1}")


def prepare_to(
    folder: Path,
    raw: RawData,
    valid_pct: float,
    seed: int,
    limit: int | None = None,
    test_limit: int | None = None,
    size: int | None = None,
    channels="auto",
    workers: int | None = None,
) -> PreparedMeta:
    """Split, subset, decode, resize and describe a RawData into `folder` (its .npy files, test_ids.json,
    meta.json); returns meta."""
    xs, ys, ids = select_rows(raw, valid_pct, seed, limit, test_limit)
    check_space(
        folder.parent, bytes_needed(xs, size, channels), "the prepared arrays", "; or lower data.limit / data.size"
    )
    check_labels(raw, ys)
    source, bad_images = dict(raw.source), list(raw.bad_images)
    if any(isinstance(x, Files) for x in xs.values()):
        image_shape, bad, modes = write_files(folder, xs, ys, channels, workers)
        bad_images += bad
        source["modes"] = modes
    else:
        image_shape = write_arrays(folder, xs, size, channels)
    if len(ys["train"]) == 0:
        raise PipelineError(f"{raw.source.get('path')}: no readable training images")
    for k, y in ys.items():
        if y is not None:
            save(labels_file(folder, k), y.astype(np.int64))
    counts = {k: int(npy_shape(images_file(folder, k))[0]) for k in xs}
    test_labeled = ys["test"] is not None and counts["test"] > 0
    ids_file(folder).write_text(json.dumps(list(ids)) + "\n")
    mean, std = channel_stats(images_file(folder, "train"))
    meta = PreparedMeta(
        source=source,
        classes=list(raw.classes),
        class_names=list(raw.class_names or raw.classes),
        image_shape=list(image_shape),
        counts=counts,
        counts_per_class={
            k: {c: int((y == i).sum()) for i, c in enumerate(raw.classes)} for k, y in ys.items() if y is not None
        },
        test_labeled=test_labeled,
        train_mean=[round(float(m), 6) for m in mean],
        train_std=[round(float(s), 6) for s in std],
        bad_images={"count": len(bad_images), "files": bad_images},
        ignored_files=raw.ignored_files,
        submission_header=raw.submission_header or ["id", "label"],
        params={
            "valid_pct": valid_pct,
            "seed": seed,
            "limit": limit,
            "test_limit": test_limit,
            "size": size if size is not None or not isinstance(raw.train_x, Files) else raw.train_x.size,
            "channels": channels,
        },
    )
    save_prepared_meta(meta_file(folder), meta)
    return meta


def prepare(raw: RawData, valid_pct: float, seed: int, **kw) -> tuple[dict, PreparedMeta]:
    """prepare_to into a temporary folder, read back into memory: (arrays by file stem + test_ids, meta). For
    small data sets, tests and notebooks; the stage itself writes straight into its staging folder."""
    with tempfile.TemporaryDirectory() as d:
        meta = prepare_to(Path(d), raw, valid_pct, seed, **kw)
        prep = read_prepared(Path(d), in_memory=True)
        arrays = {**prep.arrays, "test_ids": prep.test_ids}
    return arrays, meta


def write_prepared(arrays: dict, meta: PreparedMeta, out: Path = OUT) -> None:
    """Write in-memory arrays and meta as data/prepared; out is whole or untouched."""
    with staged(out) as (tmp,):
        for name, value in arrays.items():
            if name == "test_ids":
                ids_file(tmp).write_text(json.dumps(value) + "\n")
            else:
                save(tmp / f"{name}.npy", value)
        save_prepared_meta(meta_file(tmp), meta)


def run(params_file: str | Path = "params.yaml", out: Path = OUT, workers: int | None = None) -> PreparedMeta:
    """The stage: params.yaml's `data:` prepared into `out` whole; returns its meta."""
    params = load_params(params_file)
    data, seed = data_params(params), seed_param(params)
    raw = datasets.read(data, seed)
    with staged(out) as (tmp,):
        meta = prepare_to(
            tmp,
            raw,
            data.valid_pct,
            seed,
            limit=data.limit,
            test_limit=data.test_limit,
            size=data.size,
            channels=data.channels,
            workers=workers,
        )
    c = meta.counts
    print(
        f"prepared {data.name}: {c['train']} train / {c['valid']} valid / {c['test']} test, "
        f"{len(meta.classes)} classes, images {'×'.join(map(str, meta.image_shape))}, "
        f"{meta.bad_images['count']} bad images skipped -> {out}"
    )
    train_counts = meta.counts_per_class.get("train", {})
    if train_counts:
        print(imbalance_line(train_counts, resolve_metric(metric_param(params), train_counts)[0]))
    return meta


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.prepare`: the stage on params.yaml; 1 with the error's words on a bad input."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.prepare", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = ap.parse_args(argv)
    try:
        run(args.params)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
