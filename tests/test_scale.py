"""Issue 18 at test size: memory-mapped training equals in-memory training, parallel decode is deterministic,
rows are chosen before decoding, JPEG draft decoding, Rows views."""

import hashlib

import numpy as np
import pytest
from conftest import write_image

from pipeline import datasets, images, prepare, train
from pipeline.data import Rows, load_prepared
from pipeline.params import make_spec


def spec(**kw):
    return make_spec({"epochs": 1, "bs": 16, "lr": 1e-3, "flip": True, "pad": 1, **kw}, "test")


def photo_folder(root, n_per_class=30, classes=("a", "b", "c"), size=(96, 72)):
    for k, c in enumerate(classes):
        for i in range(n_per_class):
            write_image(root / "train" / c / f"{i}.jpg", size=size, seed=100 * k + i)
    for i in range(12):
        write_image(root / "test" / f"t{i}.jpg", size=size, seed=999 + i)
    return root


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_memory_mapped_training_equals_in_memory(tmp_path):
    """The train stage's arrays are Rows over memory maps; a subset, a fold and a refit are index views. Training
    from them gives the very predictions training from in-memory copies gives."""
    arrays, meta = prepare.prepare(datasets.read_digits(0), 0.2, 0, limit=300)
    prepare.write_prepared(arrays, meta, tmp_path / "prepared")
    mapped, meta2 = load_prepared(tmp_path / "prepared")
    assert isinstance(mapped["train_x"], Rows) and isinstance(mapped["train_x"].parts[0][0], np.memmap)
    in_memory = {k: v for k, v in arrays.items() if k != "test_ids"}
    s = spec(arch="cnn6", train_limit=150, refit=True)
    a = train.train_entry("m", s, in_memory, meta, seed=0)
    b = train.train_entry("m", s, mapped, meta2, seed=0)
    for split in ("valid", "test"):
        np.testing.assert_array_equal(a.preds[split], b.preds[split])
    f = spec(arch="logreg", folds=2)
    a, b = train.train_entry("f", f, in_memory, meta, seed=0), train.train_entry("f", f, mapped, meta2, seed=0)
    np.testing.assert_array_equal(a.preds["oof"], b.preds["oof"])


def test_rows_views_gather_the_right_rows():
    x = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    v = Rows.of(x).take([7, 2, 5])
    np.testing.assert_array_equal(v[:], x[[7, 2, 5]])
    both = Rows.concat(v, x[:2])
    assert len(both) == 5 and both.shape == (5, 2, 2, 1)
    np.testing.assert_array_equal(both[[4, 0, 3, 1]], x[[1, 7, 0, 2]])
    np.testing.assert_array_equal(both.take([3, 4, 2])[:], x[[0, 1, 5]])
    assert len(Rows.of(x).take([])) == 0
    with pytest.raises(IndexError):
        both[[5]]


def test_parallel_decode_is_deterministic(tmp_path):
    """Two worker processes and small chunks give the bytes one process gives."""
    raw = datasets.read_folder(photo_folder(tmp_path / "ds"), size=16, on_bad="skip")
    one = tmp_path / "one"
    two = tmp_path / "two"
    for out, workers in ((one, 1), (two, 2)):
        out.mkdir()
        chunk = datasets.CHUNK
        datasets.CHUNK = 7
        try:
            prepare.prepare_to(out, raw, 0.2, 0, workers=workers)
        finally:
            datasets.CHUNK = chunk
    assert digest(one) == digest(two)


def test_rows_are_chosen_before_decoding(tmp_path, monkeypatch):
    """limit, test_limit and data.classes pick files from the list; only those are decoded."""
    photo_folder(tmp_path / "ds")
    calls = []
    real = datasets.decode_chunk

    def counting(paths, *a):
        calls.extend(paths)
        return real(paths, *a)

    monkeypatch.setattr(datasets, "decode_chunk", counting)
    data = {"name": "folder", "path": str(tmp_path / "ds"), "classes": ["a", "c"], "limit": 20, "test_limit": 5}
    from pipeline.params import data_params

    d = data_params({"data": data})
    raw = datasets.read(d, 0)
    arrays, meta = prepare.prepare(raw, 0.25, 0, limit=20, test_limit=5, workers=1)
    assert len(calls) == 25 and len(set(calls)) == 25
    assert not any("/b/" in str(p) for p in calls)
    assert meta["counts"] == {"train": 15, "valid": 5, "test": 5}


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


def test_channel_stats_are_exact_sums(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (1000, 5, 5, 3), dtype=np.uint8)
    prepare.save(tmp_path / "x.npy", x)
    chunk = prepare.ROWS_PER_CHUNK
    prepare.ROWS_PER_CHUNK = 64
    try:
        mean, std = prepare.channel_stats(tmp_path / "x.npy")
    finally:
        prepare.ROWS_PER_CHUNK = chunk
    f = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, f.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, f.std(axis=(0, 1, 2)), rtol=1e-9)
