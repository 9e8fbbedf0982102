"""Shared fixtures: small files in the real formats, written by the tests themselves."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a model hub
ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    """Write a uint8 array in IDX format (optionally gzipped), as the MNIST files are."""
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_image(path: Path, size=(20, 16), mode="RGB", seed=0, fmt=None) -> Path:
    """A random image in any PIL mode."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture
def mnist_dir(tmp_path):
    """The four Fashion-MNIST IDX files, tiny: 40 train and 20 test 28×28 images, labels 0..9."""
    rng = np.random.default_rng(0)
    d = tmp_path / "fmnist"
    d.mkdir()
    for stem, n in (("train", 40), ("t10k", 20)):
        write_idx(d / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(d / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10)
    return d
