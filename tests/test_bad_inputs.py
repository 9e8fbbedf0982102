"""Bad input a user brings, one test per case: each ends in a clear error or a correct result, writes no partial
output and leaves nothing stale. docs/results.md "Reliability" lists them: `pytest -m bad_input --collect-only -q`."""

import csv
import io
import json
import os
import pickle
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ENV, ROOT, TINY, make_repo, predict_cli, run, write_idx, write_image
from PIL import Image

from ensembles import weights as W
from pipeline import train
from pipeline.checks import check_section
from pipeline.commands import predict
from pipeline.data import array_formats, image_folders, images
from pipeline.data.images import decode
from pipeline.errors import PipelineError
from pipeline.learn import trained
from pipeline.params import TRAIN_SCHEMA, train_spec

pytestmark = pytest.mark.bad_input


# ------------------------------------------------------------------------------------------------ precision
def test_bf16_precision_is_recorded_and_predict_reproduces_it(project):
    """Forced bf16 runs on any CPU (slowly without AVX512-BF16); pipeline.commands.predict evaluates as the stage did."""
    root, write = project
    train.run("mlp", write({"mlp": {"precision": "bf16"}}, epochs=1), root)
    assert json.loads((root / "models/mlp/spec.json").read_text())["precision"] == "bf16"
    assert json.loads((root / "metrics/mlp.json").read_text())["precision"] == "bf16"
    x = np.load(root / "data/prepared/test_x.npy")
    m = predict.load_model("mlp", root)
    np.testing.assert_allclose(m.predict_arrays(x, bs=128), np.load(root / "preds/mlp/test.npy"), atol=1e-5)
    fp32 = m.predict_arrays(x[:64])
    m.dtype = None  # what predict did before it read the recorded precision
    assert np.abs(m.predict_arrays(x[:64]) - fp32).max() > 1e-5  # bf16 is visibly not fp32: the test can fail


def test_auto_precision_is_fp32_on_any_cpu(project):
    """`precision: auto` must not make a CPU run's results depend on whether the CPU has AVX512-BF16."""
    root, write = project
    train.run("mlp", write({"mlp": {}}, epochs=1), root)
    assert json.loads((root / "models/mlp/spec.json").read_text())["precision"] == "fp32"


# ------------------------------------------------------------------------------------------------ DVC
def fmnist_repo(tmp_path: Path, path: str) -> Path:
    params = {**TINY, "data": {"name": "fashion-mnist", "path": path, "download": False}}
    return make_repo(tmp_path, params)


@pytest.mark.slow  # a real `dvc repro`: `make quick` runs none
@pytest.mark.parametrize("where", ["in the repo", "absolute path"])
def test_a_changed_raw_file_reruns_prepare(tmp_path, where):
    repo = fmnist_repo(tmp_path, "data/raw/fm" if where == "in the repo" else str(tmp_path / "elsewhere" / "fm"))
    raw = repo / "data" / "raw" / "fm" if where == "in the repo" else tmp_path / "elsewhere" / "fm"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", 30), ("t10k", 10)):
        write_idx(raw / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10)
    run("dvc repro prepare", repo)
    assert json.loads(run("dvc status --json prepare", repo)) == {}
    write_idx(raw / "train-labels-idx1-ubyte", (np.arange(30) + 1) % 10)  # relabelled
    status = json.loads(run("dvc status --json prepare", repo))
    assert "prepare" in status, status
    run("dvc repro prepare", repo)
    y = np.concatenate([np.load(repo / f"data/prepared/{s}_y.npy") for s in ("train", "valid")])
    assert sorted(y.tolist()) == sorted(((np.arange(30) + 1) % 10).tolist())


