"""pipeline.artifacts: the one owner of the run's files. Every path and every read of data/prepared and preds/
goes through it; its loaders name the file and the command that rebuilds it."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import artifacts as A
from pipeline.errors import PipelineError
from pipeline.records import PreparedMeta

ROOT = Path(__file__).resolve().parents[1]
CODE = [  # the project's code (not the copies bench.scale makes under bench/cache)
    p for d in ("pipeline", "ensembles", "bench") for p in sorted((ROOT / d).rglob("*.py")) if "cache" not in p.parts
]
# the names of the run's folders and files, as string constants of code: only pipeline/artifacts.py may spell them
RUN_NAMES = {"prepared", "data/prepared", "preds", "ensemble/preds", "meta.json", "test_ids.json", "oof.npy"}


def code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module's code (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]


def spells_a_run_file(s: str) -> bool:
    parts = [q for q in s.replace("\\", "/").split("/") if q]
    return (
        s in RUN_NAMES
        or "data/prepared" in s
        or s.startswith(("preds/", "ensemble/preds"))
        or (len(parts) > 1 and parts[0] in ("preds", "prepared"))
        or s.endswith(("_x.npy", "_y.npy"))
    )


def test_the_prepared_data_and_the_predictions_are_spelled_in_one_module():
    """data/prepared and preds/ (and ensemble/preds/) are read in exactly one module: no other module of pipeline/,
    ensembles/ or bench/ names their folders or files (error texts name them through the file they are about)."""
    offenders = [
        f"{p.relative_to(ROOT)}:{line}: {s!r}"
        for p in CODE
        if p.name != "artifacts.py"
        for line, s in code_strings(p)
        if spells_a_run_file(s) and not s.startswith(("\n", " ")) and "{" not in s and len(s) < 40
    ]
    assert offenders == []
    assert spells_a_run_file("data/prepared") and spells_a_run_file("preds") and not spells_a_run_file("valid")


def test_no_module_but_the_owner_loads_npy_files():
    """np.load appears in pipeline/artifacts.py alone (array data sets' own raw formats are read by np.loadtxt or
    their parsers, never np.load)."""
    users = [p.relative_to(ROOT).as_posix() for p in CODE if "np.load(" in p.read_text()]
    assert users == ["pipeline/artifacts.py"]


def write_prepared(folder: Path, n_valid=6, n_test=4, labeled=True, classes=3) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("valid", n_valid), ("test", n_test)):
        np.save(folder / f"{split}_x.npy", rng.integers(0, 255, (n, 4, 4, 1), dtype=np.uint8))
        np.save(folder / f"{split}_y.npy", rng.integers(0, classes, n).astype(np.int64))
    (folder / "test_ids.json").write_text(json.dumps([f"t{i}" for i in range(n_test)]))
    meta = PreparedMeta(
        classes=[str(c) for c in range(classes)],
        image_shape=[4, 4, 1],
        train_mean=[0.5],
        train_std=[0.2],
        test_labeled=labeled,
    )
    A.save_prepared_meta(folder / "meta.json", meta)


def test_load_prepared_memory_maps_images_and_hides_unlabelled_test_labels(tmp_path):
    write_prepared(A.prepared_dir(tmp_path), labeled=False)
    prep = A.load_prepared(tmp_path)
    assert isinstance(prep.arrays["train_x"].parts[0][0], np.memmap) and len(prep.arrays["valid_x"]) == 6
    assert prep.labels("test") is None and len(prep.labels("valid")) == 6 and prep.test_ids[0] == "t0"
    mem = A.read_prepared(A.prepared_dir(tmp_path), in_memory=True)
    assert type(mem.arrays["train_x"]) is np.ndarray
    np.testing.assert_array_equal(mem.arrays["test_x"], np.asarray(prep.arrays["test_x"][np.arange(4)]))


def test_load_prepared_names_the_missing_file(tmp_path):
    write_prepared(A.prepared_dir(tmp_path))
    (A.prepared_dir(tmp_path) / "valid_x.npy").unlink()
    with pytest.raises(PipelineError, match=r"valid_x.npy not found: data/prepared is incomplete"):
        A.load_prepared(tmp_path)
    with pytest.raises(PipelineError, match=r"meta.json: missing; run the prepare stage"):
        A.load_prepared(tmp_path / "elsewhere")


def test_load_preds_checks_shape_and_probabilities(tmp_path):
    folder = A.preds_dir(tmp_path, "m")
    p = np.full((5, 3), 1 / 3, np.float32)
    A.save_preds(folder, {"valid": p, "test": p * 2})
    np.testing.assert_array_equal(A.load_preds(tmp_path, "m", "valid", 5, 3), p)
    assert A.load_preds(tmp_path, "m", "valid").dtype == np.float32  # as stored
    with pytest.raises(PipelineError, match=r"preds/m/valid.npy: shape \(5, 3\), but data/prepared has 6 valid rows"):
        A.load_preds(tmp_path, "m", "valid", 6, 3)
    with pytest.raises(PipelineError, match=r"preds/m/test.npy: rows are not probabilities"):
        A.load_preds(tmp_path, "m", "test")
    with pytest.raises(PipelineError, match=r"`nope` is not a trained model of this run \(models: m\)"):
        A.load_preds(tmp_path, "nope", "valid")


def test_every_path_is_under_the_root_it_is_given(tmp_path):
    paths = [
        A.prepared_dir(tmp_path),
        *A.member_outputs(tmp_path, "k"),
        *A.ensemble_outputs(tmp_path),
        A.reports_dir(tmp_path),
    ]
    assert all(p.is_relative_to(tmp_path) for p in paths) and len(set(paths)) == len(paths)
    assert [p.relative_to(tmp_path).as_posix() for p in A.member_outputs(tmp_path, "k")] == [
        "models/k",
        "preds/k",
        "metrics/k.json",
        "dvclive/k",
    ]
