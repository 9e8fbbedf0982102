"""The one owner of the run's files: where each lives, and the one function that reads (or writes) each.

    data/prepared/                 Prepared         prepare writes; every reader goes through `load_prepared`
      {train,valid,test}_{x,y}.npy, test_ids.json, meta.json (PreparedMeta)
    preds/<key>/{valid,test}.npy   probabilities    train writes (`save_preds`); `load_preds` checks shape and sums
      oof.npy, oof_rows.npy                         a `folds` entry's out-of-fold rows (`load_oof`)
    models/<key>/spec.json         MemberSpec       train writes; pipeline.learn.trained (predict, the report) reads
    metrics/<key>.json             MemberMetrics    train writes; the ensemble, the report and bench read
    ensemble/preds/{valid,test}.npy                 the submission's probabilities (`load_submission_preds`)
    ensemble/model.json            EnsembleModel    the ensemble stage writes; pipeline.learn.trained reads
    ensemble/metrics.json          EnsembleMetrics  the ensemble stage writes; the report and bench read
    dvclive/<key>/plots/           training and lr_find curves (DVCLive writes them; the report reads)
    bench/results/equal_compute.json  EqualCompute  bench.equal_compute writes; the report reads (a declared dep)

Paths are relative to a project root (`root`, the working directory by default). A load names the file and the
command that rebuilds it when the file is missing, unreadable or of the wrong shape.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.rows import Rows
from pipeline.errors import PipelineError
from pipeline.io import Record
from pipeline.params import SNAPSHOT_SEP, entry_of
from pipeline.records import (
    EnsembleMetrics,
    EnsembleModel,
    EqualCompute,
    MemberMetrics,
    MemberSpec,
    PreparedMeta,
)

HERE = Path(".")
PREPARED = Path("data/prepared")
EQUAL_COMPUTE = Path("bench/results/equal_compute.json")
SPLITS = ("train", "valid", "test")


# ------------------------------------------------------------------------------------------------ paths
def prepared_dir(root: Path = HERE) -> Path:
    """data/prepared/ of a project."""
    return root / PREPARED


def images_file(folder: Path, split: str) -> Path:
    """<prepared folder>/<split>_x.npy: uint8 N×H×W×C."""
    return folder / f"{split}_x.npy"


def labels_file(folder: Path, split: str) -> Path:
    """<prepared folder>/<split>_y.npy: int64 labels."""
    return folder / f"{split}_y.npy"


def ids_file(folder: Path) -> Path:
    """<prepared folder>/test_ids.json: the test split's ids (file names, or a Kaggle CSV's ids)."""
    return folder / "test_ids.json"


def meta_file(folder: Path) -> Path:
    """<prepared folder>/meta.json."""
    return folder / "meta.json"


# A `snapshots` member, <key>@e<epoch>, lives inside its entry's folders (the train stage's declared outputs):
# models/<key>/snapshots/e<epoch>/, preds/<key>/snapshots/e<epoch>/ with its metrics.json there.
def snapshot_folder(name: str) -> Path:
    """snapshots/e<epoch>: where a snapshot member's files sit inside its entry's model and preds folders."""
    return Path("snapshots") / name.split(SNAPSHOT_SEP, 1)[1]


# A race member, <key>@r<rung> (a run of a rung after the first: pipeline.race), lives in the race stage's output:
# race/<key>@r<rung>/{model,preds,live}/ and metrics.json.
RACE = Path("race")
RUNG_RE = re.compile(r".+@r\d+")


def race_folder(root: Path, name: str) -> Path:
    """race/<key>@r<rung>/: one run of a rung."""
    return root / RACE / name


def _member_folder(root: Path, kind: str, key: str) -> Path:
    """<kind>/<key>/, for a snapshot member <kind>/<its entry>/snapshots/e<epoch>/, for a race member
    race/<key>@r<rung>/model|preds/."""
    if RUNG_RE.fullmatch(key):
        return race_folder(root, key) / {"models": "model", "preds": "preds"}[kind]
    folder = root / kind / entry_of(key)
    return folder / snapshot_folder(key) if SNAPSHOT_SEP in key else folder


def model_dir(root: Path, key: str) -> Path:
    """models/<key>/: weights, spec.json, versions.json (a snapshot member: models/<key>/snapshots/e<epoch>/)."""
    return _member_folder(root, "models", key)


def preds_dir(root: Path, key: str) -> Path:
    """preds/<key>/: one model's probabilities per split (a snapshot member: preds/<key>/snapshots/e<epoch>/)."""
    return _member_folder(root, "preds", key)


