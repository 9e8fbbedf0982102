"""The prepare stage: splits, subsets, channels, determinism, whole-or-nothing output, param errors."""

import hashlib
import json

import numpy as np
import pytest
import yaml
from conftest import make_tiny, photo_folder, write_image

from pipeline import prepare
from pipeline.data import array_formats, datasets, image_folders, images
from pipeline.errors import PipelineError
from pipeline.params import data_params


def raw_digits():
    return array_formats.read_digits(seed=0)


def test_stratified_split_counts():
    arrays, meta = prepare.prepare(raw_digits(), valid_pct=0.2, seed=1)
    n_pool = 1437
    assert meta.counts == {"train": n_pool - round(n_pool * 0.2), "valid": round(n_pool * 0.2), "test": 360}
    va = np.bincount(arrays["valid_y"], minlength=10)
    assert va.max() - va.min() <= 1  # stratified: every class ~equally represented
    assert arrays["train_x"].dtype == np.uint8 and arrays["train_y"].dtype == np.int64
    # no image in both train and valid
    tr = {r.tobytes() for r in arrays["train_x"]}
    assert sum(r.tobytes() in tr for r in arrays["valid_x"]) < 5  # digits has a few exact duplicates


def test_limit_is_stratified_subset():
    arrays, meta = prepare.prepare(raw_digits(), valid_pct=0.25, seed=0, limit=200, test_limit=50)
    assert meta.counts == {"train": 150, "valid": 50, "test": 50}
    assert np.bincount(arrays["train_y"], minlength=10).min() >= 13
    assert len(arrays["test_ids"]) == 50


def test_seed_changes_split_and_same_seed_same_split():
    a, _ = prepare.prepare(raw_digits(), 0.2, seed=1)
    b, _ = prepare.prepare(raw_digits(), 0.2, seed=1)
    c, _ = prepare.prepare(raw_digits(), 0.2, seed=2)
    np.testing.assert_array_equal(a["valid_x"], b["valid_x"])
    assert not np.array_equal(a["valid_y"], c["valid_y"])


def test_meta_stats_and_channels():
    arrays, meta = prepare.prepare(raw_digits(), 0.2, seed=0, channels=3, size=16)
    assert arrays["train_x"].shape[1:] == (16, 16, 3) and meta.image_shape == [16, 16, 3]
    x = arrays["train_x"] / 255
    assert meta.train_mean == pytest.approx(x.mean(axis=(0, 1, 2)), abs=1e-6)
    assert meta.train_std == pytest.approx(x.std(axis=(0, 1, 2)), abs=1e-6)
    assert sum(meta.counts_per_class["valid"].values()) == meta.counts["valid"]


def test_auto_channels_collapses_gray_rgb(tmp_path):
    for c in ("a", "b"):
        for i in range(4):
            write_image(tmp_path / "train" / c / f"{i}.png", mode="L", seed=i)
    raw = image_folders.read_folder(tmp_path, size=8, on_bad="skip")
    assert images.decoded(raw.train_x)[0].shape[-1] == 3
    arrays, meta = prepare.prepare(raw, 0.25, seed=0)
    assert arrays["train_x"].shape[-1] == 1 and meta.image_shape == [8, 8, 1]
    assert meta.counts["test"] == 0


def test_own_validation_split_is_used(tmp_path):

    raw = image_folders.read_tiny_imagenet(make_tiny(tmp_path), size=16, on_bad="skip", download=False)
    arrays, meta = prepare.prepare(raw, 0.5, seed=0)
    assert meta.counts == {"train": 12, "valid": 6, "test": 3} and not meta.test_labeled
    assert "test_y" not in arrays


def write_params(tmp_path, **data):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"seed": 3, "data": {"name": "digits", **data}}))
    return str(p)


def digest(folder):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_main_same_params_same_bytes(tmp_path):
    params = write_params(tmp_path, limit=300)
    prepare.run(params, tmp_path / "a")
    prepare.run(params, tmp_path / "b")
    da, db = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert da == db
    assert set(da) == {"meta.json", "test_ids.json"} | {
        f"{s}_{k}.npy" for s in ("train", "valid", "test") for k in "xy"
    }
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["source"]["name"] == "digits" and meta["counts"]["train"] + meta["counts"]["valid"] == 300


@pytest.mark.bad_input
def test_failure_leaves_previous_output_untouched(tmp_path):
    out = tmp_path / "prepared"
    prepare.run(write_params(tmp_path, limit=100), out)
    before = digest(out)
    with pytest.raises(PipelineError, match="data.valid_pct"):
        prepare.run(write_params(tmp_path, valid_pct=1.5), out)
    with pytest.raises(PipelineError, match="kaggle-csv"):
        prepare.run(write_params(tmp_path, name="kaggle-csv"), out)
    assert digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


@pytest.mark.bad_input
def test_failure_creates_nothing(tmp_path):
    (tmp_path / "f").mkdir()
    with pytest.raises(PipelineError):
        prepare.run(write_params(tmp_path, name="folder", path=str(tmp_path / "f")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "data,match",
    [
        ({"name": "fashon-mnist"}, r"data.name.*did you mean fashion-mnist"),
        ({"valid_pct": 0}, r"data.valid_pct` = 0: must be in \(0.0, 1.0\)"),
        ({"valid_pct": 1}, r"data.valid_pct` = 1"),
        ({"valid_pct": "ten percent"}, r"data.valid_pct` = 'ten percent': expected a number"),
        ({"limit": 1.5}, r"data.limit` = 1.5: expected an integer"),
        ({"channels": 2}, r"data.channels"),
        ({"vaild_pct": 0.1}, r"unknown key `data.vaild_pct` \(did you mean valid_pct\?\)"),
    ],
)
def test_param_errors_name_the_key(data, match):
    with pytest.raises(PipelineError, match=match):
        data_params({"data": data})


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
    # image files without `data.size` are decoded at the default side, and meta.json says which
    assert meta.params["size"] == 64 and meta.image_shape[:2] == [64, 64]


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


@pytest.mark.bad_input
def test_too_little_disk_stops_before_writing_naming_bytes(tmp_path, monkeypatch):
    """The arrays' size is known before decoding: a disk without room for them stops prepare at once, naming the
    bytes needed and free; nothing is written."""
    import shutil

    from pipeline import errors
    from pipeline.data.raw import bytes_needed

    need = bytes_needed({"train": np.zeros((100, 8, 8, 1), np.uint8), "valid": None}, None, "auto")
    assert need == 100 * 64 + 8 * 100 + 2**20
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(PipelineError, match=r"the prepared arrays needs [\d,]+ bytes \([\d.]+ GiB\), 1,000 are free"):
        prepare.run(write_params(tmp_path, limit=100), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.bad_input
def test_a_full_disk_while_writing_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    """ENOSPC in the middle of writing (the disk filled by something else): `error: ... no space left`, exit 1,
    the previous output untouched and no partial files."""
    import errno
    import os

    params = write_params(tmp_path, limit=100)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "data" / "prepared"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("previous run")

    def full(self, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prepare.NpyWriter, "write", full)
    assert prepare.main(["--params", params]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no space left on the device while writing prepared" in err
    assert "Traceback" not in err and (out / "old.txt").read_text() == "previous run"
    assert not list(out.parent.glob(".prepared.tmp-*"))
