"""Load and check params.yaml sections; every error names the key and the value at fault.

Used by every stage's main(): `load_params()` reads params.yaml, `data_params(p)` returns the checked
`data:` section with its defaults filled in.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.errors import PipelineError

PARAMS_FILE = Path("params.yaml")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "tiny-imagenet", "folder", "kaggle-csv", "digits")


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    """Read a params file; a missing file or a YAML error names the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read params file ({e.strerror})") from e
    try:
        params = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(params, dict):
        raise PipelineError(f"{path}: expected a mapping of sections at the top level, got {type(params).__name__}")
    return params


# --- small checkers: each returns the (possibly converted) value or raises ValueError with the reason ---
def is_int(lo: int | None = None, hi: int | None = None, none_ok: bool = False) -> Callable[[Any], Any]:
    def check(v):
        if v is None and none_ok:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer{' or null' if none_ok else ''}")
        if lo is not None and v < lo or hi is not None and v > hi:
            raise ValueError(f"must be in [{lo}, {hi if hi is not None else '∞'}]")
        return v

    return check


def is_float(lo: float, hi: float, open_: bool = True) -> Callable[[Any], Any]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("expected a number")
        ok = lo < v < hi if open_ else lo <= v <= hi
        if not ok:
            raise ValueError(f"must be in {'(' if open_ else '['}{lo}, {hi}{')' if open_ else ']'}")
        return float(v)

    return check


def one_of(*choices: Any) -> Callable[[Any], Any]:
    def check(v):
        if v not in choices:
            near = difflib.get_close_matches(str(v), [str(c) for c in choices], n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ValueError(f"must be one of {', '.join(map(str, choices))}{hint}")
        return v

    return check


def is_str(none_ok: bool = False) -> Callable[[Any], Any]:
    def check(v):
        if v is None and none_ok:
            return None
        if not isinstance(v, str) or not v:
            raise ValueError(f"expected a non-empty string{' or null' if none_ok else ''}")
        return v

    return check


def is_bool(v):
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


# key: (default, checker, why). `path: null` means data/raw/<name>.
DATA_SCHEMA: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "name": ("fashion-mnist", one_of(*DATASETS)),
    "path": (None, is_str(none_ok=True)),
    "valid_pct": (0.1, is_float(0.0, 1.0)),
    "limit": (None, is_int(lo=2, none_ok=True)),
    "test_limit": (None, is_int(lo=1, none_ok=True)),
    "size": (None, is_int(lo=4, hi=1024, none_ok=True)),
    "channels": ("auto", one_of("auto", 1, 3)),
    "label_mode": ("fine", one_of("fine", "coarse")),
    "on_bad_image": ("skip", one_of("skip", "fail")),
    "download": (True, is_bool),
    "train_dir": ("train", is_str()),
    "valid_dir": ("valid", is_str()),
    "test_dir": ("test", is_str()),
    "labels_csv": ("trainLabels.csv", is_str()),
    "sample_submission": ("sampleSubmission.csv", is_str(none_ok=True)),
}


def check_section(section: dict | None, schema: dict, where: str) -> dict:
    """Fill defaults and check every key of one params section; unknown keys are errors with suggestions."""
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise PipelineError(f"params.yaml: `{where}` must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(schema))
    if unknown:
        k = unknown[0]
        near = difflib.get_close_matches(str(k), list(schema), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise PipelineError(
            f"params.yaml: unknown key `{where}.{k}`{hint}; valid keys: {', '.join(sorted(schema))}"
        )
    out = {}
    for key, (default, check) in schema.items():
        value = section.get(key, default)
        try:
            out[key] = check(value)
        except ValueError as e:
            raise PipelineError(f"params.yaml: `{where}.{key}` = {value!r}: {e}") from None
    return out


def data_params(params: dict) -> dict:
    """The checked `data:` section, with defaults filled in."""
    return check_section(params.get("data"), DATA_SCHEMA, "data")


def seed_param(params: dict) -> int:
    """The top-level `seed`."""
    seed = params.get("seed", 0)
    try:
        return is_int(lo=0)(seed)
    except ValueError as e:
        raise PipelineError(f"params.yaml: `seed` = {seed!r}: {e}") from None