@pytest.mark.slow
def test_a_killed_stage_leaves_nothing_behind(tmp_path):
    """kill -9 of the training process during train@mlp, then `dvc repro`: no staging folder anywhere, and the
    pipeline is up to date."""
    import psutil

    params = {**TINY, "archs": {"mlp": {"epochs": 200}}}
    repo = make_repo(tmp_path, params)
    run("dvc repro prepare", repo)
    p = subprocess.Popen(
        "dvc repro train@mlp", shell=True, cwd=repo, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((repo / "preds").glob(".mlp.tmp-*")):
        time.sleep(0.05)
    assert list((repo / "models").glob(".mlp.tmp-*")), "the stage never started staging"
    # the python process itself, not the `sh -c "python -m pipeline.train mlp"` that some shells keep above it
    stage = [c for c in psutil.Process(p.pid).children(recursive=True) if "pipeline.train" in c.cmdline()]
    assert len(stage) == 1, [c.cmdline() for c in psutil.Process(p.pid).children(recursive=True)]
    os.kill(stage[0].pid, signal.SIGKILL)
    assert p.wait() != 0  # dvc reports the failed stage and releases its locks
    leftovers = list((repo / "preds").glob(".mlp.tmp-*"))
    assert leftovers  # what a killed run leaves
    # meanwhile DVC ignores them: they never enter the hash of preds/, a dependency of the ensemble stage
    run(f"dvc check-ignore {leftovers[0].relative_to(repo)}", repo)
    run("dvc repro train@mlp", repo)
    left = [str(q.relative_to(repo)) for q in repo.rglob("*.tmp-*") if ".dvc" not in q.parts]
    assert left == []
    assert "train@mlp" not in json.loads(run("dvc status --json", repo))


def test_lr_find_checkpoints_outside_the_project(project, monkeypatch):
    """fastai's lr_find saves the weights under learn.path/models/: never the working directory's models/."""
    from fastai.learner import Learner

    root, write = project
    monkeypatch.chdir(root)
    saved = []
    real_save = Learner.save

    def spy(self, file, **kw):
        saved.append(Path(real_save(self, file, **kw)).resolve())
        return saved[-1]

    monkeypatch.setattr(Learner, "save", spy)
    train.run("mlp", write({"mlp": {"lr": "auto", "num_it": 10}}, epochs=1), root)
    assert saved and not any(root.resolve() in s.parents for s in saved), saved
    assert not list((root / "models").glob("tmp*"))


def test_no_stray_lr_find_checkpoints_in_git():
    tracked = subprocess.run(["git", "ls-files", "models"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [f for f in tracked if f.endswith("_tmp.pth")], tracked


# ------------------------------------------------------------------------------------------------ data sets
def two_class_folder(root: Path, test: bool) -> Path:
    """real vs comic, 12 images each, the classes told apart by brightness; test/ only when asked."""
    for k, cls in enumerate(("comic", "real")):
        for i in range(12):
            a = np.full((16, 16, 3), 40 + 150 * k, np.uint8) + np.random.default_rng(i).integers(
                0, 40, (16, 16, 3), dtype=np.uint8
            )
            (root / "train" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(root / "train" / cls / f"{i}.png")
            if test and i < 3:
                (root / "test").mkdir(exist_ok=True)
                Image.fromarray(a).save(root / "test" / f"{cls}{i}.png")
    return root


def faces_repo(tmp_path: Path, test: bool) -> tuple[Path, str]:
    """`dvc repro` of the two-class folder set with stacking; (repo, what it printed)."""
    data = two_class_folder(tmp_path / "faces", test=test)
    params = {
        **TINY,
        "data": {"name": "folder", "path": str(data), "size": 16, "valid_pct": 0.25},
        "ensemble": {"select": "threshold", "threshold": 0.0, "method": "stacking"},
    }
    repo = make_repo(tmp_path, params)
    return repo, run("dvc repro", repo)


@pytest.mark.slow
def test_folder_without_test_split_runs_to_the_end_and_says_so(tmp_path):
    repo, out = faces_repo(tmp_path, test=False)
    assert "no submission: the prepared data has no test split" in out
    assert sorted(p.name for p in (repo / "submissions").iterdir()) == ["NO_TEST_SPLIT.txt"]
    m = json.loads((repo / "ensemble/metrics.json").read_text())
    assert m["submission"] is None and "test" not in m and m["valid"]["accuracy"] > 0.5
    assert (repo / "reports/leaderboard.csv").is_file()
    assert np.load(repo / "preds/mlp/test.npy").shape == (0, 2)


def test_two_class_stacker_gives_probabilities(tmp_path):
    """scikit-learn keeps one logit for two classes; the saved stacker must turn it into two probabilities."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    P = np.stack(
        [np.where(rng.random(200)[:, None] < 0.8, np.eye(2)[y], np.eye(2)[1 - y]) * 0.8 + 0.1 for _ in range(3)]
    )
    model = W.fit_stacker(P, y)
    d = json.loads(json.dumps(W.stacker_to_dict(model)))
    saved = W.stacker_apply(d, P, 2)
    np.testing.assert_allclose(saved.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(saved, W.stacker_proba(model, P, 2), atol=1e-9)
    assert 0.8 < W.accuracy(saved, y)


@pytest.mark.slow
def test_two_class_ensemble_predicts_from_the_saved_stacker(tmp_path):
    repo, _ = faces_repo(tmp_path, test=True)
    ens = predict.load_ensemble(repo)
    assert ens.spec.method == "stacking" and ens.classes == ["comic", "real"]
    x = np.load(repo / "data/prepared/test_x.npy")
    probs = ens.predict_arrays(x)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, np.load(repo / "ensemble/preds/test.npy"), atol=1e-4)
    rows = list(csv.reader((repo / "submissions/ensemble.csv").open()))
    assert rows[0] == ["id", "label"] and {r[1] for r in rows[1:]} <= {"comic", "real"}


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # PIL really reads it as a 16-bit image
    got = decode(tmp_path / "deep.png")[..., 0].astype(int)
    np.testing.assert_allclose(got, np.round(ramp / 257.0), atol=1)
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 250


def exif_rotated(path: Path) -> np.ndarray:
    """A 20×10 (w×h) image whose left half is white, saved with EXIF Orientation 6 (display rotated 90° CW)."""
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, exif=exif)
    return np.rot90(a, k=-1)  # what a viewer shows: 10 wide, 20 tall, white on top


def test_exif_orientation_in_prepare_and_predict_alike(tmp_path):
    upright = exif_rotated(tmp_path / "photo.png")
    got = decode(tmp_path / "photo.png")
    assert got.shape == upright.shape and (np.abs(got.astype(int) - upright).max() <= 1)
    # prepare's reader and predict's to_array go through the same decoding
    folder = tmp_path / "set"
    for cls in ("a", "b"):
        (folder / "train" / cls).mkdir(parents=True)
        exif_rotated(folder / "train" / cls / "0.png")
    raw = image_folders.read_folder(folder, 8, "fail")
    x = images.decoded(raw.train_x)[0]
    np.testing.assert_array_equal(x[0], trained.to_array(tmp_path / "photo.png", 8, 3))
    assert x[0][:4].mean() > x[0][4:].mean() + 100  # white on top: rotated, not as stored


def kaggle(root: Path, labels: str, sample: bytes | None = None) -> Path:
    for i in range(4):
        write_image(root / "train" / f"{i}.png", seed=i)
        write_image(root / "test" / f"t{i}.png", seed=10 + i)
    (root / "trainLabels.csv").write_text(labels)
    if sample is not None:
        (root / "sampleSubmission.csv").write_bytes(sample)
    return root


def test_kaggle_duplicate_id_with_another_label_is_refused(tmp_path):
    root = kaggle(tmp_path, "id,label\n0,cat\n1,dog\n2,cat\n1,cat\n3,dog\n")
    with pytest.raises(PipelineError, match=r"trainLabels.csv: id '1' has label 'dog' on line 3 and 'cat' on line 5"):
        image_folders.read_kaggle_csv(root, 8, "fail")


def test_kaggle_repeated_id_with_the_same_label_counts_once(tmp_path, capsys):
    root = kaggle(tmp_path, "id,label\n0,cat\n1,dog\n2,cat\n1,dog\n3,dog\n")
    raw = image_folders.read_kaggle_csv(root, 8, "fail")
    assert len(raw.train_y) == 4 and "repeated on line 5" in capsys.readouterr().err


def test_kaggle_bom_and_whitespace(tmp_path):
    from ensembles.submission import submission_rows

    sample = "\ufeffid,label\nt0,x\nt1,x\nt2,x\nt3,x\n".encode()
    root = kaggle(tmp_path, "\ufeffid,label\n0,cat \n1, dog\n2,cat\n3,dog\n", sample)
    raw = image_folders.read_kaggle_csv(root, 8, "fail")
    assert raw.classes == ["cat", "dog"] and raw.train_y.tolist() == [0, 1, 0, 1]
    assert raw.submission_header == ["id", "label"]
    rows = submission_rows(np.eye(2)[[0, 1, 0, 1]], raw.test_ids, raw.classes, raw.submission_header)
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    assert buf.getvalue().startswith("id,label\r\nt0,cat")


def test_cifar_batch_with_fewer_labels_than_images(tmp_path):
    def batch(n_img, n_lab):
        return pickle.dumps({b"data": np.zeros((n_img, 3072), np.uint8), b"labels": list(range(n_lab))})

    d = tmp_path / "cifar10"
    d.mkdir()
    with tarfile.open(d / "cifar-10-python.tar.gz", "w:gz") as tf:
        for name, blob in (
            ("data_batch_1", batch(10, 9)),
            ("test_batch", batch(4, 4)),
            ("batches.meta", pickle.dumps({b"label_names": [b"a"] * 10})),
        ):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    with pytest.raises(PipelineError, match=r"cifar-10-python.tar.gz:data_batch_1: 10 images but 9 labels"):
        array_formats.read_cifar("cifar10", d, download=False)


def test_batch_size_larger_than_a_small_data_set_runs_with_a_warning(project, capsys):
    root, write = project
    write_params = write({"mlp": {"train_limit": 55}}, bs=128, epochs=1)
    res = train.run("mlp", write_params, root)
    assert res.metrics.bs == 55 and res.metrics.train_images == 55
    assert "`bs` = 128 is larger than the training set; using bs 55" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ params and files
def test_lr_written_as_1e_minus_3_is_a_number():
    params = yaml.safe_load("train: {lr: 1e-3}\narchs: {mlp: {wd: 1e-2}}\n")
    assert params["train"]["lr"] == "1e-3"  # PyYAML reads it as text: the reason for the fix
    s = train_spec(params, "mlp")
    assert s.lr == 0.001 and s.wd == 0.01
    with pytest.raises(PipelineError, match=r"`test.lr` = 'fast': expected a number, e.g. 0.001"):
        check_section({"lr": "fast"}, TRAIN_SCHEMA, "test")


@pytest.mark.parametrize("key", ["a/b", "resnet@2", "..", "a..b", "", ".hidden", "-x"])
def test_unsafe_archs_keys_are_refused_before_anything_is_written(project, key):
    root, write = project
    with pytest.raises(PipelineError, match=rf"`archs` key {key!r} cannot name a stage"):
        train.run(key, write({key: {"arch": "mlp"}}), root)
    for d in ("models", "preds", "metrics", "dvclive"):
        assert not (root / d).exists() or not any((root / d).rglob("*")), d


def test_truncated_weights_name_the_file_and_the_remedy(project):
    root, write = project
    train.run("mlp", write({"mlp": {}}, epochs=1), root)
    f = root / "models/mlp/model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(PipelineError) as e:
        predict.load_model("mlp", root)
    msg = str(e.value)
    assert str(f) in msg and "damaged" in msg and "dvc checkout" in msg and "dvc repro train@mlp" in msg
    r = predict_cli(str(root / "data"), "--model", "mlp", "--root", str(root))
    assert r.returncode == 1 and "damaged" in r.stderr and "Traceback" not in r.stderr
