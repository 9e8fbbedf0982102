"""Stages `train@<key>` and `variant@<key>`: train one model from params.yaml `archs.<key>`, or `variants.<key>`
(its `archs` entry with a few keys overridden), over the `train:` defaults.

Reads:  data/prepared/, params.yaml (`seed`, `train`, `archs.<key>`, `variants.<key>`).
Writes: models/<key>/ (model.safetensors, spec.json, versions.json), preds/<key>/{valid,test}.npy,
        metrics/<key>.json, dvclive/<key>/ (training curves, lr_find curve) — all whole or not at all.
        `folds: K`: models/<key>/fold<i>/ (one model per fold; spec.json names them), preds/<key>/oof.npy and
        oof_rows.npy (out-of-fold probabilities and the training rows they belong to); valid/test from their
        average. `refit: true`: models/<key>/ and preds/<key>/test.npy come from the model refit on train + valid.
Run:    dvc repro train@<key> / variant@<key>    (or: python -m pipeline.train <key>)
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import ParamScheduler, SchedCos, combine_scheds  # also patches Learner: lr_find, fit_*
from fastai.distributed import num_distrib, rank_distrib
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.optimizer import SGD, Adam, Lamb, QHAdam, RMSProp, ranger
from fastai.torch_core import set_seed, trainable_params

from pipeline import archs as archs_mod
from pipeline.callbacks import Autocast, NoValidation, Probe, StopOnNaN, TrimHeap, epoch_logger, live_callback
from pipeline.data import BatchTfm, Rows, load_prepared, make_dls
from pipeline.distributed import data_parallel, share, single_process
from pipeline.errors import PipelineError, warn
from pipeline.hardware import configure, describe, dtype_name, pick_device, pick_dtype
from pipeline.infer import predict_probs
from pipeline.io import staged
from pipeline.params import TrainSpec, load_params, seed_param, train_spec
from pipeline.scores import score
from pipeline.splits import stratified_subset


@dataclass
class Setup:
    """What build_learner decided besides the Learner: what fitting and evaluating need next."""

    arch: archs_mod.Arch
    phases: list[list[int]]  # [[size, epochs], ...]
    pretrained: bool | str
    mean: list[float]
    std: list[float]
    dtype: torch.dtype | None  # autocast dtype; None = fp32
    device: torch.device
    bs: int  # the batch size used: `bs`, or the training set's size when that is smaller
    n_in: int
    n_out: int
    native: int  # the prepared image side
    arrays: dict[str, np.ndarray]  # after `train_limit`
    dls_at: Callable[[int], object]  # image side -> DataLoaders


@dataclass
class TrainResult:
    """One trained member: the model and everything the stage writes about it."""

    model: torch.nn.Module
    lr: float
    spec: dict | None = None  # models/<key>/spec.json: what pipeline.predict needs to rebuild the model
    preds: dict[str, np.ndarray] | None = None  # split -> probabilities
    metrics: dict | None = None  # metrics/<key>.json
    lr_curve: dict | None = None  # lr_find's curve, when lr was `auto`
    folds: list[TrainResult] | None = None  # `folds: K`: the K fold models, saved as models/<key>/fold<i>/


def versions() -> dict:
    import fastai
    import timm
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "fastai": fastai.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


# --------------------------------------------------------------------------------------------- build
def training_pool(arrays: dict, spec: TrainSpec, seed: int) -> np.ndarray:
    """Rows of the training split the entry learns from: all of them, or its seeded `train_limit` subset."""
    n = len(arrays["train_y"])
    if spec.train_limit and spec.train_limit < n:
        return stratified_subset(arrays["train_y"], spec.train_limit, seed)
    return np.arange(n)


def build_learner(key: str, spec: TrainSpec, arrays: dict, meta: dict, seed: int, device: torch.device | None = None):
    """The fastai Learner of one architecture at its first phase's size, and its Setup."""
    if device is None:  # under torchrun / accelerate launch each process takes its own GPU
        device = pick_device("auto")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # CPU runs are reproducible whatever the flag; on a GPU autotuning and TF32 unless `deterministic`
    set_seed(seed, reproducible=device.type != "cuda" or spec.deterministic)
    configure(device, spec.deterministic)
    arch = archs_mod.resolve(spec.arch)
    h, _, n_in = meta["image_shape"]
    n_out = len(meta["classes"])
    phases = spec.phases or [[spec.size or h, spec.epochs]]
    pretrained = spec.pretrained
    keep = training_pool(arrays, spec, seed)
    if len(keep) < len(arrays["train_y"]):
        arrays = {**arrays, "train_x": Rows.of(arrays["train_x"]).take(keep), "train_y": arrays["train_y"][keep]}
    bs = spec.bs
    if bs > len(arrays["train_y"]):
        bs = len(arrays["train_y"])
        warn(f"{key}: `bs` = {spec.bs} is larger than the training set; using bs {bs} (one batch per epoch)")
    mean, std = archs_mod.norm_stats(arch, pretrained, n_in, meta["train_mean"], meta["train_std"])
    dtype = pick_dtype(spec.precision, device)
    try:
        model, splitter = archs_mod.build_model(arch, n_in, n_out, h, pretrained, spec.ps, spec.model_kwargs)
    except PipelineError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a hub download refused offline
        how = (
            " (pretrained: true downloads weights; offline, give a weights file path instead)"
            if pretrained is True
            else ""
        )
        raise PipelineError(f"{key}: cannot build {arch.name}{how}: {type(e).__name__}: {e}") from e
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def dls_at(size):
        return make_dls(arrays, size, bs, mean, std, spec.flip, spec.pad, device, spec.eval_bs, spec.channels_last)

    cbs = [StopOnNaN(key), TrimHeap(), *precision_callbacks(dtype, device)]
    if not len(arrays["valid_y"]):  # a refit: nothing to validate on
        cbs.append(NoValidation())
    loss = CrossEntropyLossFlat(label_smoothing=spec.label_smoothing)
    splitter = splitter or trainable_params
    learn = Learner(
        dls_at(phases[0][0]),
        model,
        loss_func=loss,
        opt_func=OPTIMIZERS[spec.opt],
        metrics=accuracy,
        wd=spec.wd,
        splitter=splitter,
        cbs=cbs,
    )
    if not sys.stdout.isatty():
        learn.remove_cb(ProgressCallback)
        learn.logger = epoch_logger
    setup = Setup(arch, phases, pretrained, mean, std, dtype, device, bs, n_in, n_out, h, arrays, dls_at)
    return learn, setup