def metrics_file(root: Path, key: str) -> Path:
    """metrics/<key>.json (a snapshot member: metrics.json beside its predictions)."""
    if RUNG_RE.fullmatch(key):
        return race_folder(root, key) / "metrics.json"
    if SNAPSHOT_SEP in key:
        return preds_dir(root, key) / "metrics.json"
    return root / "metrics" / f"{key}.json"


def with_snapshots(root: Path, names: list[str]) -> list[str]:
    """The run's models: each trained entry followed by the `snapshots` members its metrics/<key>.json names, then
    the race's runs of rungs after the first (race/race.json)."""
    out = []
    for n in names:
        out.append(n)
        f = metrics_file(root, n)
        if f.is_file():
            out += load_member_metrics(f, n).snapshots or []
    return with_rungs(root, out)


def with_rungs(root: Path, names: list[str]) -> list[str]:
    """`names` followed by the race's members (every run of a rung after the first), as race/race.json lists them."""
    f = root / RACE / "race.json"
    if not f.is_file():
        return names
    try:
        members = json.loads(f.read_text()).get("members") or []
    except (OSError, ValueError) as e:
        raise PipelineError(f"{f}: unreadable ({e}); rerun `dvc repro race`") from e
    return names + [m for m in members if m not in names]


def live_dir(root: Path, key: str) -> Path:
    """dvclive/<key>/: DVCLive's training curves (a race member's: race/<key>@r<rung>/live/)."""
    return race_folder(root, key) / "live" if RUNG_RE.fullmatch(key) else root / "dvclive" / key


def member_outputs(root: Path, key: str) -> tuple[Path, Path, Path, Path]:
    """The train stage's outputs of one entry: models/<key>, preds/<key>, metrics/<key>.json, dvclive/<key>."""
    return model_dir(root, key), preds_dir(root, key), metrics_file(root, key), live_dir(root, key)


def ensemble_metrics_file(root: Path = HERE) -> Path:
    """ensemble/metrics.json."""
    return root / "ensemble" / "metrics.json"


def ensemble_model_file(root: Path = HERE) -> Path:
    """ensemble/model.json."""
    return root / "ensemble" / "model.json"


def ensemble_outputs(root: Path = HERE) -> tuple[Path, Path, Path, Path]:
    """The ensemble stage's outputs: submissions/, ensemble/preds/, ensemble/metrics.json, ensemble/model.json."""
    return root / "submissions", root / "ensemble" / "preds", ensemble_metrics_file(root), ensemble_model_file(root)


def reports_dir(root: Path = HERE) -> Path:
    """reports/: the leaderboard and the figures."""
    return root / "reports"


def rerun(key: str) -> str:
    """The command that rebuilds one model's outputs (an `archs` entry's stage, or a variant's; for a snapshot
    member, its entry's)."""
    key = entry_of(key)
    return f"`dvc repro train@{key}` (`variant@{key}` for a variant)"


# ------------------------------------------------------------------------------------------------ records
def _save(path: Path, record: Record, indent: int) -> None:
    path.write_text(json.dumps(record.to_json(), indent=indent) + "\n")


def _load(path: Path, record: type[Record], missing_hint: str) -> Any:
    if not path.is_file():
        raise PipelineError(f"{path}: missing; {missing_hint}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: cannot be read ({e}); {missing_hint}") from e
    try:
        return record.from_json(data, str(path))
    except PipelineError as e:
        raise PipelineError(f"{e}; {missing_hint}") from e


