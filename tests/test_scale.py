"""Issue 18 at test size: memory-mapped training equals in-memory training, parallel decode is deterministic,
rows are chosen before decoding, JPEG draft decoding, Rows views."""

import hashlib

import numpy as np
import pytest
from conftest import has_row, write_image

from pipeline import prepare, train
from pipeline.artifacts import ensemble_model_file, read_prepared
from pipeline.data import array_formats, datasets, image_folders, images
from pipeline.data.rows import Rows
from pipeline.inspect import figures as FIG
from pipeline.inspect import interpret as I
from pipeline.inspect import verdicts as V
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
    arrays, meta = prepare.prepare(array_formats.read_digits(0), 0.2, 0, limit=300)
    prepare.write_prepared(arrays, meta, tmp_path / "prepared")
    prep = read_prepared(tmp_path / "prepared")
    mapped, meta2 = prep.arrays, prep.meta
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


def test_rows_are_chosen_before_decoding(tmp_path, monkeypatch):
    """limit, test_limit and data.classes pick files from the list; only those are decoded."""
    photo_folder(tmp_path / "ds")
    calls = []
    real = images.decode_chunk

    def counting(paths, *a):
        calls.extend(paths)
        return real(paths, *a)

    monkeypatch.setattr(images, "decode_chunk", counting)
    data = {"name": "folder", "path": str(tmp_path / "ds"), "classes": ["a", "c"], "limit": 20, "test_limit": 5}
    from pipeline.params import data_params

    d = data_params({"data": data})
    raw = datasets.read(d, 0)
    arrays, meta = prepare.prepare(raw, 0.25, 0, limit=20, test_limit=5, workers=1)
    assert len(calls) == 25 and len(set(calls)) == 25
    assert not any("/b/" in str(p) for p in calls)
    assert meta.counts == {"train": 15, "valid": 5, "test": 5}


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