def precision_callbacks(dtype: torch.dtype | None, device: torch.device) -> list:
    """fp16 needs a gradient scaler against underflow: fastai's MixedPrecision (CUDA only); bf16 has fp32's range:
    autocast alone; fp32: nothing."""
    if dtype == torch.float16:
        return [MixedPrecision(amp_mode="fp16")]
    return [] if dtype is None else [Autocast(device.type, dtype)]


# --------------------------------------------------------------------------------------------- fit
# `opt`: fastai's optimizers (SGD with momentum 0.9, as the notebooks used it; fastai's own default is 0).
OPTIMIZERS: dict[str, Callable] = {
    "adam": Adam,
    "sgd": partial(SGD, mom=0.9),
    "rmsprop": RMSProp,
    "lamb": Lamb,
    "ranger": ranger,
    "qhadam": QHAdam,
}


def fit_schedule(learn: Learner, epochs: int, lr, spec: TrainSpec) -> None:
    """`schedule`: fastai's fit functions. one_cycle: warm-up for `pct_start` of the steps, then cosine decay;
    flat_cos: flat for `pct_start`, then cosine decay; sgdr: a cosine cycle per epoch, restarting at `lr`
    (warm restarts); constant: `lr` throughout."""
    if spec.schedule == "one_cycle":
        learn.fit_one_cycle(epochs, lr, pct_start=spec.pct_start)
    elif spec.schedule == "flat_cos":
        learn.fit_flat_cos(epochs, lr, pct_start=spec.pct_start)
    elif spec.schedule == "sgdr":  # fastai's fit_sgdr doubles each cycle; here every epoch is one cycle
        if learn.opt is None:
            learn.create_opt()
        learn.opt.set_hyper("lr", lr)  # a slice spreads over the parameter groups, as fit_sgdr does
        top = np.array([h["lr"] for h in learn.opt.hypers])
        cycles = combine_scheds([1 / epochs] * epochs, [SchedCos(top, top / 1e5)] * epochs)
        learn.fit(epochs, cbs=ParamScheduler({"lr": cycles}))
    else:
        learn.fit(epochs, lr)


