"""Readers of the array formats (IDX: MNIST and Fashion-MNIST; CIFAR's pickles; scikit-learn's digits): uint8
N×H×W×C arrays and labels."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from pipeline.data.downloads import DEBIAN_PLACES, find_variant, locate
from pipeline.data.raw import RawData, natural_key
from pipeline.errors import PipelineError, warn

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


IDX_FILES = {  # split -> (images, labels), without the optional .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------------------------- IDX (MNIST)
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array; a truncated or foreign file names itself."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        raise PipelineError(f"{path}: cannot read IDX file ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise PipelineError(f"{path}: not an unsigned-byte IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise PipelineError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:head])
    expected = int(np.prod(dims))
    if len(data) - head != expected:
        raise PipelineError(
            f"{path}: truncated or padded IDX file: header says {'×'.join(map(str, dims))} = {expected} bytes, "
            f"file has {len(data) - head}"
        )
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims)


def read_mnist_like(name: str, path: Path | None, download: bool) -> RawData:
    """fashion-mnist and mnist: the four official IDX files, in `path` (the prepare stage's dependency: nothing
    else is read) or, from Python with path None, in data/raw/<name> or Debian's folder."""
    dest = path or Path("data/raw") / name
    places = [dest] + ([DEBIAN_PLACES[name]] if name in DEBIAN_PLACES and path is None else [])
    files = [f for pair in IDX_FILES.values() for f in pair]
    root = locate(name, files, places, download, dest)
    arrays = {}
    for split, (img, lab) in IDX_FILES.items():
        x, y = read_idx(find_variant(root / img)), read_idx(find_variant(root / lab))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise PipelineError(f"{root / img}: {len(x)} images of shape {x.shape[1:]} but {len(y)} labels")
        if y.max() >= 10:
            raise PipelineError(f"{root / lab}: label {int(y.max())} is outside 0..9")
        arrays[split] = (x[..., None].copy(), y.astype(np.int64))
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return RawData(
        classes,
        *arrays["train"],
        *arrays["test"],
        test_ids=[str(i) for i in range(len(arrays["test"][1]))],
        source={"name": name, "path": str(root)},
    )


# --------------------------------------------------------------------------------------------- CIFAR
class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles: allow only the globals numpy arrays need, never arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        """Only numpy's array reconstruction and builtins: nothing else a pickle names is loaded."""
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def unpickle(blob: bytes, where: str) -> dict:
    """A CIFAR batch's dict, through the restricted unpickler; errors name the file."""
    try:
        d = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # any exception: any failure here means "not a CIFAR batch"
        raise PipelineError(f"{where}: not a CIFAR batch ({e})") from e
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def read_cifar(name: str, path: Path | None, download: bool, label_mode: str = "fine") -> RawData:
    """cifar10 / cifar100: the official python-version tarball (read in place, not extracted)."""
    dest = path or Path("data/raw") / name
    tar_name = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
    root = locate(name, [tar_name], [dest], download, dest)
    tar_path = root / tar_name
    try:
        with tarfile.open(tar_path) as tf:
            members = {Path(m.name).name: m for m in tf.getmembers() if m.isfile()}
            batches = {
                k: unpickle(tf.extractfile(m).read(), f"{tar_path}:{m.name}")
                for k, m in members.items()
                if k.startswith(("data_batch", "test_batch", "batches.meta", "train", "test", "meta"))
            }
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
        raise PipelineError(f"{tar_path}: not a readable tarball ({e})") from e

    def need(key):
        if key not in batches:
            raise PipelineError(f"{tar_path}: no member named {key} (has: {', '.join(sorted(batches)) or 'none'})")
        return batches[key]

    def xy(b, label_key, member):
        where = f"{tar_path}:{member}"
        if "data" not in b or label_key not in b:
            raise PipelineError(f"{where}: no `data` or `{label_key}` entry (has: {', '.join(map(str, b))})")
        data, labels = np.asarray(b["data"], np.uint8), np.asarray(b[label_key], np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise PipelineError(f"{where}: `data` has shape {data.shape}, expected rows of 3072 bytes (3×32×32)")
        if len(data) != len(labels):
            raise PipelineError(f"{where}: {len(data)} images but {len(labels)} labels in `{label_key}`")
        x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x), labels

    if name == "cifar10":
        names = sorted((k for k in batches if k.startswith("data_batch")), key=natural_key)
        if not names:
            need("data_batch_1")
        parts = [xy(batches[k], "labels", k) for k in names]
        train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        test = xy(need("test_batch"), "labels", "test_batch")
        classes = [c.decode() if isinstance(c, bytes) else c for c in need("batches.meta")["label_names"]]
    else:
        key = f"{label_mode}_labels"
        train, test = xy(need("train"), key, "train"), xy(need("test"), key, "test")
        classes = [c.decode() if isinstance(c, bytes) else c for c in need("meta")[f"{label_mode}_label_names"]]
    return RawData(
        classes,
        *train,
        *test,
        test_ids=[str(i) for i in range(len(test[1]))],
        source={"name": name, "path": str(tar_path), "label_mode": label_mode if name == "cifar100" else None},
    )


# --------------------------------------------------------------------------------------------- digits
def digits_file() -> Path:
    """scikit-learn's bundled digits.csv.gz: 64 pixel values (0-16) then the label, one image per row."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"


def read_digits(seed: int, path: Path | None = None) -> RawData:
    """scikit-learn's 8×8 digits (offline), from `path` or the bundled digits.csv.gz (a folder holding it is
    fine); a seeded stratified 20 % becomes the test split."""
    from sklearn.model_selection import train_test_split

    f = path or digits_file()
    f = f / "digits.csv.gz" if f.is_dir() else f
    if path is not None and not f.exists() and digits_file().is_file():
        # e.g. `dvc exp run -S data.name=digits` with data.path still naming another data set's folder
        warn(
            f"{f} does not exist: reading scikit-learn's bundled copy instead; set `data.path: {digits_file()}` "
            "(or null) so that DVC tracks the file the stage reads"
        )
        f = digits_file()
    try:
        d = np.loadtxt(f, delimiter=",", ndmin=2)
    except (OSError, ValueError, EOFError) as e:
        raise PipelineError(f"{f}: cannot read digits CSV (64 pixel values then the label per row): {e}") from e
    if d.shape[1] != 65 or not len(d) or d[:, :64].min() < 0 or d[:, :64].max() > 16:
        raise PipelineError(f"{f}: expected rows of 64 pixel values in 0..16 then the label, got shape {d.shape}")
    y = d[:, 64].astype(np.int64)
    x = np.round(d[:, :64].reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)[..., None]
    idx_train, idx_test = train_test_split(np.arange(len(x)), test_size=0.2, stratify=y, random_state=seed)
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    classes = [str(c) for c in range(10)]
    return RawData(
        classes,
        x[idx_train],
        y[idx_train],
        x[idx_test],
        y[idx_test],
        test_ids=[str(i) for i in idx_test],
        source={"name": "digits", "path": str(f)},
    )
