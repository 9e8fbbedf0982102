"""Load and check params.yaml sections; every error names the key and the value at fault.

Used by every stage's main(): `load_params()` reads params.yaml, `data_params(p)` returns the checked
`data:` section with its defaults filled in.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


def as_number(v: Any) -> Any:
    """YAML 1.1 (PyYAML) reads `1e-3` as text: a string that is a plain decimal or exponent number is that number."""
    if isinstance(v, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", v):
        return float(v)
    return v


def is_float(lo: float, hi: float, open_: bool = True) -> Callable[[Any], Any]:
    def check(v):
        v = as_number(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("expected a number, e.g. 0.001 or 1.0e-3")
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


def is_classes(v):
    if v is None or isinstance(v, int) and not isinstance(v, bool) and v >= 2:
        return v
    if isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str | int) and not isinstance(c, bool) for c in v):
        return v
    raise ValueError("expected null (every class), a count ≥ 2 (the first N classes) or a list of ≥ 2 class names")


# key: (default, checker, why). `path: null` means data/raw/<name>.
DATA_SCHEMA: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "name": ("fashion-mnist", one_of(*DATASETS)),
    "path": (None, is_str(none_ok=True)),
    "valid_pct": (0.1, is_float(0.0, 1.0)),
    "limit": (None, is_int(lo=2, none_ok=True)),
    "test_limit": (None, is_int(lo=1, none_ok=True)),
    "size": (None, is_int(lo=4, hi=1024, none_ok=True)),
    "channels": ("auto", one_of("auto", 1, 3)),
    "classes": (None, is_classes),  # a subset: the first N classes, or a list of class names
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
        raise PipelineError(f"params.yaml: unknown key `{where}.{k}`{hint}; valid keys: {', '.join(sorted(schema))}")
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


def is_lr(v):
    if v == "auto":
        return v
    return is_float(0.0, 10.0)(v)


def is_pretrained(v):
    if isinstance(v, bool) or (isinstance(v, str) and v):
        return v
    raise ValueError("expected true, false or a weights file path")


def is_phases(v):
    """null, or a non-empty list of [size, epochs] pairs."""
    if v is None:
        return None
    if not isinstance(v, list) or not v:
        raise ValueError("expected a non-empty list of [size, epochs] pairs, e.g. [[32, 4], [48, 2]]")
    out = []
    for i, ph in enumerate(v):
        if (
            not isinstance(ph, (list, tuple))
            or len(ph) != 2
            or any(isinstance(a, bool) or not isinstance(a, int) for a in ph)
        ):
            raise ValueError(f"phase {i} = {ph!r}: expected [size, epochs] with two integers")
        if not 8 <= ph[0] <= 1024 or ph[1] < 1:
            raise ValueError(f"phase {i} = {ph!r}: size must be in [8, 1024] and epochs ≥ 1")
        out.append([ph[0], ph[1]])
    return out


def is_device(v):
    import re

    if v in ("auto", "cpu", "cuda", "mps") or isinstance(v, str) and re.fullmatch(r"cuda:\d+", v):
        return v
    raise ValueError("expected auto, cpu, cuda, cuda:N or mps")


def is_dict(v):
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError("expected a mapping")
    return v


# The `train:` defaults every architecture inherits; keys are fastai's own argument names where fastai has one.
TRAIN_SCHEMA: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "arch": (None, is_str(none_ok=True)),  # the model name, when the archs key is an alias
    "epochs": (3, is_int(lo=1)),
    "size": (None, is_int(lo=8, hi=1024, none_ok=True)),  # image side when `phases` is null (null: prepared size)
    "phases": (None, is_phases),  # progressive resizing: [[size, epochs], ...]; replaces `epochs` and `size`
    "freeze_epochs": (1, is_int(lo=0)),
    "bs": (128, is_int(lo=1)),
    "eval_bs": (128, is_int(lo=1)),  # small batches stay in cache on a CPU (bench/levers.py)
    "lr": ("auto", is_lr),
    "num_it": (50, is_int(lo=10)),  # lr_find iterations
    "lr_mult": (100, is_float(0.0, 1e6)),
    "wd": (0.01, is_float(0.0, 1.0, open_=False)),
    "pct_start": (0.25, is_float(0.0, 1.0)),
    "ps": (0.5, is_float(0.0, 1.0, open_=False)),
    "label_smoothing": (0.1, is_float(0.0, 1.0, open_=False)),
    "flip": (True, is_bool),
    "pad": (2, is_int(lo=0, hi=64)),
    "tta": (True, is_bool),
    "precision": ("auto", one_of("auto", "fp32", "bf16", "fp16")),
    "device": ("auto", is_device),  # auto: cuda when present, else cpu; or cpu, cuda, cuda:N (pin a job to a GPU)
    "deterministic": (False, is_bool),  # GPU: bit-reproducible runs (no cuDNN autotuning, no TF32); CPU: always
    "channels_last": (True, is_bool),
    "pretrained": (False, is_pretrained),
    "train_limit": (None, is_int(lo=2, none_ok=True)),  # a stratified subset of the training split, for budgets
    "model_kwargs": ({}, is_dict),
    "seed": (None, is_int(lo=0, none_ok=True)),  # this model's training seed (init, order, subset); null: `seed`
    "opt": ("adam", one_of("adam", "sgd", "rmsprop", "lamb", "ranger", "qhadam")),  # fastai's optimizers
    "schedule": ("one_cycle", one_of("one_cycle", "flat_cos", "sgdr", "constant")),  # fastai's fit_* functions
    "cam_layer": (None, is_str(none_ok=True)),  # Grad-CAM's layer (a model.named_modules() name); null: last conv
    "folds": (None, is_int(lo=2, none_ok=True)),  # stratified K-fold of the training split: K models, OOF preds
    "refit": (False, is_bool),  # retrain on train + valid with the validated lr/epochs; that model predicts test
    # training seconds: the stage times its first batches of each phase and sets the epochs (and, where needed, a
    # stratified `train_limit`) to fill them; metrics/<key>.json `time_budget` says what it chose
    "time_budget": (None, lambda v: is_budget(v)),
}


def is_budget(v):
    if v is None:
        return None
    v = as_number(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ValueError("expected training seconds (a number > 0) or null")
    return float(v)


@dataclass
class TrainSpec:
    """One model's training recipe: the `train:` defaults overridden by its `archs` entry (and its variant), checked.

    The defaults and checks live in TRAIN_SCHEMA (a test keeps the fields and the schema's keys equal); build one
    with `train_spec(params, key)` or `make_spec(entry)`. Saved as `train` in models/<key>/spec.json.
    """

    arch: str | None  # the model name (the archs key unless `arch:` names it)
    epochs: int
    size: int | None
    phases: list[list[int]] | None  # [[size, epochs], ...]
    freeze_epochs: int
    bs: int
    eval_bs: int
    lr: float | str  # a number, or "auto"
    num_it: int
    lr_mult: float
    wd: float
    pct_start: float
    ps: float
    label_smoothing: float
    flip: bool
    pad: int
    tta: bool
    precision: str
    device: str
    deterministic: bool
    channels_last: bool
    pretrained: bool | str
    train_limit: int | None
    model_kwargs: dict
    seed: int | None
    opt: str
    schedule: str
    cam_layer: str | None
    folds: int | None
    refit: bool
    time_budget: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def make_spec(entry: dict, where: str = "spec") -> TrainSpec:
    """A TrainSpec from `entry` (keys of `train:`), defaults filled in; `where` names it in errors."""
    return TrainSpec(**check_section(entry, TRAIN_SCHEMA, where))


# An archs key names a DVC stage (`train@<key>`) and the folders models/<key>, preds/<key>, dvclive/<key>.
KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def check_key(key: Any) -> str:
    """An archs key that is safe as a stage name and a folder name, or an error naming it."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key) or ".." in key:
        raise PipelineError(
            f"params.yaml: `archs` key {key!r} cannot name a stage and its folders: use letters, digits and _ . + - "
            "(not starting with . or -, no `/`, `@` or `..`), e.g. `resnet34_s1`; the architecture itself goes in "
            "`arch:` (e.g. `arch: torchvision.vgg19_bn`)"
        )
    return key


def arch_names(params: dict) -> list[str]:
    """The keys of `archs`, each checked before anything is written."""
    archs = params.get("archs")
    if not isinstance(archs, dict) or not archs:
        raise PipelineError("params.yaml: `archs` must be a mapping of one or more architecture names")
    return [check_key(k) for k in archs]


def variants(params: dict) -> dict[str, dict]:
    """The `variants:` section: more models of an `archs` entry, each `{of: <entry>, <overrides>}`, checked."""
    section = params.get("variants") or {}
    if not isinstance(section, dict):
        raise PipelineError("params.yaml: `variants` must be a mapping: name -> {of: <archs entry>, ...overrides}")
    archs = arch_names(params)
    for key, v in section.items():
        check_key(key)
        if key in archs:
            raise PipelineError(f"params.yaml: `variants.{key}` has the name of an `archs` entry; names must differ")
        if not isinstance(v, dict) or v.get("of") not in archs:
            of = v.get("of") if isinstance(v, dict) else None
            near = difflib.get_close_matches(str(of), archs, n=3)
            raise PipelineError(
                f"params.yaml: `variants.{key}` needs `of: <an archs entry>` (got {of!r})"
                + (f"; did you mean {', '.join(near)}?" if near else f"; entries: {', '.join(archs)}")
            )
    return section


def model_names(params: dict) -> list[str]:
    """Every model the pipeline trains: the `archs` entries, then the `variants`."""
    return arch_names(params) + list(variants(params))


def group_of(params: dict, key: str) -> str:
    """The `archs` entry a model belongs to: itself, or the entry a variant is `of`."""
    return variants(params).get(key, {}).get("of", key)


def train_spec(params: dict, key: str) -> TrainSpec:
    """`train:` defaults overridden by `archs.<key>` (for a variant: by its entry, then by the variant), checked;
    `arch` is filled with the model name."""
    check_key(key)
    names = model_names(params)
    if key not in names:
        near = difflib.get_close_matches(key, names, n=3)
        raise PipelineError(
            f"params.yaml: no entry `archs.{key}` or `variants.{key}`"
            + (f" (did you mean {', '.join(near)}?)" if near else "")
        )
    base = params.get("train") or {}
    group = group_of(params, key)
    entry = params["archs"][group] or {}
    if not isinstance(base, dict) or not isinstance(entry, dict):
        raise PipelineError(f"params.yaml: `train` and `archs.{group}` must be mappings")
    check_section(base, TRAIN_SCHEMA, "train")  # errors in defaults name `train.<key>`
    check_section({**base, **entry}, TRAIN_SCHEMA, f"archs.{group}")
    where = f"archs.{key}"
    if key != group:
        entry = {**entry, **{k: v for k, v in params["variants"][key].items() if k != "of"}}
        where = f"variants.{key}"
    spec = check_section({**base, **entry}, TRAIN_SCHEMA, where)
    if "epochs" in entry and spec["phases"] is not None:
        raise PipelineError(
            f"params.yaml: `{where}` sets `epochs` but also has `phases`, which fix the epochs; set one of them"
        )
    spec["arch"] = spec["arch"] or group
    return TrainSpec(**spec)


# The `ensemble:` section (stage ensembles/ensemble.py).
STRATEGIES = ("accuracy", "uniform", "greedy", "nnls", "stacking")
ENSEMBLE_SCHEMA = {
    "select": ("margin", one_of("margin", "threshold")),  # which rule picks the members
    "margin": (0.01, is_float(0.0, 1.0, open_=False)),  # margin: valid accuracy ≥ the best's − margin
    "threshold": (0.85, is_float(0.0, 1.0, open_=False)),  # threshold: valid accuracy ≥ threshold ...
    "per_family": (True, is_bool),  # ... plus the best model of every family
    "on_empty": ("warn", one_of("warn", "fail")),  # nothing reaches the threshold: best single model, or fail
    "method": ("accuracy", one_of(*STRATEGIES, "best")),  # which strategy writes submissions/ensemble.csv
    "greedy_iters": (50, is_int(lo=1)),
    "folds": (5, is_int(lo=2)),  # cross-fitting of the fitted strategies' validation scores
    "stack_C": (0.1, is_float(0.0, 1e6)),  # inverse regularisation of the stacking logistic regression
    # stacking's logistic regression on members × classes features costs minutes at 200 classes; beyond this many
    # features it takes the tied form (one weight per member, shared by the classes): seconds
    "stack_max_features": (256, is_int(lo=1)),
    "strategies": ("all", lambda v: is_strategies(v)),  # which strategies are fitted and scored
    "families": ({}, is_dict),  # model name -> family, overriding the name-based guess
    # temperature: one temperature per member fitted on the validation split before blending, one for the blend
    # after (never on test); none: the members' probabilities as trained
    "calibrate": ("none", one_of("none", "temperature")),
    "resamples": (2000, is_int(lo=100)),  # paired bootstrap resamples of every comparison's interval
}


def is_strategies(v):
    if v == "all":
        return list(STRATEGIES)
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ValueError(f"expected `all` or a list of strategies from {', '.join(STRATEGIES)}")
    for k in v:
        one_of(*STRATEGIES)(k)
    return [k for k in STRATEGIES if k in v]  # the registry's order


def ensemble_params(params: dict) -> dict:
    """The checked `ensemble:` section, with defaults filled in."""
    cfg = check_section(params.get("ensemble"), ENSEMBLE_SCHEMA, "ensemble")
    if cfg["method"] != "best" and cfg["method"] not in cfg["strategies"]:
        raise PipelineError(
            f"params.yaml: `ensemble.method` = {cfg['method']!r} is not among `ensemble.strategies` "
            f"({', '.join(cfg['strategies'])}): add it there, or pick one of those"
        )
    return cfg
