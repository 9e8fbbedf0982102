"""The in-memory data path: batch augmentation's index arithmetic, TensorDL's batching, whole-or-nothing outputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline import prepare, train
from pipeline.artifacts import read_prepared
from pipeline.data import array_formats
from pipeline.data.loaders import TensorDL, TensorPair, augment
from pipeline.data.rows import Rows
from pipeline.io import remove_leftovers, staged
from pipeline.params import make_spec


def crops(padded: torch.Tensor, h: int, w: int, pad: int) -> dict[tuple[int, int], torch.Tensor]:
    return {(dy, dx): padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}


def test_translation_is_a_crop_of_the_reflect_padded_image_per_image():
    torch.manual_seed(0)
    n, c, h, w, pad = 64, 2, 6, 5, 2
    x = torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)  # every pixel unique
    out = augment(x, flip=False, pad=pad)
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    offsets = []
    for i in range(n):
        hits = [o for o, crop in crops(padded[i], h, w, pad).items() if torch.equal(crop, out[i])]
        assert len(hits) == 1, f"image {i} is not one crop of its own padded image"
        offsets.append(hits[0])
    assert len(set(offsets)) > 10  # per-image offsets, not one for the batch
    assert {o[0] for o in offsets} == set(range(2 * pad + 1)) == {o[1] for o in offsets}


def test_flip_mirrors_some_images_and_keeps_the_others():
    torch.manual_seed(1)
    x = torch.rand(200, 1, 4, 4)
    out = augment(x, flip=True, pad=0)
    same = [torch.equal(out[i], x[i]) for i in range(200)]
    mirrored = [torch.equal(out[i], x[i].flip(2)) for i in range(200)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 60 < sum(mirrored) < 140


@pytest.mark.parametrize("drop_last", [True, False])
def test_tensor_dl_batches_every_row_once(drop_last):
    x, y = np.arange(23, dtype=np.uint8).reshape(23, 1, 1, 1), np.arange(23)
    dl = TensorDL(TensorPair(x, y), bs=5, shuffle=True, drop_last=drop_last)
    batches = list(dl)
    sizes = [len(b[1]) for b in batches]
    assert sizes == ([5] * 4 if drop_last else [5] * 4 + [3])
    seen = torch.cat([b[1] for b in batches])
    assert len(set(seen.tolist())) == len(seen)  # no row twice
    assert torch.equal(torch.cat([b[0] for b in batches]).view(-1).long(), seen)  # x and y stay paired
    assert seen.tolist() != sorted(seen.tolist())  # shuffled


def test_staged_swaps_every_output_in_or_none(tmp_path):
    a, b = tmp_path / "a", tmp_path / "m.json"
    a.mkdir()
    (a / "old.txt").write_text("old")
    with staged(a, b) as (ta, tb):
        (ta / "new.txt").write_text("new")
        tb.write_text("{}")
    assert [p.name for p in a.iterdir()] == ["new.txt"] and b.read_text() == "{}"
    with pytest.raises(RuntimeError), staged(a, b) as (ta, tb):
        (ta / "half.txt").write_text("half")
        raise RuntimeError("crash half-way")
    assert [p.name for p in a.iterdir()] == ["new.txt"] and b.read_text() == "{}"
    with pytest.raises(FileNotFoundError, match="m.json: the stage did not write it"), staged(a, b) as (ta, tb):
        (ta / "x.txt").write_text("x")
    assert [p.name for p in a.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.json"]  # no staging folder left


def test_leftovers_of_dead_processes_go_live_ones_stay(tmp_path):
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".out.tmp-{dead.pid}-abc").mkdir()
    (tmp_path / f".out.tmp-{os.getpid()}-def").mkdir()  # a run in progress: this process
    (tmp_path / ".out.tmp-old").mkdir()  # the naming before pids
    (tmp_path / f".other.tmp-{dead.pid}-x").mkdir()  # another output's
    removed = {p.name for p in remove_leftovers(tmp_path / "out")}
    assert removed == {f".out.tmp-{dead.pid}-abc", ".out.tmp-old"}
    assert all([p.exists() for p in (tmp_path / f".out.tmp-{os.getpid()}-def", tmp_path / f".other.tmp-{dead.pid}-x")])


def spec(**kw):
    return make_spec({"epochs": 1, "bs": 16, "lr": 1e-3, "flip": True, "pad": 1, **kw}, "test")


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
    assert torch.equal(hx, rx) and torch.equal(hy, ry) and hx.is_contiguous()
    assert rx.is_contiguous(memory_format=torch.channels_last)  # a view: BatchTfm's float copy is its only copy
    np.testing.assert_array_equal(hx.numpy(), x[[33, 39, 1, 25]].transpose(0, 3, 1, 2))


def test_the_stratified_split_is_scikit_learn_s():
    """splits.stratified_split / shuffled_split pick the rows train_test_split picks (the port's whole claim):
    balanced, imbalanced and two-row classes, many sizes and seeds; ValueError where scikit-learn raises one."""
    from sklearn.model_selection import train_test_split

    from pipeline.data import splits

    rng = np.random.default_rng(0)
    cases = 0
    for trial in range(60):
        k = int(rng.integers(2, 12))
        counts = rng.integers(2, 60, k) if trial % 3 else np.full(k, int(rng.integers(2, 40)))
        y = rng.permutation(np.repeat(np.arange(k), counts))
        n_test = int(rng.integers(1, len(y)))
        seed = int(rng.integers(0, 10_000))
        idx = np.arange(len(y))
        try:
            want = [np.sort(a) for a in train_test_split(idx, test_size=n_test, stratify=y, random_state=seed)]
        except ValueError:
            with pytest.raises(ValueError):
                splits.stratified_split(y, len(y) - n_test, n_test, seed)
            continue
        got = splits.stratified_split(y, len(y) - n_test, n_test, seed)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        tr = train_test_split(idx, train_size=len(y) - n_test, stratify=y, random_state=seed)[0]
        np.testing.assert_array_equal(splits.stratified_subset(y, len(y) - n_test, seed), np.sort(tr))
        plain = [np.sort(a) for a in train_test_split(idx, test_size=n_test, random_state=seed)]
        for g, w in zip(splits.shuffled_split(len(y), n_test, seed), plain):
            np.testing.assert_array_equal(g, w)
        cases += 1
    assert cases > 30  # most draws are stratifiable: the comparison ran
    y = np.repeat(np.arange(10), 6000)  # Fashion-MNIST's training pool: the default run's validation split
    want = np.sort(train_test_split(np.arange(len(y)), test_size=6000, stratify=y, random_state=42)[1])
    np.testing.assert_array_equal(splits.split_valid(y, 0.1, 42)[1], want)


def test_channel_stats_are_the_exact_integer_moments(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (50, 9, 7, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    mean, std = prepare.channel_stats(tmp_path / "x.npy")
    flat = x.reshape(-1, 3).astype(np.int64)
    m = flat.sum(0) / len(flat)
    np.testing.assert_array_equal(np.array(mean), m / 255)
    np.testing.assert_array_equal(np.array(std), np.sqrt(np.maximum((flat * flat).sum(0) / len(flat) - m * m, 0)) / 255)
