"""The fastai recipe of one model: its Learner (data, network, loss, optimizer, callbacks), the learning rate
(lr_find or fixed), the schedule of each phase, and `time_budget`'s choice of epochs. No files: train_arch in
pipeline.learn.member runs it; the stage (pipeline.train) writes.
"""

from __future__ import annotations

import math
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

from pipeline.data.loaders import make_dls, make_pairs
from pipeline.data.rows import Rows
from pipeline.data.splits import stratified_subset
from pipeline.errors import PipelineError, warn
from pipeline.learn import archs as archs_mod
from pipeline.learn.callbacks import Autocast, EpochLog, NoValidation, Probe, StopOnNaN, TrimHeap, keep_on_device
from pipeline.learn.distributed import say, single_process
from pipeline.learn.hardware import concrete, configure, pick_dtype
from pipeline.params import TrainSpec, eval_batch, resolve_remedies
from pipeline.records import PreparedMeta


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
    sampler: str = "shuffle"  # how an epoch draws its rows: shuffle | balanced (`sampler: auto` resolved)
    loss_weights: str = "none"  # the loss's class weights: none | balanced


def training_pool(arrays: dict, spec: TrainSpec, seed: int) -> np.ndarray:
    """Rows of the training split the entry learns from: all of them, or its seeded `train_limit` subset."""
    n = len(arrays["train_y"])
    if spec.train_limit and spec.train_limit < n:
        return stratified_subset(arrays["train_y"], spec.train_limit, seed)
    return np.arange(n)


def start_device(spec: TrainSpec, seed: int, device: torch.device | None) -> tuple[TrainSpec, torch.device]:
    """Seed and configure the device a learner trains on; resolves `eval_bs: auto` for it."""
    device = concrete(device)  # None: auto (under torchrun each process its own GPU); `cuda` gains its index
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # CPU runs are reproducible whatever the flag; on a GPU autotuning and TF32 unless `deterministic`
    set_seed(seed, reproducible=device.type != "cuda" or spec.deterministic)
    configure(device, spec.deterministic)
    return eval_batch(spec, device.type), device  # `eval_bs: auto` (the caller may have resolved it already)


def training_rows(key: str, spec: TrainSpec, arrays: dict, seed: int) -> tuple[dict, int]:
    """The arrays with the training pool (`train_limit`) as a view, and a batch size no larger than that pool."""
    keep = training_pool(arrays, spec, seed)
    if len(keep) < len(arrays["train_y"]):
        arrays = {**arrays, "train_x": Rows.of(arrays["train_x"]).take(keep), "train_y": arrays["train_y"][keep]}
    bs = spec.bs
    if bs > len(arrays["train_y"]):
        bs = len(arrays["train_y"])
        warn(f"{key}: `bs` = {spec.bs} is larger than the training set; using bs {bs} (one batch per epoch)")
    return arrays, bs


def make_model(key: str, arch, spec: TrainSpec, n_in: int, n_out: int, size: int):
    """The network and its parameter-group splitter (channels-last where set); build errors name the entry."""
    try:
        model, splitter = archs_mod.build_model(arch, n_in, n_out, size, spec.pretrained, spec.ps, spec.model_kwargs)
    except PipelineError:
        raise
    except Exception as e:  # any exception: e.g. a hub download refused offline
        how = (
            " (pretrained: true downloads weights; offline, give a weights file path instead)"
            if spec.pretrained is True
            else ""
        )
        raise PipelineError(f"{key}: cannot build {arch.name}{how}: {type(e).__name__}: {e}") from e
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, splitter or trainable_params


def build_learner(
    key: str, spec: TrainSpec, arrays: dict, meta: PreparedMeta, seed: int, device: torch.device | None = None
):
    """The fastai Learner of one architecture at its first phase's size, and its Setup."""
    spec, device = start_device(spec, seed, device)
    arch = archs_mod.resolve(spec.arch)
    h, _, n_in = meta.image_shape
    n_out = len(meta.classes)
    phases = spec.phases or [[spec.size or h, spec.epochs]]
    arrays, bs = training_rows(key, spec, arrays, seed)
    mean, std = archs_mod.norm_stats(arch, spec.pretrained, n_in, meta.train_mean, meta.train_std)
    dtype = pick_dtype(spec.precision, device)
    model, splitter = make_model(key, arch, spec, n_in, n_out, h)

    counts = np.bincount(arrays["train_y"], minlength=len(meta.classes))  # `sampler: auto`: as the stage resolves it
    sampler = resolve_remedies(spec, meta.counts_per_class.get("train", {})).sampler
    sample_weights = 1.0 / np.maximum(counts, 1)[arrays["train_y"]] if sampler == "balanced" else None
    pairs = make_pairs(arrays, device)  # once: every phase's loaders share the (GPU-resident) rows
    norm = (mean, std, spec.flip, spec.pad, device, spec.eval_bs, spec.channels_last, sample_weights, pairs)

    def dls_at(size: int):
        return make_dls(arrays, size, bs, *norm)

    cbs = [StopOnNaN(key), TrimHeap(), *precision_callbacks(dtype, device)]
    if not len(arrays["valid_y"]):  # a refit: nothing to validate on
        cbs.append(NoValidation())
    loss = CrossEntropyLossFlat(weight=class_weights(spec, counts, device), label_smoothing=spec.label_smoothing)
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
        learn.logger = EpochLog(learn)
    if device.type == "cuda":  # no host copy (and sync) of the loss and accuracy per batch
        keep_on_device(learn)
    setup = Setup(
        arch,
        phases,
        spec.pretrained,
        mean,
        std,
        dtype,
        device,
        bs,
        n_in,
        n_out,
        h,
        arrays,
        dls_at,
        sampler,
        spec.loss_weights,
    )
    return learn, setup


def class_weights(spec: TrainSpec, counts: np.ndarray, device) -> torch.Tensor | None:
    """`loss_weights: balanced`: each class's loss weighed by n / (classes × its training images) (scikit-learn's
    "balanced" class_weight); `none`: None."""
    if spec.loss_weights == "none":
        return None
    w = counts.sum() / (len(counts) * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32, device=device)


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


# --------------------------------------------------------------------------------------------- time_budget
def probe_costs(
    key: str, spec: TrainSpec, arrays: dict, meta: PreparedMeta, seed: int, device
) -> tuple[list, int, int]:
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
            eval_bs = eval_batch(spec, setup.device.type).eval_bs
            costs.append((probe.per_batch("train") / setup.bs, vb / eval_bs if vb else 0.0))
    n_train = len(setup.arrays["train_y"])
    del learn, setup  # the throwaway learner's model, optimizer and (GPU-resident) data go before the real one
    free_memory(device)
    return costs, n_train, len(arrays["valid_y"])


def free_memory(device) -> None:
    """Let go of what dropped learners held: Python's cycles (fastai's callbacks refer back to the learner), then
    the CUDA cache, so the next learner's peak is its own."""
    import gc

    gc.collect()
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def budget_recipe(
    key: str, spec: TrainSpec, arrays: dict, meta: PreparedMeta, seed: int, device
) -> tuple[TrainSpec, dict]:
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
    h = meta.image_shape[0]
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
            limit = max(int(frac * n), 2 * len(meta.classes), 2)
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
    say(f"{key}: time_budget {budget:g} s -> {chosen} (predicted {predicted:.0f} s)")
    return pinned, record