def save_prepared_meta(path: Path, meta: PreparedMeta) -> None:
    """meta.json, with sorted keys."""
    path.write_text(json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n")


def load_prepared_meta(path: Path) -> PreparedMeta:
    """data/prepared/meta.json (or a prepared folder's)."""
    return _load(path, PreparedMeta, "run the prepare stage first (dvc repro prepare)")


def save_member_spec(path: Path, spec: MemberSpec) -> None:
    """models/<key>/spec.json."""
    _save(path, spec, 2)


def load_member_spec(path: Path, stage_key: str) -> MemberSpec:
    """A spec.json; `stage_key` names the stage to run when it is missing or unreadable."""
    return _load(path, MemberSpec, f"train the model first: {rerun(stage_key)}")


def save_member_metrics(path: Path, metrics: MemberMetrics) -> None:
    """metrics/<key>.json."""
    _save(path, metrics, 2)


def load_member_metrics(path: Path, stage_key: str) -> MemberMetrics:
    """metrics/<key>.json; `stage_key` names the stage that rebuilds it."""
    return _load(path, MemberMetrics, f"run {rerun(stage_key)}")


def load_metrics_of(root: Path, keys: list[str]) -> dict[str, MemberMetrics]:
    """metrics/<key>.json of each key, by key."""
    return {k: load_member_metrics(metrics_file(root, k), k) for k in keys}


def save_ensemble_model(path: Path, model: EnsembleModel) -> None:
    """ensemble/model.json."""
    _save(path, model, 1)


def load_ensemble_model(path: Path) -> EnsembleModel:
    """ensemble/model.json."""
    return _load(path, EnsembleModel, "run `dvc repro ensemble` first")


def save_equal_compute(path: Path, r: EqualCompute) -> None:
    """bench/results/equal_compute.json."""
    _save(path, r, 2)


def load_equal_compute(path: Path) -> EqualCompute:
    """bench/results/equal_compute.json."""
    return _load(path, EqualCompute, "rerun `python -m bench.equal_compute`")


def save_ensemble_metrics(path: Path, metrics: EnsembleMetrics) -> None:
    """ensemble/metrics.json."""
    _save(path, metrics, 2)


def load_ensemble_metrics(path: Path) -> EnsembleMetrics:
    """ensemble/metrics.json."""
    return _load(path, EnsembleMetrics, "run `dvc repro ensemble`")


# ------------------------------------------------------------------------------------------------ prepared data
@dataclass
class Prepared:
    """data/prepared as the stages read it: images as `Rows` over read-only memory maps (or in memory), labels
    loaded (they are small), the test split's ids and meta.json."""

    meta: PreparedMeta
    arrays: dict[str, Any]  # train_x, train_y, valid_x, valid_y, test_x (and test_y where the file exists)
    test_ids: list[str]

    def labels(self, split: str) -> np.ndarray | None:
        """A split's labels; None for an unlabelled test split."""
        if split == "test" and not self.meta.test_labeled:
            return None
        return self.arrays.get(f"{split}_y", np.zeros(0, np.int64))


def read_prepared(folder: Path, in_memory: bool = False, images: bool = True) -> Prepared:
    """A folder in the prepared layout (data/prepared, or prepare's staging folder); missing files name themselves.
    `in_memory`: images loaded as arrays instead of memory-mapped `Rows`; `images=False`: labels, ids and meta only
    (the images are not opened, and only the validation labels are required)."""
    meta = load_prepared_meta(meta_file(folder))
    arrays: dict[str, Any] = {}
    try:
        for split in SPLITS:
            for k in ("x", "y") if images else ("y",):
                p = images_file(folder, split) if k == "x" else labels_file(folder, split)
                if p.is_file():
                    if k == "y" or in_memory:
                        arrays[f"{split}_{k}"] = np.load(p, allow_pickle=False)
                    else:
                        arrays[f"{split}_{k}"] = Rows.of(np.load(p, allow_pickle=False, mmap_mode="r"))
                elif split == "valid" or (images and not (split == "test" and k == "y")):
                    raise PipelineError(f"{p} not found: data/prepared is incomplete; rerun the prepare stage")
        ids = ids_file(folder)
        test_ids = json.loads(ids.read_text()) if ids.is_file() else []
    except (OSError, ValueError) as e:
        raise PipelineError(f"{folder}: cannot read the prepared data ({e}); run `dvc repro prepare`") from e
    return Prepared(meta, arrays, test_ids)


def load_prepared(root: Path = HERE) -> Prepared:
    """The project's data/prepared, memory-mapped."""
    return read_prepared(prepared_dir(root))


def load_labels(root: Path = HERE) -> Prepared:
    """The project's data/prepared without its images: labels, test ids, meta."""
    return read_prepared(prepared_dir(root), images=False)


# ------------------------------------------------------------------------------------------------ predictions
def save_preds(folder: Path, preds: dict[str, np.ndarray]) -> None:
    """<folder>/<split>.npy of each split's probabilities (and a `folds` entry's oof/oof_rows), as given."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, p in preds.items():
        np.save(folder / f"{split}.npy", p, allow_pickle=False)


def _checked(f: Path, hint: str, rows: int | None, n_classes: int | None) -> np.ndarray:
    """Probabilities from one .npy: present, of (rows, n_classes) where given, each row summing to 1."""
    if not f.is_file():
        raise PipelineError(f"{f}: missing; {hint}")
    a = np.load(f, allow_pickle=False)
    if rows is not None and a.shape != (rows, n_classes):
        raise PipelineError(
            f"{f}: shape {a.shape}, but data/prepared has {rows} {f.stem} rows and {n_classes} classes: "
            f"trained on other data (a stale stage); {hint}"
        )
    if not np.isfinite(a).all() or (a < 0).any() or not np.allclose(a.sum(1), 1.0, atol=1e-3):
        raise PipelineError(f"{f}: rows are not probabilities (negative, non-finite, or not summing to 1)")
    return a


def load_preds(root: Path, key: str, split: str, rows: int | None = None, n_classes: int | None = None) -> np.ndarray:
    """preds/<key>/<split>.npy, as stored (float32), checked against `rows` × `n_classes` where given."""
    hint = f"run {rerun(key)}"
    if not preds_dir(root, key).is_dir():
        known = sorted(p.name for p in (root / "preds").iterdir()) if (root / "preds").is_dir() else []
        hint = f"`{key}` is not a trained model of this run (models: {', '.join(known) or 'none'}); {hint}"
    return _checked(preds_dir(root, key) / f"{split}.npy", hint, rows, n_classes)


def read_probs(folder: Path, split: str) -> np.ndarray:
    """<folder>/<split>.npy as `save_preds` wrote it (a bench's cache of a member), checked to be probabilities."""
    return _checked(folder / f"{split}.npy", "delete the folder to rebuild it", None, None)


def load_submission_preds(root: Path, split: str) -> np.ndarray:
    """ensemble/preds/<split>.npy: the submission's probabilities."""
    return _checked(ensemble_outputs(root)[1] / f"{split}.npy", "run `dvc repro ensemble`", None, None)


def has_oof(root: Path, key: str) -> bool:
    """Whether preds/<key>/ holds out-of-fold predictions (a `folds` entry)."""
    return (preds_dir(root, key) / "oof.npy").is_file()


def load_oof(root: Path, key: str, n_train: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A `folds` entry's out-of-fold probabilities and the training rows they belong to, checked."""
    folder = preds_dir(root, key)
    try:
        rows = np.load(folder / "oof_rows.npy", allow_pickle=False)
        p = np.load(folder / "oof.npy", allow_pickle=False).astype(np.float64)
    except (OSError, ValueError) as e:
        raise PipelineError(f"{folder}: cannot read oof.npy / oof_rows.npy ({e}); rerun its train stage") from e
    if p.shape != (len(rows), n_classes) or len(rows) and (rows.min() < 0 or rows.max() >= n_train):
        raise PipelineError(
            f"{folder}/oof.npy: shape {p.shape} for {len(rows)} rows of a {n_train}-row training split with "
            f"{n_classes} classes: trained on other data (a stale stage); rerun its train stage"
        )
    return rows, p


def read_live_curve(root: Path, key: str) -> list:
    """dvclive/<key>/plots/custom/lr_find.json (empty where the model used a fixed lr)."""
    f = live_dir(root, key) / "plots" / "custom" / "lr_find.json"
    if not f.is_file():
        return []
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise PipelineError(f"{f}: cannot read ({e}); run {rerun(key)}") from e


def read_live_series(root: Path, key: str, name: str) -> tuple[list[float], list[float]]:
    """One DVCLive series of a model, (steps, values), from dvclive/<key>/plots/metrics/<name>.tsv (`train/loss`,
    `eval/loss`, `accuracy`); empty where it was not logged."""
    path = live_dir(root, key) / "plots" / "metrics" / f"{name}.tsv"
    if not path.is_file():
        return [], []
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    col = [k for k in rows[0] if k != "step"][0] if rows else None
    return [float(r["step"]) for r in rows], [float(r[col]) for r in rows]
