"""Decode one image file -> uint8 RGB array: the one place the prepare stage and `pipeline.commands.predict` share;
and many files in parallel, in a fixed order, by a process pool no larger than the cores (`decode_files`).

EXIF orientation is applied (phone photos), 16-bit and 32-bit images are scaled to 8 bits (not clipped),
every other mode PIL reads becomes RGB, and the image is resized to size×size (bilinear, antialiased).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.data.raw import Files
from pipeline.errors import PipelineError, warn

IMAGE_EXTS = frozenset(ext.lower() for ext in Image.registered_extensions())
HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # one channel, more than 8 bits


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, upright. High-bit-depth images are scaled by their format's full range:
    16-bit (0-65535 -> 0-255), float images in [0, 1]; PIL's own convert would clip them at 255."""
    im = ImageOps.exif_transpose(im)  # rotates/mirrors by the EXIF Orientation tag, then drops the tag
    if im.mode in HIGH_DEPTH_MODES:
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            top = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
        else:  # PNG/TIFF 16-bit arrive as I;16* or I; a 32-bit I image beyond 16 bits keeps its own range
            top = 65535.0 if not a.size or a.max() <= 65535 else float(a.max())
        a = np.clip(np.nan_to_num(a) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(a, mode="L")
    return im.convert("RGB")


def open_image(path: str | Path, size: int | None = None) -> tuple[Image.Image, str]:
    """Open and load an image file; (image, its mode as stored). With a target `size`, a JPEG is decoded in
    draft mode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides >= size: a 640×480 photo for a
    64 px set decodes at 160×120, several times faster, and the antialiased resize that follows does the rest."""
    im = Image.open(path)
    try:
        mode = im.mode
        if size is not None and im.format == "JPEG":
            im.draft(None, (size, size))
        im.load()
    except BaseException:
        im.close()
        raise
    return im, mode


def decode(image: str | Path | Image.Image | np.ndarray, size: int | None = None) -> np.ndarray:
    """A path, a PIL image or an H×W(×C) uint8 array -> uint8 H×W×3 RGB, resized to size×size if given."""
    if isinstance(image, (str, Path)):
        im, _ = open_image(image, size)
        with im:
            rgb = to_rgb(im)
    elif isinstance(image, np.ndarray):
        rgb = Image.fromarray(image if image.ndim == 2 or image.shape[2] != 1 else image[..., 0]).convert("RGB")
    else:
        rgb = to_rgb(image)
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(rgb, np.uint8)


def luma(x: np.ndarray) -> np.ndarray:
    """uint8 …×3 RGB -> …×1 ITU-R 601 luma, as PIL's convert("L") does."""
    return np.round(x[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]


def is_gray(x: np.ndarray) -> np.ndarray:
    """Per image of uint8 N×H×W×C: are all its colour channels equal?"""
    if x.shape[-1] == 1:
        return np.ones(len(x), bool)
    return ((x[..., 0] == x[..., 1]) & (x[..., 1] == x[..., 2])).reshape(len(x), -1).all(axis=1)


def to_channels(splits: dict[str, np.ndarray], channels) -> dict[str, np.ndarray]:
    """1 or 3 channels as asked; 'auto' keeps 1 channel when every image's colour channels are equal."""
    c = next(iter(splits.values())).shape[3]
    if channels == "auto":
        gray = c == 1 or all((x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all() for x in splits.values())
        channels = 1 if gray else 3
    if channels == c:
        return splits
    if channels == 3:
        return {k: np.ascontiguousarray(np.repeat(x, 3, axis=3)) for k, x in splits.items()}
    return {k: luma(x) for k, x in splits.items()}


# --------------------------------------------------------------------------------------------- many files
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


CHUNK = 256  # images per worker task at most: large enough to amortise the pickling, small enough to keep cores busy


def chunk_size(n_files: int, processes: int) -> int:
    """Images per task: at most CHUNK, and the split's files dealt out in a multiple of `processes` equal tasks,
    so that no core idles at the end of a split while another decodes its last, larger chunk (300 files on 2
    processes: 2 tasks of 150, not 256 + 44)."""
    tasks = math.ceil(n_files / CHUNK)
    rounds = math.ceil(tasks / processes)
    return max(1, math.ceil(n_files / (rounds * processes)))


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
    files: Files, channels="auto", pool=None, desc: str = "decode", processes: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray, list, set]]:
    """Chunks of decode_chunk's results, in file order, decoded by `pool` (a decoder_pool of `processes`; None:
    this process). The order and the bytes do not depend on the number of workers. A progress bar with images/s
    goes to stderr for long decodes. Bad rows come back with their index in `files` and are warned about here,
    by path."""
    chunk = chunk_size(len(files), processes if pool else 1)
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
        for x, _, bad_rows, _ in decode_files(files, channels, pool, processes=decoder_processes(workers, len(files))):
            parts.append(x)
            bad += bad_rows
    c = 1 if channels == 1 else 3
    x = np.concatenate(parts) if parts else np.zeros((0, files.size, files.size, c), np.uint8)
    kept = np.arange(len(x)) if files.keep_bad else np.setdiff1d(np.arange(len(x)), bad)
    return x[kept], kept, [str(files.paths[i]) for i in bad]