def pick_lr(learn: Learner, key: str, spec: TrainSpec) -> tuple[float | None, float | None, dict | None]:
    """(lr used, lr_find's valley or None, the lr_find curve or None).

    lr_find checkpoints the weights under learn.path/models/: a temporary folder here, never the project's
    models/ (a killed run would leave it behind there). Data-parallel runs call this before the process group
    exists, and only rank 0 runs lr_find, as one process (fastai's lr_find restores the weights from a
    rank-0-only file behind a barrier, and gathers losses across ranks); `share` then gives its result to every
    rank. Other ranks get (None, None, None) here."""
    lr_found, curve = None, None
    if spec.lr == "auto":
        if rank_distrib() > 0:
            return None, None, None
        old_path = learn.path
        with tempfile.TemporaryDirectory(prefix="lr_find-") as tmp, learn.no_logging(), single_process():
            learn.path = Path(tmp)
            try:
                sugg = learn.lr_find(num_it=spec.num_it, show_plot=False)
            finally:
                learn.path = old_path
        lr_found = float(sugg.valley)
        curve = {"lr": [float(v) for v in learn.recorder.lrs], "loss": [float(v) for v in learn.recorder.losses]}
        if not math.isfinite(lr_found) or lr_found <= 0:
            raise PipelineError(f"{key}: lr_find gave no usable learning rate ({lr_found}); set `lr` to a number")
    return (lr_found if lr_found is not None else spec.lr), lr_found, curve


def fit_phases(learn: Learner, spec: TrainSpec, setup: Setup, fine_tune: bool, lr: float) -> tuple[int, float, int]:
    """Train through the phases: fastai's fine_tune (frozen epochs first, then one-cycle) for the first phase of a
    pretrained net; `schedule` otherwise.
    Returns (training images seen, start time, frozen epochs)."""
    seen, t0 = 0, time.perf_counter()
    freeze_epochs = spec.freeze_epochs if fine_tune else 0
    for i, (size, epochs) in enumerate(setup.phases):
        if i:
            learn.dls = setup.dls_at(size)
        n_batches = len(learn.dls.train)
        if fine_tune and i == 0 and freeze_epochs:
            learn.fine_tune(
                epochs, base_lr=lr, freeze_epochs=freeze_epochs, lr_mult=spec.lr_mult, pct_start=spec.pct_start
            )
            seen += freeze_epochs * n_batches * setup.bs
        elif fine_tune:
            learn.unfreeze()
            top = lr / 2
            fit_schedule(learn, epochs, slice(top / spec.lr_mult, top), spec)
        else:
            fit_schedule(learn, epochs, lr, spec)
        seen += epochs * n_batches * setup.bs
    return seen, t0, freeze_epochs


