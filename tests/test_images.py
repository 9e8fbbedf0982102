"""Image decoding at scale: a process pool gives the bytes one process gives; JPEG draft mode decodes big
photos at a reduced scale."""

import hashlib

import numpy as np
from conftest import photo_folder

from pipeline import prepare
from pipeline.data import image_folders, images


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_parallel_decode_is_deterministic(tmp_path):
    """Two worker processes and small chunks give the bytes one process gives."""
    raw = image_folders.read_folder(photo_folder(tmp_path / "ds"), size=16, on_bad="skip")
    one = tmp_path / "one"
    two = tmp_path / "two"
    for out, workers in ((one, 1), (two, 2)):
        out.mkdir()
        chunk = images.CHUNK
        images.CHUNK = 7
        try:
            prepare.prepare_to(out, raw, 0.2, 0, workers=workers)
        finally:
            images.CHUNK = chunk
    assert digest(one) == digest(two)


def test_jpeg_draft_decodes_at_a_reduced_scale(tmp_path):
    """A large JPEG for a small target decodes at a DCT scale, then the antialiased resize: close to a full decode."""
    from PIL import Image

    yy, xx = np.mgrid[0:480, 0:640]
    smooth = np.stack([xx * 255 // 640, yy * 255 // 480, (xx + yy) * 255 // 1120], -1).astype(np.uint8)
    p = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(p, quality=90)
    im, mode = images.open_image(p, 64)
    assert mode == "RGB" and im.size == (160, 120)  # 1/4: the smallest scale keeping both sides >= 64
    im.close()
    full = images.open_image(p)[0]
    assert full.size == (640, 480)

    ref = np.asarray(images.to_rgb(full).resize((64, 64), Image.Resampling.BILINEAR, reducing_gap=3.0), np.int16)
    got = images.decode(p, 64).astype(np.int16)
    assert got.shape == (64, 64, 3) and np.abs(got - ref).mean() < 3


def test_chunks_deal_each_split_out_evenly():
    """Tasks of at most CHUNK files, as many per process where possible: no core waits long at a split's end on
    another's bigger last chunk."""
    for n in (1, 44, 300, 500, 2700, 10_000, 100_000):
        for p in (1, 2, 4):
            c = images.chunk_size(n, p)
            tasks = [min(c, n - i) for i in range(0, n, c)]
            assert c <= images.CHUNK and sum(tasks) == n
            # every process gets as many tasks, or the odd one out is at least half a task (not 256 + 44)
            assert len(tasks) % p == 0 or tasks[-1] >= c / 2, (n, p, tasks)
    assert images.chunk_size(300, 2) == 150 and images.chunk_size(2700, 2) == 225
