"""Load and check params.yaml sections; every error names the key and the value at fault.

Used by every stage's main(): `load_params()` reads params.yaml, `data_params(p)` returns the checked
`data:` section with its defaults filled in.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.checks import (
    as_number,
    check_section,
    is_bool,
    is_dict,
    is_float,
    is_int,
    is_str,
    one_of,
    param,
    schema_of,
)
from pipeline.errors import PipelineError, warn

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
    unknown = [k for k in params if k not in TOP_LEVEL]
    if unknown:  # a misspelt section, or one from a newer version, would otherwise be ignored without a word
        hints = []
        for k in unknown:
            near = difflib.get_close_matches(str(k), TOP_LEVEL, n=1, cutoff=0.5)
            hints.append(f"`{k}`" + (f" (did you mean `{near[0]}`?)" if near else ""))
        raise PipelineError(
            f"{path}: unknown top-level key {', '.join(hints)}; the keys are {', '.join(TOP_LEVEL)} (docs/reference.md)"
        )
    return params


# params.yaml's top-level keys: two values and the sections (docs/reference.md)
TOP_LEVEL = ("seed", "metric", "budget", "race", "data", "train", "archs", "variants", "ensemble")


def is_classes(v):
    """A check for `data.classes`: null, a count of at least 2, or a list of names."""
    if v is None or isinstance(v, int) and not isinstance(v, bool) and v >= 2:
        return v
    if isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str | int) and not isinstance(c, bool) for c in v):
        return v
    raise ValueError("expected null (every class), a count ≥ 2 (the first N classes) or a list of ≥ 2 class names")


@dataclass
class DataParams:
    """The `data:` section (stage pipeline/prepare.py)."""

    name: str = param("fashion-mnist", one_of(*DATASETS), "which reader: an array data set or an image layout")
    path: str | None = param(None, is_str(none_ok=True), "the raw files (the prepare stage's dependency)")
    valid_pct: float = param(0.1, is_float(0.0, 1.0), "stratified validation split where the set has none")
    limit: int | None = param(None, is_int(lo=2, none_ok=True), "a stratified subset of the training pool")
    test_limit: int | None = param(None, is_int(lo=1, none_ok=True), "a stratified subset of the test split")
    size: int | None = param(None, is_int(lo=4, hi=1024, none_ok=True), "image side; null: arrays' own, files 64")
    channels: str | int = param("auto", one_of("auto", 1, 3), "auto: 1 when every image is gray, else 3")
    classes: int | list | None = param(None, is_classes, "a subset: the first N classes, or a list of names")
    label_mode: str = param("fine", one_of("fine", "coarse"), "CIFAR-100's 100 fine or 20 coarse labels")
    on_bad_image: str = param("skip", one_of("skip", "fail"), "unreadable images: report and go on, or stop")
    download: bool = param(True, is_bool, "fetch the official files when absent and online")
    train_dir: str = param("train", is_str(), "folder layouts: the training images' folder")
    valid_dir: str = param("valid", is_str(), "... the validation images' folder, if any")
    test_dir: str = param("test", is_str(), "... the test images' folder, if any")
    labels_csv: str = param("trainLabels.csv", is_str(), "kaggle-csv: the labels file")
    sample_submission: str | None = param("sampleSubmission.csv", is_str(none_ok=True), "kaggle-csv: ids, header")


DATA_SCHEMA = schema_of(DataParams)


def data_params(params: dict) -> DataParams:
    """The checked `data:` section, with defaults filled in."""
    return DataParams(**check_section(params.get("data"), DATA_SCHEMA, "data"))


def seed_param(params: dict) -> int:
    """The top-level `seed`."""
    seed = params.get("seed", 0)
    try:
        return is_int(lo=0)(seed)
    except ValueError as e:
        raise PipelineError(f"params.yaml: `seed` = {seed!r}: {e}") from None


def member_seed(params: dict, spec: TrainSpec) -> int:
    """The seed one model trains with: its entry's own `seed`, else the top-level one."""
    return seed_param(params) if spec.seed is None else spec.seed


def metric_param(params: dict) -> str:
    """The top-level `metric`: the score a run is judged by (pipeline.inspect.scores.resolve_metric resolves `auto`)."""
    v = params.get("metric", "auto")
    try:
        from pipeline.inspect.scores import METRICS

        return one_of("auto", *METRICS)(v)
    except ValueError as e:
        raise PipelineError(f"params.yaml: `metric` = {v!r}: {e}") from None


def is_lr(v):
    """A check for `lr`: auto or a positive number."""
    if v == "auto":
        return v
    return is_float(0.0, 10.0)(v)


def is_start(v):
    """A check for `average_start`: a share of the steps in [0, 1); at 1.0 SWA would never average."""
    v = is_float(0.0, 1.0, open_=False)(v)
    if v >= 1.0:
        raise ValueError("must be below 1.0: SWA averages the steps after this share of them, and there are none")
    return v


def is_pretrained(v):
    """A check for `pretrained`: true, false or a weights file path."""
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