def probe_costs(key: str, spec: TrainSpec, arrays: dict, meta: dict, seed: int, device) -> tuple[list, int, int]:
    """Seconds per training image and per validation image at each phase's size, from the first batches of a
    throwaway learner (fastai's loop: data, augmentation, optimizer, callbacks); (costs, train rows, valid rows)."""
    learn, setup = build_learner(key, replace(spec, time_budget=None), arrays, meta, seed, device)
    if setup.pretrained:
        learn.freeze()
    costs = []
    with learn.no_logging():
        for size, _ in setup.phases:
            learn.dls = setup.dls_at(size)
            probe = Probe()
            learn.fit(1, 1e-6, cbs=probe)
            vb = probe.per_batch("valid")
            costs.append((probe.per_batch("train") / setup.bs, vb / spec.eval_bs if vb else 0.0))
    return costs, len(setup.arrays["train_y"]), len(arrays["valid_y"])


def budget_recipe(key: str, spec: TrainSpec, arrays: dict, meta: dict, seed: int, device) -> tuple[TrainSpec, dict]:
    """`time_budget`: the recipe with its epochs (scaled alike across phases, each ≥ 1) and, where whole epochs
    miss the budget by more than 3 %, a stratified `train_limit`, so that the training seconds fill the budget.
    The learner is then built afresh from that recipe, so pinning the chosen values reruns it bit for bit."""
    if num_distrib() > 1:
        raise PipelineError(
            f"archs.{key}: `time_budget` with several processes (torchrun) would let each time itself; pin `epochs` "
            "(and `train_limit`) from a single-process run's metrics/<key>.json `time_budget.chosen` instead"
        )
    budget = float(spec.time_budget)
    costs, n, n_valid = probe_costs(key, spec, arrays, meta, seed, device)
    h = meta["image_shape"][0]
    phases = spec.phases or [[spec.size or h, spec.epochs]]
    train_s = [n * t for t, _ in costs]  # one epoch's training seconds at each phase's size
    valid_s = [n_valid * v for _, v in costs]  # and its validation seconds
    per_unit = sum(e * (t + v) for (_, e), t, v in zip(phases, train_s, valid_s))
    k = budget / per_unit
    epochs = [max(1, round(e * k)) for _, e in phases]
    predicted = sum(e * (t + v) for e, t, v in zip(epochs, train_s, valid_s))
    limit = spec.train_limit
    if abs(predicted - budget) > 0.03 * budget:  # rounding to whole epochs misses: one more epoch, fewer images
        if predicted < budget:
            epochs = [max(1, int(np.ceil(e * k))) for _, e in phases]
        train_part = sum(e * t for e, t in zip(epochs, train_s))
        frac = (budget - sum(e * v for e, v in zip(epochs, valid_s))) / train_part
        if frac < 1:
            limit = max(int(frac * n), 2 * len(meta["classes"]), 2)
            predicted = sum(e * (t * limit / n + v) for e, t, v in zip(epochs, train_s, valid_s))
    new_phases = [[size, e] for (size, _), e in zip(phases, epochs)]
    pinned = replace(
        spec,
        time_budget=None,
        epochs=epochs[0] if spec.phases is None else spec.epochs,
        phases=new_phases if spec.phases is not None else None,
        train_limit=limit if limit is not None and limit < n else spec.train_limit,
    )
    chosen = {"phases": new_phases} if spec.phases is not None else {"epochs": epochs[0]}
    if pinned.train_limit != spec.train_limit:
        chosen["train_limit"] = pinned.train_limit
    record = {
        "asked_s": budget,
        "predicted_s": round(predicted, 2),
        "probe_img_per_s": [round(1 / t, 1) for t, _ in costs],
        "chosen": chosen,  # set these (and drop time_budget) to pin the run
    }
    if rank_distrib() == 0:
        print(f"{key}: time_budget {budget:g} s -> {chosen} (predicted {predicted:.0f} s)", flush=True)
    return pinned, record


