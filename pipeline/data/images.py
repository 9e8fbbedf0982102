"""Decode one image file -> uint8 RGB array: the one place the prepare stage and `pipeline.commands.predict` share.

EXIF orientation is applied (phone photos), 16-bit and 32-bit images are scaled to 8 bits (not clipped),
every other mode PIL reads becomes RGB, and the image is resized to size×size (bilinear, antialiased).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

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