def is_eval_bs(v):
    """auto (by device: pipeline.params.eval_batch), or a batch size ≥ 1."""
    return v if v == "auto" else is_int(lo=1)(v)


EVAL_BS = {"cpu": 128, "cuda": 1024}  # CPU: bench/results/levers.md, eval batch size rows (cache)


def eval_batch(spec: TrainSpec, device_type: str) -> TrainSpec:
    """`eval_bs: auto` made a number for the device: 128 on a CPU, 1024 on a GPU (small networks are launch-bound
    there at 128)."""
    return spec if spec.eval_bs != "auto" else replace(spec, eval_bs=auto_eval_bs(device_type))


def auto_eval_bs(device_type: str) -> int:
    """`eval_bs: auto` on a device type (a CPU's for any other than CUDA)."""
    return EVAL_BS.get(device_type, EVAL_BS["cpu"])


def is_device(v):
    """A check for `device`: auto, cpu, cuda, cuda:N or mps."""
    import re

    if v in ("auto", "cpu", "cuda", "mps") or isinstance(v, str) and re.fullmatch(r"cuda:\d+", v):
        return v
    raise ValueError("expected auto, cpu, cuda, cuda:N or mps")


def is_budget(v):
    """A check for `time_budget`: null or positive seconds."""
    if v is None:
        return None
    v = as_number(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ValueError("expected training seconds (a number > 0) or null")
    return float(v)


@dataclass
class TrainSpec:
    """One model's training recipe: the `train:` defaults overridden by its `archs` entry (and its variant), checked.
    Each field is declared once, with its default, check and why; keys are fastai's own argument names where fastai
    has one. Build one with `train_spec(params, key)` or `make_spec(entry)`. Saved as `train` in
    models/<key>/spec.json."""

    arch: str | None = param(None, is_str(none_ok=True), "the model name, when the archs key is an alias")
    epochs: int = param(3, is_int(lo=1), "one phase at `size` when `phases` is null")
    size: int | None = param(None, is_int(lo=8, hi=1024, none_ok=True), "image side; null: the prepared size")
    phases: list[list[int]] | None = param(None, is_phases, "progressive resizing: [[size, epochs], ...]")
    freeze_epochs: int = param(1, is_int(lo=0), "pretrained nets: epochs with the body frozen (fine_tune)")
    bs: int = param(128, is_int(lo=1), "training batch size (per process under torchrun)")
    eval_bs: int | str = param("auto", is_eval_bs, "auto: 128 on a CPU (cache-sized), 1024 on a GPU")
    lr: float | str = param("auto", is_lr, "auto: lr_find's valley; or a number")
    num_it: int = param(50, is_int(lo=10), "lr_find iterations")
    lr_mult: float = param(100, is_float(0.0, 1e6), "discriminative lr: the body's first group gets lr/lr_mult")
    wd: float = param(0.01, is_float(0.0, 1.0, open_=False), "weight decay")
    pct_start: float = param(0.25, is_float(0.0, 1.0), "one-cycle: share of the steps warming up")
    ps: float = param(0.5, is_float(0.0, 1.0, open_=False), "dropout in fastai's head of ImageNet networks")
    label_smoothing: float = param(0.1, is_float(0.0, 1.0, open_=False), "of the cross-entropy")
    # imbalanced classes: `balanced` draws each epoch's rows ∝ 1 / their class's size (with replacement); auto:
    # balanced where the training classes are imbalanced (pipeline.inspect.scores.imbalanced) and `loss_weights` does
    # not already correct them, else shuffle (resolve_remedies)
    sampler: str = param("auto", one_of("auto", "shuffle", "balanced"), "how an epoch draws its training rows")
    loss_weights: str = param("none", one_of("none", "balanced"), "balanced: class weights n / (classes × images)")
    flip: bool = param(True, is_bool, "random horizontal flips while training")
    pad: int = param(2, is_int(lo=0, hi=64), "random translations of up to `pad` pixels while training")
    tta: bool = param(True, is_bool, "average with the mirrored image at evaluation (where flip is on)")
    # native: bf16 where the CPU computes it in hardware (AMX-BF16, AVX512-BF16), else fp32; on a GPU as auto
    precision: str = param(
        "auto", one_of("auto", "native", "fp32", "bf16", "fp16"), "auto: fp32 on a CPU, bf16/fp16 on CUDA"
    )
    device: str = param("auto", is_device, "auto: cuda when present, else cpu; cuda:N pins a GPU; mps")
    deterministic: bool = param(False, is_bool, "GPU: bit-reproducible (no cuDNN autotuning, no TF32); CPU: always")
    channels_last: bool = param(True, is_bool, "NHWC memory format: faster convolutions on CPUs and GPUs")
    pretrained: bool | str = param(False, is_pretrained, "true: timm/torchvision download; or a weights file")
    train_limit: int | None = param(None, is_int(lo=2, none_ok=True), "a stratified subset of the training split")
    model_kwargs: dict = param({}, is_dict, "extra arguments of the model builder")
    seed: int | None = param(None, is_int(lo=0, none_ok=True), "this model's seed (init, order, subset); null: `seed`")
    opt: str = param("adam", one_of("adam", "sgd", "rmsprop", "lamb", "ranger", "qhadam"), "fastai's optimizers")
    schedule: str = param("one_cycle", one_of("one_cycle", "flat_cos", "sgdr", "constant"), "fastai's fit_*")
    cam_layer: str | None = param(None, is_str(none_ok=True), "Grad-CAM's layer (a named_modules() name)")
    folds: int | None = param(None, is_int(lo=2, none_ok=True), "stratified K-fold: K models, out-of-fold preds")
    refit: bool = param(False, is_bool, "retrain on train + valid with the validated recipe; it predicts test")
    time_budget: float | None = param(None, is_budget, "training seconds: the stage sets the epochs to fill them")
    # weight averaging (pipeline.learn.averaging): the averaged weights are the member evaluated, saved, predicted
    average: str = param("none", one_of("none", "ema", "swa"), "ema: timm's ModelEmaV3; swa: torch's AveragedModel")
    average_decay: float = param(0.999, is_float(0.0, 1.0), "ema: the decay per step (warm-up from 0 on)")
    average_start: float = param(0.75, is_start, "swa: share of the steps before averaging, in [0, 1)")
    snapshots: int | None = param(None, is_int(lo=2, hi=20, none_ok=True), "K members from one run: the last K epochs")

    def to_dict(self) -> dict:
        """The spec as plain values (models/<key>/spec.json `train`)."""
        return asdict(self)


TRAIN_SCHEMA = schema_of(TrainSpec)


def make_spec(entry: dict, where: str = "spec") -> TrainSpec:
    """A TrainSpec from `entry` (keys of `train:`), defaults filled in; `where` names it in errors."""
    return TrainSpec(**check_section(entry, TRAIN_SCHEMA, where))


# An archs key names a DVC stage (`train@<key>`) and the folders models/<key>, preds/<key>, dvclive/<key>.
KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
# A `snapshots` member of an entry is named <key>@e<epoch>: the separator is never in a key.
SNAPSHOT_SEP = "@"


def entry_of(name: str) -> str:
    """The entry (archs or variants key) a model name belongs to: itself, or a snapshot member's run."""
    return name.split(SNAPSHOT_SEP, 1)[0]


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
    """The `archs` entry a model belongs to: itself, or the entry a variant is `of` (a snapshot member,
    `<key>@e<epoch>`: its run's)."""
    key = entry_of(key)
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
    entry = {k: v for k, v in entry.items() if k != "share"}  # `budget`'s split (pipeline.plan), not the recipe's
    check_section(base, TRAIN_SCHEMA, "train")  # errors in defaults name `train.<key>`
    check_section({**base, **entry}, TRAIN_SCHEMA, f"archs.{group}")
    where = f"archs.{key}"
    if key != group:
        entry = {**entry, **{k: v for k, v in params["variants"][key].items() if k not in ("of", "share")}}
        where = f"variants.{key}"
    spec = check_section({**base, **entry}, TRAIN_SCHEMA, where)
    if "epochs" in entry and spec["phases"] is not None:
        raise PipelineError(
            f"params.yaml: `{where}` sets `epochs` but also has `phases`, which fix the epochs; set one of them"
        )
    total = sum(ep for _, ep in spec["phases"]) if spec["phases"] else spec["epochs"]
    if spec["snapshots"] and spec["snapshots"] > total and not spec["time_budget"]:
        raise PipelineError(
            f"params.yaml: `{where}.snapshots` = {spec['snapshots']} members from the last epochs, but it trains "
            f"{total} epoch{'s' * (total != 1)}: set snapshots ≤ {total} or more epochs"
        )
    spec["arch"] = spec["arch"] or group
    return TrainSpec(**spec)


def resolve_remedies(spec: TrainSpec, train_counts: dict[str, int]) -> TrainSpec:
    """`sampler: auto` made explicit by the training classes' counts: balanced where they are imbalanced
    (`scores.imbalanced`) and `loss_weights` does not already correct for them, else shuffle. The two remedies
    correct the same prior: together they over-correct (a model that learnt the inverse prior), so `auto` never
    stacks them and a params.yaml that sets both is warned once."""
    from pipeline.inspect.scores import imbalanced

    if spec.sampler == "auto":
        both = False
        sampler = "balanced" if imbalanced(train_counts) and spec.loss_weights == "none" else "shuffle"
        spec = replace(spec, sampler=sampler)
    else:
        both = spec.sampler == "balanced" and spec.loss_weights == "balanced"
    if both:
        warn(
            "`sampler: balanced` with `loss_weights: balanced` corrects the class prior twice (rare classes drawn "
            "as often as large ones, and their loss weighed up again): the model learns the inverse prior. "
            "Keep one (README, Imbalanced classes)"
        )
    return spec


def prior_free(sampler: str | None, loss_weights: str | None) -> bool:
    """Did a model trained so learn a uniform class prior? Exactly one remedy corrects the training prior;
    none leaves it, two over-correct."""
    return (sampler == "balanced") != (loss_weights == "balanced")