def train_arch(
    key: str,
    spec: TrainSpec,
    arrays: dict,
    meta: dict,
    seed: int,
    device: torch.device | None = None,
    live=None,
    evaluate: bool = True,
) -> TrainResult:
    """Train one architecture; returns the model, its spec, predictions, metrics and the lr_find curve."""
    budget = None
    if spec.time_budget:
        spec, budget = budget_recipe(key, spec, arrays, meta, seed, device)
    learn, setup = build_learner(key, spec, arrays, meta, seed, device)
    fine_tune = bool(setup.pretrained)
    if fine_tune:
        learn.freeze()

    distributed = num_distrib() > 1
    found = pick_lr(learn, key, spec)
    with data_parallel(learn, setup.device) if distributed else contextlib.nullcontext():
        lr, lr_found, curve = share(found) if distributed else found
        if rank_distrib() == 0:
            how = f" ({num_distrib()} processes, data-parallel)" if distributed else ""
            print(
                f"{key}: {setup.arch.source} {setup.arch.name}, lr {lr:.2e}{' (lr_find valley)' if lr_found else ''}, "
                f"phases {setup.phases}, {'fine-tune' if fine_tune else 'one-cycle'}, "
                f"{describe(setup.device, setup.dtype)}{how}",
                flush=True,
            )
        if live is not None:
            learn.add_cb(live_callback(live))
        seen, t0, freeze_epochs = fit_phases(learn, spec, setup, fine_tune, lr)
    train_s = time.perf_counter() - t0
    if not evaluate:
        return TrainResult(learn.model, lr)
    res = evaluate_member(learn, key, spec, setup, meta, seed, lr, lr_found, curve, seen, train_s, freeze_epochs)
    if budget is not None:
        res.metrics["time_budget"] = budget | {"train_s": res.metrics["train_s"]}
    return res


# --------------------------------------------------------------------------------------------- evaluate
def score_on_test(probs: np.ndarray, arrays: dict) -> dict | None:
    """Accuracy and loss on the test split, or None where it has no labels (or no rows)."""
    return score(probs, arrays["test_y"]) if "test_y" in arrays and len(arrays["test_y"]) else None


def evaluate_member(learn, key, spec, setup: Setup, meta, seed, lr, lr_found, curve, seen, train_s, freeze_epochs):
    """Predictions on valid and test, metrics, and the spec pipeline.predict rebuilds the model from."""
    size = setup.phases[-1][0]
    tfm = BatchTfm(size, setup.mean, setup.std, train=False, channels_last=spec.channels_last)
    tta = spec.tta and spec.flip  # mirror TTA only where mirrored images were trained on
    arrays = setup.arrays
    # valid is empty for a refit (trained on it); oof: a fold model's held-out rows of the training split
    splits = (["valid"] if len(arrays["valid_y"]) else []) + ["test"] + (["oof"] if "oof_x" in arrays else [])
    t1 = time.perf_counter()
    preds = {
        s: predict_probs(learn.model, arrays[f"{s}_x"], tfm, spec.eval_bs, tta, setup.device, setup.dtype, setup.n_out)
        for s in splits
    }
    eval_s = time.perf_counter() - t1
    precision = dtype_name(setup.dtype)
    metrics = {
        "valid": score(preds["valid"], arrays["valid_y"]) if "valid" in preds else None,
        "test": score_on_test(preds["test"], arrays),
        **({"oof": score(preds["oof"], arrays["oof_y"])} if "oof" in preds else {}),
        "lr": lr,
        "lr_found": lr_found is not None,
        "lr_suggested": lr_found,
        "phases": setup.phases,
        "freeze_epochs": freeze_epochs,
        "bs": setup.bs,
        "train_s": round(train_s, 2),
        "img_per_s": round(seen / train_s, 1),
        "images_seen": int(seen),  # the training budget: epochs × training images (frozen epochs included)
        "eval_s": round(eval_s, 2),
        "param_count": sum(p.numel() for p in learn.model.parameters()),
        "train_images": int(len(arrays["train_y"])),
        "device": str(setup.device),
        "precision": precision,
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(setup.device) / 2**20)
        if setup.device.type == "cuda"
        else None,
        "arch": setup.arch.name,
        "source": setup.arch.source,
        "pretrained": bool(setup.pretrained),
    }
    model_spec = {
        "key": key,
        "arch": setup.arch.name,
        "source": setup.arch.source,
        "n_in": setup.n_in,
        "n_out": setup.n_out,
        "size": size,
        "native_size": setup.native,
        "mean": list(map(float, setup.mean)),
        "std": list(map(float, setup.std)),
        "classes": meta["classes"],
        "ps": spec.ps,
        "model_kwargs": spec.model_kwargs,
        "pretrained": setup.pretrained,
        "tta": tta,
        "channels_last": spec.channels_last,
        "precision": precision,  # pipeline.predict evaluates with the same autocast on the same device type,
        "device": str(setup.device),  # so it reproduces preds/; elsewhere with that device's own precision
        "seed": seed,
        "train": spec.to_dict(),
    }
    return TrainResult(learn.model, lr, model_spec, preds, metrics, curve)