# ------------------------------------------------------------------------------------------------ many classes
def many_class_run(tmp_path, n_classes=200, rows=2000, members=2):
    from conftest import write_run

    rng = np.random.default_rng(0)
    vy, ty = rng.integers(0, n_classes, rows), rng.integers(0, n_classes, rows // 2)

    def noisy(y, acc):
        p = rng.dirichlet(np.full(n_classes, 0.3), len(y)) * 0.3
        hit = np.where(rng.random(len(y)) < acc, y, rng.integers(0, n_classes, len(y)))
        p[np.arange(len(y)), hit] += 0.7
        return p / p.sum(1, keepdims=True)

    classes = [f"n{i:08d}" for i in range(n_classes)]
    models = {
        f"m{i}": ("resnet34", "timm", noisy(vy, 0.6 + 0.05 * i), noisy(ty, 0.6 + 0.05 * i)) for i in range(members)
    }
    params = write_run(tmp_path, models, vy, ty, classes=classes)
    return params, vy, ty, models


def test_stacking_takes_the_tied_form_at_200_classes(tmp_path):
    from ensembles import ensemble as E
    from ensembles import weights as W

    params, vy, ty, models = many_class_run(tmp_path)
    params["ensemble"] = {"select": "threshold", "threshold": 0.0, "method": "stacking"}
    m = E.run(params, tmp_path)
    s = m.strategies["stacking"]
    assert s.form == "tied" and s.valid_scored.startswith("cross-fitted")
    best_member = max(W.accuracy(v[2], vy) for v in models.values())
    assert s.valid.accuracy > best_member - 0.02  # a sensible blend, not a broken fit
    import json

    saved = json.loads((ensemble_model_file(tmp_path)).read_text())
    P = np.stack([models[n][3] for n in saved["members"]])
    np.testing.assert_allclose(
        W.stacker_apply(saved["stacker"], P, 200), np.load(tmp_path / "ensemble" / "preds" / "test.npy"), atol=1e-5
    )


def test_strategies_are_choosable_and_method_must_be_among_them(tmp_path):
    from ensembles import ensemble as E
    from pipeline.errors import PipelineError

    params, *_ = many_class_run(tmp_path, n_classes=20, rows=400)
    params["ensemble"] = {"select": "threshold", "threshold": 0.0, "strategies": ["accuracy", "greedy"]}
    m = E.run(params, tmp_path)
    assert list(m.strategies) == ["accuracy", "greedy"]
    params["ensemble"]["method"] = "stacking"
    with pytest.raises(PipelineError, match=r"ensemble.method` = 'stacking' is not among `ensemble.strategies"):
        E.run(params, tmp_path)


def test_one_member_says_why_nothing_is_cross_fitted(tmp_path):
    from ensembles import ensemble as E

    params, *_ = many_class_run(tmp_path, n_classes=20, rows=400, members=1)
    params["ensemble"] = {"select": "threshold", "threshold": 0.0}
    m = E.run(params, tmp_path)
    assert m.strategies["greedy"].valid_scored == "direct: one member, nothing to fit"
    assert "validation rows" not in m.strategies["logloss"].valid_scored


def test_confusion_at_200_classes_is_a_heatmap_with_a_pairs_table(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")

    rng = np.random.default_rng(0)
    y = rng.integers(0, 200, 3000)
    p = np.full((3000, 200), 1e-3)
    pred = np.where(rng.random(3000) < 0.7, y, (y + 1) % 200)
    p[np.arange(3000), pred] = 1
    classes = [f"c{i}" for i in range(200)]
    texts = []
    import matplotlib.axes

    real_text = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, *a, **k: texts.append(a) or real_text(self, *a, **k))
    FIG.fig_confusion(tmp_path / "cm.png", y, {"m": p}, classes, "test")
    assert (tmp_path / "cm.png").stat().st_size > 10_000 and len(texts) == 0  # no number in 40 000 cells
    pairs = I.confused_pairs(y, p, classes, k=5)
    assert len(pairs) == 5 and all(r["predicted"] == classes[(classes.index(r["true"]) + 1) % 200] for r in pairs)
    assert has_row(V.markdown_confused(pairs, "m", "test"), "true", "predicted")
    FIG.fig_confusion(tmp_path / "cm10.png", y % 10, {"m": p[:, :10]}, classes[:10], "test")
    assert len(texts) == 100  # at 10 classes every cell has its count


def test_digits_with_another_data_sets_path_finds_the_bundled_file(tmp_path, capsys):
    """`dvc exp run -S data.name=digits` on a clone: data.path still names the Fashion-MNIST folder."""
    from pipeline.params import data_params

    (tmp_path / "fashion-mnist").mkdir()
    raw = datasets.read(data_params({"data": {"name": "digits", "path": str(tmp_path / "fashion-mnist")}}), 0)
    assert len(raw.train_y) == 1437
    err = capsys.readouterr().err
    assert f"set `data.path: {array_formats.digits_file()}`" in err


@pytest.mark.slow
def test_bench_scale_smallest_mode_runs(tmp_path):
    """`python -m bench.scale --small`: both layouts written and run through `dvc repro` under the measuring
    wrapper (the photo folder to `prepare` only, to keep the suite short), every stage's wall time and peak memory
    recorded in the results files."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for extra in (["--sets", "tiny"], ["--sets", "photos", "--target", "prepare"]):
        cmd = [sys.executable, "-m", "bench.scale", "--small", "--out", str(tmp_path), *extra]
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    tiny = json.loads((tmp_path / "scale_tiny_small.json").read_text())
    assert set(tiny["stages"]) == {"prepare", "train@logreg", "train@fast", "ensemble", "report"}
    assert tiny["classes"] == 20 and tiny["ensemble"]["chosen"] in tiny["ensemble"]["strategies"]
    photos = json.loads((tmp_path / "scale_photos_small.json").read_text())
    assert set(photos["stages"]) == {"prepare"} and photos["image_shape"] == [64, 64, 3]
    for res in (tiny, photos):
        for s in res["stages"].values():
            assert s["wall_s"] > 0 and s["peak_rss_gib"] > 0.01
        assert res["stages"]["prepare"]["img_per_s"] > 0 and res["dvc_repro_s"] > 0
    assert has_row((tmp_path / "scale_photos_small.md").read_text(), "prepare")


def test_wilson_interval_matches_the_textbook_formula():
    from pipeline.inspect.scores import score, wilson

    k, n, z = 87, 100, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    np.testing.assert_allclose(wilson(k, n), [centre - half, centre + half], rtol=1e-9)
    assert wilson(0, 0) is None
    s = score(np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, 2, 1]))
    assert s["n"] == 4 and s["accuracy"] == 0.75 and s["ci95"][0] < 0.75 < s["ci95"][1]


def test_resident_batches_equal_host_gathered_ones():
    """The GPU path's gather (rows uploaded once, indexed on the device), run here on the CPU device: the same
    uint8 N×C×H×W batches and labels as the host path's gather from the memory-mapped rows."""
    import torch

    from pipeline.data.loaders import TensorPair

    x = np.random.default_rng(0).integers(0, 256, (40, 5, 5, 3), dtype=np.uint8)
    view = Rows.of(x).take(np.arange(39, -1, -2))
    y = np.arange(20)
    host, resident = TensorPair(view, y), TensorPair(view, y, torch.device("cpu"), resident=True)
    assert resident.resident_x is not None and host.device is None
    idx = torch.tensor([3, 0, 19, 7])
    (hx, hy), (rx, ry) = host[idx], resident[idx]
    assert torch.equal(hx, rx) and torch.equal(hy, ry) and hx.is_contiguous() and rx.is_contiguous()
    np.testing.assert_array_equal(hx.numpy(), x[[33, 39, 1, 25]].transpose(0, 3, 1, 2))
