"""Shared helpers and fixtures: small files in the real formats written by the tests themselves, tiny learnable
data, hand-made stage outputs, and a temporary git + DVC repository of the project."""

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bench.machine import new_project
from pipeline.artifacts import metrics_file
from pipeline.data.array_formats import digits_file
from pipeline.data.images import decoded
from pipeline.data.raw import Files
from pipeline.records import PreparedMeta

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a model hub
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ CPU unless `gpu`
def hide_cuda(monkeypatch) -> None:
    """This process and those it starts see no CUDA device: torch.cuda's queries say none, CUDA_VISIBLE_DEVICES is
    empty. On a GPU machine `device: auto` would otherwise train the tests on CUDA in bf16, and the tests that
    compare a log line, predictions against a CPU reload or two runs bit for bit would fail there."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def cpu_unless_gpu(request, monkeypatch):
    """Every test not marked `gpu` runs on the CPU, whatever machine runs the suite."""
    if request.node.get_closest_marker("gpu") is None:
        hide_cuda(monkeypatch)


def pixels(x):
    """A reader's images as an array: an array as is, a Files decoded (bad training images dropped)."""
    return decoded(x)[0] if isinstance(x, Files) else x


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


# ------------------------------------------------------------------------------------------------ image data sets
def make_tiny(root: Path) -> Path:
    t = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    (t / "wnids.txt").parent.mkdir(parents=True)
    (t / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (t / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    ann = []
    for k, w in enumerate(wnids):
        for i in range(4):
            write_image(t / "train" / w / "images" / f"{w}_{i}.JPEG", size=(64, 64), seed=k * 10 + i, fmt="JPEG")
        (t / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(2):
            name = f"val_{k * 2 + i}.JPEG"
            write_image(t / "val" / "images" / name, size=(64, 64), seed=50 + k * 2 + i, fmt="JPEG")
            ann.append(f"{name}\t{w}\t0\t0\t10\t10")
    (t / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    for i in range(3):
        write_image(t / "test" / "images" / f"test_{i}.JPEG", size=(64, 64), mode="L", seed=90 + i, fmt="JPEG")
    return root


# ------------------------------------------------------------------------------------------------ training
def synth(n=48, size=16, c=1, k=3, seed=0):
    """Tiny learnable data: the class sets the brightness of one image quadrant."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.integers(0, 60, (n, size, size, c), dtype=np.uint8)
    for i, cls in enumerate(y):
        q = size // 2
        x[i, (cls % 2) * q : (cls % 2 + 1) * q, (cls // 2) * q : (cls // 2 + 1) * q] += 180
    arrays = {
        "train_x": x,
        "train_y": y.astype(np.int64),
        "valid_x": x[:12],
        "valid_y": y[:12].astype(np.int64),
        "test_x": x[:9],
        "test_y": y[:9].astype(np.int64),
    }
    meta = PreparedMeta(
        image_shape=[size, size, c],
        classes=[f"c{i}" for i in range(k)],
        train_mean=[float(x.mean() / 255)] * c,
        train_std=[float(x.std() / 255)] * c,
    )
    return arrays, meta


@pytest.fixture
def project(tmp_path):
    """A prepared digits folder (200 images) and a writer of params.yaml files: (root, write(archs, **train))."""
    from pipeline.data.array_formats import read_digits
    from pipeline.prepare import prepare, write_prepared

    arrays, meta = prepare(read_digits(0), 0.2, 0, limit=200)
    write_prepared(arrays, meta, tmp_path / "data" / "prepared")

    def write(archs_, **train_):
        p = tmp_path / "params.yaml"
        p.write_text(
            yaml.safe_dump(
                {
                    "seed": 0,
                    "train": {"epochs": 2, "bs": 16, "lr": 0.01, "pad": 0, "flip": False, **train_},
                    "archs": archs_,
                }
            )
        )
        return str(p)

    return tmp_path, write


# ------------------------------------------------------------------------------------------------ ensemble
C = 4


def onehot(labels, n=C, conf=0.9):
    """Probabilities putting `conf` on `labels` and the rest spread evenly."""
    p = np.full((len(labels), n), (1 - conf) / (n - 1))
    p[np.arange(len(labels)), labels] = conf
    return p


def write_run(root: Path, models: dict, valid_y, test_y, ids=None, header=("id", "label"), classes=None):
    """A prepared-data folder and preds/metrics per model, as the earlier stages write them."""
    classes = classes or [f"class{i}" for i in range(C)]
    prep = root / "data" / "prepared"
    prep.mkdir(parents=True)
    ids = ids or [str(i) for i in range(len(test_y))]
    np.save(prep / "valid_y.npy", np.asarray(valid_y))
    np.save(prep / "test_y.npy", np.asarray(test_y))
    np.save(prep / "train_y.npy", np.arange(8) % C)  # a whole prepared folder: images the ensemble never opens
    for split, n in (("train", 8), ("valid", len(valid_y)), ("test", len(test_y))):
        np.save(prep / f"{split}_x.npy", np.zeros((n, 8, 8, 1), np.uint8))
    (prep / "test_ids.json").write_text(json.dumps(ids))
    (prep / "meta.json").write_text(
        json.dumps(
            {"classes": classes, "class_names": classes, "test_labeled": True, "submission_header": list(header)}
            | {"image_shape": [8, 8, 1], "train_mean": [0.5], "train_std": [0.25]}
        )
    )
    for name, (arch, source, pv, pt) in models.items():
        (root / "preds" / name).mkdir(parents=True)
        np.save(root / "preds" / name / "valid.npy", pv.astype(np.float32))
        np.save(root / "preds" / name / "test.npy", pt.astype(np.float32))
        (root / "metrics").mkdir(exist_ok=True)
        (metrics_file(root, name)).write_text(json.dumps(metrics_json(arch=arch, source=source)))
    return {"seed": 0, "archs": {n: {} for n in models}}


def metrics_json(**kw) -> dict:
    """A metrics/<key>.json as the train stage writes it (pipeline.records.MemberMetrics), with `kw` set."""
    base = {"valid": {"accuracy": 0.5}, "test": None, "lr": 1e-3, "phases": [[8, 1]], "bs": 8, "train_s": 1.0}
    base |= {"img_per_s": 10.0, "param_count": 1000, "train_images": 10, "arch": "cnn4", "source": "local"}
    return base | kw


def member_metrics(**kw):
    """metrics_json as the record the stages read."""
    from pipeline.records import MemberMetrics

    return MemberMetrics.from_json(metrics_json(**kw), "test metrics", strict=True)


def noisy(y, acc, rng):
    return onehot(np.where(rng.random(len(y)) < acc, y, (y + rng.integers(1, C, len(y))) % C), conf=0.6)


# ------------------------------------------------------------------------------------------------ dvc repositories
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}:{os.environ['PATH']}",
    "HF_HUB_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "",  # the stages a test starts (dvc repro, predict) run on the CPU too
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}
TINY = {
    "seed": 0,
    "metric": "auto",  # dvc.yaml's stages declare it
    "data": {"name": "digits", "path": str(digits_file()), "limit": 300, "test_limit": 100},
    "train": {"epochs": 1, "bs": 32, "lr": 0.01, "tta": False, "flip": False, "pad": 0},  # digits: no mirror images
    "archs": {"logreg": {}, "mlp": {"epochs": 2}},
    "variants": {},  # dvc.yaml's `foreach: ${variants}` needs the section, empty or not
    "ensemble": {"select": "threshold", "threshold": 0.0, "method": "stacking"},
}


def predict_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline.commands.predict ARGS` as a user runs it, from the project root; output captured."""
    cmd = [sys.executable, "-m", "pipeline.commands.predict", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT)


def run(cmd: str, cwd: Path) -> str:
    r = subprocess.run(cmd, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def make_repo(tmp: Path, params: dict) -> Path:
    """A git + DVC repository holding the project's code, dvc.yaml and these params."""
    params = {**params, "variants": params.get("variants") or {}}  # dvc.yaml's `foreach: ${variants}` needs one
    params.setdefault("metric", "auto")  # and its stages declare `metric`
    return new_project(tmp / "repo", params)


# ------------------------------------------------------------------------------------------------ markdown tables
def table_rows(md: str) -> list[list[str]]:
    """Every markdown table row of a text as its stripped cells (separator lines left out)."""
    rows = []
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set(":-") and c for c in cells):
                rows.append(cells)
    return rows


def has_row(md: str, *cells: str) -> bool:
    """Whether some table row of `md` begins with these cells."""
    return any(r[: len(cells)] == [str(c) for c in cells] for r in table_rows(md))


def photo_folder(root, n_per_class=30, classes=("a", "b", "c"), size=(96, 72)):
    """An ImageFolder of JPEG photos (train/<class>/, and an unlabelled test/ of 12), bigger than they are kept."""
    for k, c in enumerate(classes):
        for i in range(n_per_class):
            write_image(root / "train" / c / f"{i}.jpg", size=size, seed=100 * k + i)
    for i in range(12):
        write_image(root / "test" / f"t{i}.jpg", size=size, seed=999 + i)
    return root