# --------------------------------------------------------------------------------------------- folds, refit
def fold_splits(key: str, y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's StratifiedKFold of the pool's labels: (train, held-out) positions per fold."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    if counts[counts > 0].min() < k:
        raise PipelineError(
            f"{key}: `folds` = {k}, but a class has only {counts[counts > 0].min()} training images; "
            "each class needs at least one image per fold: lower `folds` or raise `train_limit`"
        )
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def sd(a) -> float:
    """Sample standard deviation (ddof 1), as the report's groups table; 0 for a single value."""
    return float(np.std(a, ddof=1)) if len(a) > 1 else 0.0


def train_folds(key, spec: TrainSpec, arrays, meta, seed, device, live, evaluate) -> TrainResult:
    """`folds: K`: K models, each trained on K-1 folds of the pool and predicting its held-out fold (out-of-fold),
    the validation and the test split. The first fold fixes the lr (lr_find when `auto`); the others reuse it."""
    pool = training_pool(arrays, spec, seed)
    py = arrays["train_y"][pool]
    splits = fold_splits(key, py, spec.folds, seed)
    base = replace(spec, folds=None, refit=False, train_limit=None)
    results: list[TrainResult] = []
    for i, (tr, te) in enumerate(splits):
        a = {
            **arrays,
            "train_x": Rows.of(arrays["train_x"]).take(pool[tr]),
            "train_y": py[tr],
            "oof_x": Rows.of(arrays["train_x"]).take(pool[te]),
            "oof_y": py[te],
        }
        if rank_distrib() == 0:
            print(f"{key}: fold {i + 1}/{spec.folds}: {len(tr)} training images, {len(te)} held out", flush=True)
        s = base if i == 0 else replace(base, lr=results[0].lr)
        results.append(train_arch(key, s, a, meta, seed, device, live, evaluate))
    if not evaluate:
        return results[0]
    return combine_folds(results, pool, splits, arrays, spec)


def combine_folds(results: list[TrainResult], pool, splits, arrays, spec: TrainSpec) -> TrainResult:
    """The entry's outputs from its fold models: valid and test predicted by their average, the out-of-fold
    predictions over the pool, and mean ± std of the fold models' held-out (CV) and validation accuracies."""
    first = results[0]
    preds = {s: np.mean([r.preds[s] for r in results], axis=0) for s in ("valid", "test")}
    oof = np.zeros((len(pool), first.preds["oof"].shape[1]), dtype=first.preds["oof"].dtype)
    for (_, te), r in zip(splits, results):
        oof[te] = r.preds["oof"]
    preds["oof"], preds["oof_rows"] = oof, pool.astype(np.int64)
    cv = [r.metrics["oof"]["accuracy"] for r in results]
    va = [r.metrics["valid"]["accuracy"] for r in results]
    train_s = sum(r.metrics["train_s"] for r in results)
    seen = sum(r.metrics["train_s"] * r.metrics["img_per_s"] for r in results)
    m = {k: v for k, v in first.metrics.items() if k != "oof"}
    m.update(
        valid=score(preds["valid"], arrays["valid_y"]),
        test=score_on_test(preds["test"], arrays),
        train_s=round(train_s, 2),
        img_per_s=round(seen / train_s, 1) if train_s else 0.0,
        images_seen=sum(r.metrics["images_seen"] for r in results),
        eval_s=round(sum(r.metrics["eval_s"] for r in results), 2),
        train_images=len(pool),
        folds={
            "k": len(results),
            "cv_accuracy": cv,  # each fold model on its held-out fold
            "cv_mean": float(np.mean(cv)),
            "cv_std": sd(cv),
            "oof": score(oof, arrays["train_y"][pool]),  # all out-of-fold predictions together
            "valid_accuracy": va,  # each fold model on the validation split (`valid` is their average's)
            "valid_mean": float(np.mean(va)),
            "valid_std": sd(va),
        },
    )
    model_spec = {**first.spec, "folds": [f"fold{i}" for i in range(len(results))], "train": spec.to_dict()}
    return TrainResult(first.model, first.lr, model_spec, preds, m, first.lr_curve, folds=results)


def train_refit(key, spec: TrainSpec, validated: TrainResult, arrays, meta, seed, device, evaluate) -> TrainResult:
    """`refit: true`: a fresh model with the validated recipe (its lr, epochs, phases) trained on the validated
    run's training images plus the validation split; it predicts test. Nothing is validated on it: the
    validation figures stay the validated run's, and the test score of the validated model is kept beside it."""
    pool = training_pool(arrays, spec, seed)
    a = {
        **{k: v for k, v in arrays.items() if not k.startswith("oof")},
        "train_x": Rows.concat(Rows.of(arrays["train_x"]).take(pool), arrays["valid_x"]),
        "train_y": np.concatenate([arrays["train_y"][pool], arrays["valid_y"]]),
        # fastai needs a validation loader: an empty one, skipped (NoValidation)
        "valid_x": Rows.of(arrays["valid_x"]).take([]),
        "valid_y": arrays["valid_y"][:0],
    }
    if rank_distrib() == 0:
        print(f"{key}: refit on train + valid: {len(a['train_y'])} images, lr {validated.lr:.2e}", flush=True)
    chosen = (validated.metrics.get("time_budget") or {}).get("chosen", {})  # the validated run's budgeted epochs
    s = replace(spec, lr=validated.lr, folds=None, refit=False, train_limit=None, time_budget=None)
    s = replace(s, **{k: v for k, v in chosen.items() if k != "train_limit"})
    r = train_arch(key, s, a, meta, seed, device, None, evaluate)
    if not evaluate:
        return r
    m = dict(validated.metrics)
    m["test_validated"] = m["test"]  # the validated model's test score, for comparison
    m["test"] = r.metrics["test"]
    m["train_s"] = round(m["train_s"] + r.metrics["train_s"], 2)
    m["images_seen"] = m["images_seen"] + r.metrics["images_seen"]
    m["refit"] = {
        "train_images": r.metrics["train_images"],
        "lr": r.lr,
        "phases": r.metrics["phases"],
        "train_s": r.metrics["train_s"],
        "figures": "valid: the validated run (its model never saw the validation split); test and the "
        "submission: the refit model",
    }
    preds = {**validated.preds, "test": r.preds["test"]}
    model_spec = {**r.spec, "refit": {"train_images": r.metrics["train_images"], "validated_lr": validated.lr}}
    model_spec["train"] = spec.to_dict()
    return TrainResult(r.model, validated.lr, model_spec, preds, m, validated.lr_curve)


def train_entry(key, spec: TrainSpec, arrays, meta, seed, device=None, live=None, evaluate=True) -> TrainResult:
    """One `archs`/`variants` entry: one model, or K fold models (`folds`), then the refit (`refit`)."""
    if spec.folds:
        res = train_folds(key, spec, arrays, meta, seed, device, live, evaluate)
    else:
        res = train_arch(key, spec, arrays, meta, seed, device, live, evaluate)
    if spec.refit:
        res = train_refit(key, spec, res, arrays, meta, seed, device, evaluate)
    return res


# --------------------------------------------------------------------------------------------- write
def save_lr_plot(curve: dict, path: Path, lr: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(curve["lr"], curve["loss"])
    ax.axvline(lr, color="red", ls="--", label=f"valley {lr:.1e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="lr_find")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_member(res: TrainResult, live, model_dir: Path, preds_dir: Path, metrics_file: Path, live_dir: Path) -> None:
    """Every output of one member, into the (staging) paths given."""
    from safetensors.torch import save_file

    if res.lr_curve:
        points = [{"lr": a, "loss": b} for a, b in zip(res.lr_curve["lr"], res.lr_curve["loss"])]
        live.log_plot("lr_find", points, x="lr", y="loss", template="linear", title=f"lr_find: {res.spec['key']}")
        (live_dir / "plots" / "images").mkdir(parents=True, exist_ok=True)
        save_lr_plot(res.lr_curve, live_dir / "plots" / "images" / "lr_find.png", res.lr)
    else:  # a fixed lr: no curve, but the declared plot file exists
        (live_dir / "plots" / "custom").mkdir(parents=True, exist_ok=True)
        (live_dir / "plots" / "custom" / "lr_find.json").write_text("[]\n")
    live.end()
    model_dir.mkdir(exist_ok=True)
    saved = list(zip(res.spec["folds"], res.folds)) if res.folds else [(".", res)]
    for sub, r in saved:
        folder = model_dir / sub
        folder.mkdir(exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in r.model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        (folder / "spec.json").write_text(json.dumps(r.spec, indent=2) + "\n")
    (model_dir / "spec.json").write_text(json.dumps(res.spec, indent=2) + "\n")  # with folds: names their folders
    (model_dir / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
    preds_dir.mkdir(exist_ok=True)
    for split, p in res.preds.items():
        np.save(preds_dir / f"{split}.npy", p, allow_pickle=False)
    metrics_file.write_text(json.dumps(res.metrics, indent=2) + "\n")


def main(key: str, params_file: str = "params.yaml", root: Path = Path(".")) -> TrainResult:
    from dvclive import Live

    params = load_params(params_file)
    spec = train_spec(params, key)
    seed = seed_param(params) if spec.seed is None else spec.seed
    archs_mod.resolve(spec.arch)  # unknown names fail before loading data
    device = pick_device(spec.device, key)
    arrays, meta = load_prepared(root / "data/prepared")
    if rank_distrib() > 0:  # data-parallel: the other ranks train in step; rank 0 alone evaluates and writes
        return train_entry(key, spec, arrays, meta, seed, device=device, evaluate=False)
    outs = [root / "models" / key, root / "preds" / key, root / "metrics" / f"{key}.json", root / "dvclive" / key]
    with staged(*outs) as (model_dir, preds_dir, metrics_file, live_dir):
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
        res = train_entry(key, spec, arrays, meta, seed, device=device, live=live)
        write_member(res, live, model_dir, preds_dir, metrics_file, live_dir)
    m = res.metrics
    test = f", test acc {m['test']['accuracy']:.4f}" if m["test"] else ""
    refit = " (refit model)" if "refit" in m else ""
    print(
        f"{key}: valid acc {m['valid']['accuracy']:.4f}{test}{refit}, {m['train_s']:.0f} s, {m['img_per_s']:.0f} img/s"
    )
    if "folds" in m:
        f = m["folds"]
        print(
            f"{key}: {f['k']}-fold CV acc {f['cv_mean']:.4f} ± {f['cv_std']:.4f} (held-out folds), fold models on "
            f"valid {f['valid_mean']:.4f} ± {f['valid_std']:.4f}, their average {m['valid']['accuracy']:.4f}"
        )
    return res


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipeline.train <a key of `archs:` or `variants:` in params.yaml>")
    try:
        main(sys.argv[1])
    except PipelineError as e:
        sys.exit(f"error: {e}")
