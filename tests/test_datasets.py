"""Each reader on small files in the real format, and its errors on bad ones."""

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import digits_file, make_tiny, pixels, write_idx, write_image

from pipeline import prepare
from pipeline.data import array_formats, datasets, downloads, image_folders, images
from pipeline.data.raw import Files
from pipeline.errors import PipelineError
from pipeline.params import data_params

FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------ IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arr = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr, gz=gz)
    np.testing.assert_array_equal(array_formats.read_idx(path), arr)


@pytest.mark.bad_input
def test_truncated_idx_names_file_and_sizes(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 3, 3), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(PipelineError, match=r"x-idx3-ubyte.*4×3×3 = 36 bytes, file has 31"):
        array_formats.read_idx(path)


@pytest.mark.bad_input
def test_truncated_gzip_idx(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((50, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(PipelineError, match="x-idx3-ubyte.gz: cannot read IDX"):
        array_formats.read_idx(path)


@pytest.mark.bad_input
def test_not_idx(tmp_path):
    (tmp_path / "f").write_bytes(b"PNG garbage")
    with pytest.raises(PipelineError, match="not an unsigned-byte IDX"):
        array_formats.read_idx(tmp_path / "f")


def test_fashion_mnist_reader(mnist_dir):
    raw = array_formats.read_mnist_like("fashion-mnist", mnist_dir, download=False)
    assert raw.train_x.shape == (40, 28, 28, 1) and raw.train_x.dtype == np.uint8
    assert raw.test_x.shape == (20, 28, 28, 1)
    assert raw.train_y.dtype == np.int64 and list(raw.train_y[:3]) == [0, 1, 2]
    assert raw.classes[0] == "T-shirt/top" and len(raw.classes) == 10
    assert raw.test_ids == [str(i) for i in range(20)]


@pytest.mark.bad_input
def test_missing_offline_message_names_files_places_and_remedy(tmp_path):
    with pytest.raises(PipelineError) as e:
        array_formats.read_mnist_like("mnist", tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert "nowhere" in msg and "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "download" in msg


@pytest.mark.bad_input
def test_fashion_missing_mentions_debian_package(tmp_path, monkeypatch):
    monkeypatch.setitem(downloads.DEBIAN_PLACES, "fashion-mnist", tmp_path / "deb")
    with pytest.raises(PipelineError, match=r"(?s)p: missing.*apt-get install dataset-fashion-mnist"):
        array_formats.read_mnist_like("fashion-mnist", tmp_path / "p", download=False)


@pytest.mark.bad_input
def test_an_explicit_path_reads_nothing_else(mnist_dir, tmp_path, monkeypatch):
    """data.path is the prepare stage's dependency: files elsewhere (Debian's copy) are named, never read."""
    monkeypatch.setitem(downloads.DEBIAN_PLACES, "fashion-mnist", mnist_dir)
    with pytest.raises(PipelineError, match=rf"(?s)empty: missing.*`make data` copies them.*data.path: {mnist_dir}"):
        array_formats.read_mnist_like("fashion-mnist", tmp_path / "empty", download=False)


def test_fashion_found_in_debian_place_from_python(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(downloads.DEBIAN_PLACES, "fashion-mnist", mnist_dir)
    monkeypatch.chdir(tmp_path)  # no data/raw/fashion-mnist here
    raw = array_formats.read_mnist_like("fashion-mnist", None, download=False)
    assert raw.source["path"] == str(mnist_dir)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (make setup does it)")
def test_real_fashion_mnist():
    raw = array_formats.read_mnist_like("fashion-mnist", FMNIST, download=False)
    assert raw.train_x.shape == (60000, 28, 28, 1) and raw.test_x.shape == (10000, 28, 28, 1)
    assert np.bincount(raw.train_y).tolist() == [6000] * 10
    assert np.bincount(raw.test_y).tolist() == [1000] * 10
    assert 0.25 < raw.train_x.mean() / 255 < 0.32  # Fashion-MNIST's known mean is 0.286


# ------------------------------------------------------------------------------------------ CIFAR
def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def make_cifar10(path: Path, n=6, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tf:

        def add(name, obj):
            blob = _pickle(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))

        for i in (1, 2):
            add(
                f"data_batch_{i}",
                {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [(j + i) % 10 for j in range(n)]},
            )
        add("test_batch", {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))})
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return path


def test_cifar10_tarball(tmp_path):
    make_cifar10(tmp_path / "cifar-10-python.tar.gz")
    raw = array_formats.read_cifar("cifar10", tmp_path, download=False)
    assert raw.train_x.shape == (12, 32, 32, 3) and raw.test_x.shape == (6, 32, 32, 3)
    assert raw.train_y[:3].tolist() == [1, 2, 3] and raw.train_y[6:9].tolist() == [2, 3, 4]
    assert raw.classes[:2] == ["c0", "c1"]


def test_cifar_pixel_layout(tmp_path):
    """CIFAR rows are 1024 red, 1024 green, 1024 blue values, row-major."""
    data = np.zeros((1, 3072), np.uint8)
    data[0, 0], data[0, 1024 + 1], data[0, 2048 + 32] = 10, 20, 30
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tf:
        for name, obj in (
            ("data_batch_1", {b"data": data, b"labels": [0]}),
            ("test_batch", {b"data": data, b"labels": [0]}),
            ("batches.meta", {b"label_names": [b"a"]}),
        ):
            blob = _pickle(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    x = array_formats.read_cifar("cifar10", tmp_path, download=False).train_x
    assert x[0, 0, 0, 0] == 10 and x[0, 0, 1, 1] == 20 and x[0, 1, 0, 2] == 30


@pytest.mark.parametrize("mode,first", [("fine", [5, 6]), ("coarse", [1, 2])])
def test_cifar100_fine_and_coarse(tmp_path, mode, first):
    rng = np.random.default_rng(0)
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tf:
        split = {
            b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
            b"fine_labels": [5, 6],
            b"coarse_labels": [1, 2],
        }
        meta = {
            b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"k{i}".encode() for i in range(20)],
        }
        for name, obj in (("train", split), ("test", split), ("meta", meta)):
            blob = _pickle(obj)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    raw = array_formats.read_cifar("cifar100", tmp_path, download=False, label_mode=mode)
    assert raw.train_y.tolist() == first
    assert len(raw.classes) == (100 if mode == "fine" else 20)


@pytest.mark.bad_input
def test_not_a_tarball(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"this is not a tarball")
    with pytest.raises(PipelineError, match="cifar-10-python.tar.gz: not a readable tarball"):
        array_formats.read_cifar("cifar10", tmp_path, download=False)


@pytest.mark.bad_input
def test_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    blob = pickle.dumps({b"data": Evil(), b"labels": [0]})
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(blob)
        tf.addfile(info, io.BytesIO(blob))
    with pytest.raises(PipelineError, match="refusing to load builtins.print"):
        array_formats.read_cifar("cifar10", tmp_path, download=False)


# ------------------------------------------------------------------------------------------ folder
def make_folder(root: Path, corrupt=True) -> Path:
    modes = ["RGB", "L", "RGBA", "P", "LA"]
    for c in ("cats", "dogs"):
        for i in range(5):
            write_image(root / "train" / c / f"{i}.png", size=(20 + i, 16), mode=modes[i], seed=i)
        write_image(root / "valid" / c / "v.jpg", mode="RGB", seed=9)
    write_image(root / "train" / "cats" / "big.jpg", size=(300, 200), mode="RGB")
    (root / "train" / "cats" / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "train" / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    for i in range(3):
        write_image(root / "test" / f"img{i}.png", seed=20 + i)
    return root


@pytest.mark.bad_input
def test_folder_reader_mixed_modes_and_corrupt_file(tmp_path, capsys):
    raw = image_folders.read_folder(make_folder(tmp_path / "ds"), size=24, on_bad="skip")
    assert raw.classes == ["cats", "dogs"]
    assert isinstance(raw.train_x, Files) and len(raw.train_x) == 12  # listed, not decoded yet
    x, kept, bad = images.decoded(raw.train_x)
    assert x.shape == (11, 24, 24, 3)  # 5 + big.jpg cats, 5 dogs; broken.jpg skipped
    assert raw.train_y[kept].tolist() == [0] * 6 + [1] * 5
    assert pixels(raw.valid_x).shape == (2, 24, 24, 3)
    assert pixels(raw.test_x).shape == (3, 24, 24, 3) and raw.test_y is None
    assert raw.test_ids == ["img0.png", "img1.png", "img2.png"]
    assert len(bad) == 1 and bad[0].endswith("broken.jpg")
    assert raw.ignored_files == 1
    assert "broken.jpg" in capsys.readouterr().err
    arrays, meta = prepare.prepare(raw, 0.25, 0)  # the stage drops it too, and names it
    assert meta.bad_images["count"] == 1 and meta.bad_images["files"][0].endswith("broken.jpg")
    assert len(arrays["train_y"]) + len(arrays["valid_y"]) == 13 and len(arrays["train_x"]) == len(arrays["train_y"])
    assert {"L", "RGBA", "P", "LA"} <= set(meta.source["modes"])


@pytest.mark.bad_input
def test_folder_on_bad_image_fail(tmp_path):
    raw = image_folders.read_folder(make_folder(tmp_path / "ds"), size=24, on_bad="fail")
    with pytest.raises(PipelineError, match="broken.jpg: unreadable image"):
        prepare.prepare(raw, 0.25, 0)


def test_folder_labeled_test(tmp_path):
    root = make_folder(tmp_path / "ds", corrupt=False)
    for p in (root / "test").iterdir():
        p.unlink()
    write_image(root / "test" / "dogs" / "a.png")
    write_image(root / "test" / "cats" / "b.png")
    raw = image_folders.read_folder(root, size=8, on_bad="skip")
    assert raw.test_y.tolist() == [0, 1] and raw.test_ids == ["cats/b.png", "dogs/a.png"]


@pytest.mark.bad_input
def test_folder_empty_class(tmp_path):
    root = make_folder(tmp_path / "ds", corrupt=False)
    (root / "train" / "birds").mkdir()
    with pytest.raises(PipelineError, match="birds: class `birds` has no images"):
        image_folders.read_folder(root, size=8, on_bad="skip")


@pytest.mark.bad_input
def test_folder_empty_test(tmp_path):
    root = make_folder(tmp_path / "ds", corrupt=False)
    for p in (root / "test").iterdir():
        p.unlink()
    with pytest.raises(PipelineError, match="test: test folder has no images"):
        image_folders.read_folder(root, size=8, on_bad="skip")


# ------------------------------------------------------------------------------------------ kaggle-csv
def make_kaggle(root: Path, n=8, sample=True) -> Path:
    labels = ["frog", "truck"]
    lines = ["id,label"]
    for i in range(1, n + 1):
        write_image(root / "train" / f"{i}.png", size=(32, 32), seed=i)
        lines.append(f"{i},{labels[i % 2]}")
    (root / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    for i in range(1, 13):
        write_image(root / "test" / f"{i}.png", size=(32, 32), seed=100 + i)
    if sample:
        order = [3, 1, 12, 2, 4, 5, 6, 7, 8, 9, 10, 11]
        (root / "sampleSubmission.csv").write_text("id,label\n" + "".join(f"{i},cat\n" for i in order))
    return root


def test_kaggle_follows_sample_submission(tmp_path):
    raw = image_folders.read_kaggle_csv(make_kaggle(tmp_path / "k"), size=32, on_bad="skip")
    assert raw.classes == ["frog", "truck"]
    assert raw.train_y.tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert raw.test_ids[:4] == ["3", "1", "12", "2"] and len(raw.test_ids) == 12
    assert raw.submission_header == ["id", "label"]
    assert pixels(raw.test_x).shape == (12, 32, 32, 3)
    # row k of the test array is the image named by id k of the submission
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / "k" / "test" / "3.png").convert("RGB"))
    np.testing.assert_array_equal(pixels(raw.test_x)[0], first)


def test_kaggle_without_sample_sorts_naturally(tmp_path):
    raw = image_folders.read_kaggle_csv(make_kaggle(tmp_path / "k", sample=False), size=32, on_bad="skip")
    assert raw.test_ids[:3] == ["1", "2", "3"] and raw.test_ids[-1] == "12"


@pytest.mark.bad_input
def test_kaggle_labels_name_missing_files(tmp_path):
    root = make_kaggle(tmp_path / "k")
    (root / "train" / "3.png").unlink()
    (root / "train" / "5.png").unlink()
    with pytest.raises(PipelineError, match=r"trainLabels.csv: 2 ids have no image in .*train: 3, 5"):
        image_folders.read_kaggle_csv(root, size=32, on_bad="skip")


@pytest.mark.bad_input
def test_kaggle_sample_submission_names_missing_test_file(tmp_path):
    root = make_kaggle(tmp_path / "k")
    (root / "test" / "12.png").unlink()
    with pytest.raises(PipelineError, match=r"sampleSubmission.csv: 1 ids have no image .*: 12"):
        image_folders.read_kaggle_csv(root, size=32, on_bad="skip")


@pytest.mark.bad_input
def test_kaggle_empty_test(tmp_path):
    root = make_kaggle(tmp_path / "k")
    for p in (root / "test").iterdir():
        p.unlink()
    with pytest.raises(PipelineError, match="test folder has no images"):
        image_folders.read_kaggle_csv(root, size=32, on_bad="skip")


@pytest.mark.bad_input
def test_kaggle_corrupt_test_image_kept_blank(tmp_path):
    root = make_kaggle(tmp_path / "k")
    (root / "test" / "1.png").write_bytes(b"broken")
    raw = image_folders.read_kaggle_csv(root, size=32, on_bad="skip")
    x, _, bad = images.decoded(raw.test_x)
    assert len(raw.test_ids) == 12 and len(x) == 12 and x[1].max() == 0  # id 1 is second in the sample order
    assert bad[0].endswith("1.png")


# ------------------------------------------------------------------------------------------ tiny-imagenet
def test_tiny_imagenet(tmp_path):
    raw = image_folders.read_tiny_imagenet(make_tiny(tmp_path), size=64, on_bad="skip", download=False)
    assert raw.classes == ["n01443537", "n01629819", "n01641577"]
    assert raw.class_names == ["goldfish", "European fire salamander", "n01641577"]
    assert pixels(raw.train_x).shape == (12, 64, 64, 3) and raw.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert pixels(raw.valid_x).shape == (6, 64, 64, 3) and raw.valid_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert raw.test_ids == ["test_0.JPEG", "test_1.JPEG", "test_2.JPEG"] and raw.test_y is None


@pytest.mark.bad_input
def test_tiny_imagenet_bad_annotation(tmp_path):
    root = make_tiny(tmp_path)
    (root / "tiny-imagenet-200" / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\n")
    with pytest.raises(PipelineError, match=r"val_annotations.txt: line 1: .*known wnid"):
        image_folders.read_tiny_imagenet(root, size=64, on_bad="skip", download=False)


def test_digits():
    raw = array_formats.read_digits(seed=0)
    assert raw.train_x.shape == (1437, 8, 8, 1) and raw.test_x.shape == (360, 8, 8, 1)
    assert raw.train_x.max() == 255 and len(raw.classes) == 10


# ------------------------------------------------------------------------------------------ data.classes
@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "tiny-imagenet", "folder", "kaggle-csv", "digits"])
def test_a_class_subset_for_every_reader(name, tmp_path, mnist_dir):
    """`data.classes` (a count or names, codes or display names) keeps those classes' rows, renumbered in the data
    set's order; a labelled test split is filtered too, an unlabelled one kept whole (every id is submitted)."""
    path, wanted, expect = {
        "fashion-mnist": (mnist_dir, 3, ["T-shirt/top", "Trouser", "Pullover"]),
        "cifar10": (lambda: make_cifar10(tmp_path / "cifar-10-python.tar.gz").parent, ["c3", "c1"], ["c1", "c3"]),
        "tiny-imagenet": (lambda: make_tiny(tmp_path), ["n01641577", "goldfish"], ["n01443537", "n01641577"]),
        "folder": (lambda: make_folder(tmp_path / "ds", corrupt=False), ["dogs", "cats"], ["cats", "dogs"]),
        "kaggle-csv": (lambda: make_kaggle(tmp_path / "k"), 2, ["frog", "truck"]),
        "digits": (digits_file(), ["7", "2", "5"], ["2", "5", "7"]),
    }[name]
    path = path() if callable(path) else path
    data = {"name": name, "path": str(path), "download": False, "size": 16}
    full = datasets.read(data_params({"data": data}), 0)
    raw = datasets.read(data_params({"data": {**data, "classes": wanted}}), 0)
    assert raw.classes == expect
    keep = [full.classes.index(c) for c in expect]
    mask = np.isin(full.train_y, keep)
    assert raw.train_y.tolist() == [keep.index(v) for v in full.train_y[mask]]
    np.testing.assert_array_equal(pixels(raw.train_x), pixels(full.train_x)[mask])
    if full.test_y is None:
        assert raw.test_ids == full.test_ids and len(raw.test_x) == len(full.test_x)
    else:
        m = np.isin(full.test_y, keep)
        assert raw.test_y.tolist() == [keep.index(v) for v in full.test_y[m]]
        assert raw.test_ids == [i for i, k in zip(full.test_ids, m) if k]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "wanted,match",
    [
        (11, r"`data.classes` = 11: .* has 10 classes; keep 2 to 10"),
        (["3", "eleven"], r"`data.classes` names 'eleven', not a class of .*; its classes: 0, 1, 2"),
        (["3", "3"], r"name at least 2 different classes"),
        (1, r"`data.classes` = 1: expected null \(every class\), a count ≥ 2"),
    ],
)
def test_a_bad_class_subset_names_the_value(wanted, match):
    with pytest.raises(PipelineError, match=match):
        datasets.read(data_params({"data": {"name": "digits", "path": str(digits_file()), "classes": wanted}}), 0)


def test_digits_with_another_data_sets_path_finds_the_bundled_file(tmp_path, capsys):
    """`dvc exp run -S data.name=digits` on a clone: data.path still names the Fashion-MNIST folder."""
    from pipeline.params import data_params

    (tmp_path / "fashion-mnist").mkdir()
    raw = datasets.read(data_params({"data": {"name": "digits", "path": str(tmp_path / "fashion-mnist")}}), 0)
    assert len(raw.train_y) == 1437
    err = capsys.readouterr().err
    assert f"set `data.path: {array_formats.digits_file()}`" in err
