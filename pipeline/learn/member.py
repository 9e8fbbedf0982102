"""One member: trained by the recipe (pipeline.learn.recipe), evaluated on valid, test and any held-out rows, and its
outputs written — the model, its spec, predictions, metrics and curves.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from fastai.distributed import num_distrib

from pipeline.artifacts import save_member_metrics, save_member_spec, save_preds, snapshot_folder
from pipeline.data.loaders import BatchTfm
from pipeline.inspect.scores import score
from pipeline.learn.averaging import Snapshots, WeightAverage, size_at, snapshot_epochs
from pipeline.learn.callbacks import live_callback
from pipeline.learn.distributed import data_parallel, say, share
from pipeline.learn.hardware import concrete, describe, dtype_name
from pipeline.learn.infer import predict_probs
from pipeline.learn.recipe import Setup, budget_recipe, build_learner, fit_phases, free_memory, pick_lr
from pipeline.params import TrainSpec, eval_batch
from pipeline.records import MemberMetrics, MemberSpec, PreparedMeta, Score


@dataclass
class TrainResult:
    """One trained member: the model and everything the stage writes about it."""

    model: torch.nn.Module
    lr: float
    spec: MemberSpec | None = None  # models/<key>/spec.json: what pipeline.learn.trained rebuilds the model from
    preds: dict[str, np.ndarray] | None = None  # split -> probabilities
    metrics: MemberMetrics | None = None  # metrics/<key>.json
    lr_curve: dict | None = None  # lr_find's curve, when lr was `auto`
    folds: list[TrainResult] | None = None  # `folds: K`: the K fold models, saved as models/<key>/fold<i>/
    snapshots: list[TrainResult] | None = None  # `snapshots: K`: members <key>@e<epoch> taken along the run


@dataclass
class Fitted:
    """What fitting one model leaves for its evaluation."""

    learn: object  # the fastai Learner
    setup: Setup
    spec: TrainSpec
    lr: float
    lr_found: float | None  # lr_find's valley, where `lr: auto`
    curve: dict | None  # lr_find's curve
    seen: int  # training images seen
    train_s: float
    freeze_epochs: int
    averaged: dict | None = None  # `average`: what WeightAverage.finish did
    states: dict | None = None  # `snapshots`: epoch -> the weights at its end


def train_arch(
    key: str,
    spec: TrainSpec,
    arrays: dict,
    meta: PreparedMeta,
    seed: int,
    device: torch.device | None = None,
    live=None,
    evaluate: bool = True,
    held_out: tuple | None = None,
    refit: bool = False,
) -> TrainResult:
    """Train one architecture; returns the model, its spec, predictions, metrics and the lr_find curve.
    `held_out`: (images, labels) it also predicts (a fold model's held-out fold: `oof`); `refit`: trained on the
    validation split too (`arrays` then has an empty one), so nothing is validated; `evaluate=False`: a
    data-parallel rank other than 0, which trains in step and returns the model only."""
    budget = None
    device = concrete(device)  # None: auto (under torchrun each process its own GPU); `cuda` gains its index
    spec = eval_batch(spec, device.type)
    if spec.time_budget:
        spec, budget = budget_recipe(key, spec, arrays, meta, seed, device)
    learn, setup = build_learner(key, spec, arrays, meta, seed, device)
    if setup.device.type == "cuda":  # this model's peak (from what it holds now), not the process's: folds, refit
        free_memory(setup.device)
        torch.cuda.reset_peak_memory_stats(setup.device)
    fine_tune = bool(setup.pretrained)
    if fine_tune:
        learn.freeze()
    distributed = num_distrib() > 1
    found = pick_lr(learn, key, spec)
    with data_parallel(learn, setup.device) if distributed else contextlib.nullcontext():
        lr, lr_found, curve = share(found) if distributed else found
        how = f" ({num_distrib()} processes, data-parallel)" if distributed else ""
        say(
            f"{key}: {setup.arch.source} {setup.arch.name}, lr {lr:.2e}{' (lr_find valley)' if lr_found else ''}, "
            f"phases {setup.phases}, {'fine-tune' if fine_tune else 'one-cycle'}, "
            f"{describe(setup.device, setup.dtype)}{how}"
        )
        if live is not None:
            learn.add_cb(live_callback(live))
        avg, snaps = along_the_run(learn, spec, setup, fine_tune)  # after lr_find, whose fit they must not see
        seen, t0, freeze_epochs = fit_phases(learn, spec, setup, fine_tune, lr)
    averaged = avg.finish(learn.dls.train) if avg is not None else None
    train_s = time.perf_counter() - t0
    if not evaluate:
        return release(learn, TrainResult(learn.model, lr))
    states = snaps.states if snaps is not None else None
    fitted = Fitted(learn, setup, spec, lr, lr_found, curve, seen, train_s, freeze_epochs, averaged, states)
    res = evaluate_member(key, fitted, meta, seed, held_out, refit)
    if budget is not None:
        res.metrics.time_budget = budget | {"train_s": res.metrics.train_s}
    return release(learn, res)


def release(learn, res: TrainResult) -> TrainResult:
    """Let go of what training held once a model is evaluated: the learner (optimizer state, the data it uploaded to
    the GPU), the gradients, and on a GPU the models themselves (to the CPU, where they are written from): the next
    fold's or the refit's peak memory is then its own, and memory does not pile up until a full collection."""
    models = [res.model] + [r.model for r in res.snapshots or []]
    for m in models:
        m.zero_grad(set_to_none=True)
    device = next(res.model.parameters(), torch.zeros(0)).device
    if device.type == "cuda":
        for m in models:
            m.cpu()
    learn.opt = learn.dls = None
    learn.model = None
    free_memory(device)
    return res


def run_epochs(spec: TrainSpec, setup: Setup, fine_tune: bool) -> int:
    """The epochs of a run as WeightAverage and Snapshots count them: every phase's, a fine-tune's frozen ones too."""
    return sum(e for _, e in setup.phases) + (spec.freeze_epochs if fine_tune else 0)


def along_the_run(learn, spec: TrainSpec, setup: Setup, fine_tune: bool):
    """The callbacks of `average` and `snapshots`, added to the learner: (WeightAverage or None, Snapshots or None)."""
    epochs = run_epochs(spec, setup, fine_tune)
    avg = snaps = None
    if spec.average != "none":
        avg = WeightAverage(spec.average, epochs, spec.average_decay, spec.average_start)
        learn.add_cb(avg)
    if spec.snapshots:
        snaps = Snapshots(snapshot_epochs(epochs, spec.snapshots))
        learn.add_cb(snaps)
    return avg, snaps


# --------------------------------------------------------------------------------------------- evaluate
def score_on_test(probs: np.ndarray, arrays: dict) -> Score | None:
    """Accuracy and loss on the test split, or None where it has no labels (or no rows)."""
    return Score.of(score(probs, arrays["test_y"])) if "test_y" in arrays and len(arrays["test_y"]) else None


def evaluate_member(
    key: str, f: Fitted, meta: PreparedMeta, seed: int, held_out: tuple | None, refit: bool
) -> TrainResult:
    """Predictions on valid (not for a refit, trained on it), test and the held-out rows; metrics and spec."""
    setup, spec = f.setup, f.spec
    tta = spec.tta and spec.flip  # mirror TTA only where mirrored images were trained on
    inputs = {"test": setup.arrays["test_x"]}
    if not refit and len(setup.arrays["valid_y"]):
        inputs = {"valid": setup.arrays["valid_x"], **inputs}
    if held_out is not None:
        inputs["oof"] = held_out[0]
    predict = predictor(setup, spec, inputs)

    t1 = time.perf_counter()
    preds = predict(f.learn.model)
    metrics = member_metrics(f, preds, held_out, time.perf_counter() - t1)
    res = TrainResult(f.learn.model, f.lr, member_spec(key, f, meta, seed, tta), preds, metrics, f.curve)
    if f.states:
        res.snapshots = [snapshot_member(key, f, res, n, st, predict, held_out) for n, st in sorted(f.states.items())]
        res.metrics.snapshots = [r.spec.key for r in res.snapshots]
    return res


def predictor(setup: Setup, spec: TrainSpec, inputs: dict):
    """predict(model, size=the last phase's): each input's probabilities as the stage evaluates a member (its
    eval batch, precision and device; mirror TTA where it trained on mirrored images), images resized to `size`."""
    tfms: dict[int, BatchTfm] = {}
    tta = spec.tta and spec.flip

    def predict(model, size: int = setup.phases[-1][0]) -> dict[str, np.ndarray]:
        if size not in tfms:
            tfms[size] = BatchTfm(size, setup.mean, setup.std, train=False, channels_last=spec.channels_last)
        return {
            s: predict_probs(model, x, tfms[size], spec.eval_bs, tta, setup.device, setup.dtype, setup.n_out)
            for s, x in inputs.items()
        }

    return predict


def snapshot_member(key: str, f: Fitted, final: TrainResult, epoch: int, state: dict, predict, held_out):
    """One `snapshots` member: the model with the weights of the end of `epoch`, its predictions and records, at the
    image size that epoch trained at (progressive resizing: an earlier phase's weights saw smaller images)."""
    import copy

    model = copy.deepcopy(f.learn.model)
    model.load_state_dict(state)
    size = size_at(f.setup.phases, epoch, f.freeze_epochs)
    t1 = time.perf_counter()
    preds = predict(model, size)
    m = member_metrics(f, preds, held_out, time.perf_counter() - t1)
    m = replace(m, average=None, snapshot_of=key, snapshot_epoch=epoch)
    spec = replace(final.spec, key=f"{key}@e{epoch}", size=size)
    return TrainResult(model, f.lr, spec, preds, m)


def member_metrics(f: Fitted, preds: dict, held_out: tuple | None, eval_s: float) -> MemberMetrics:
    """metrics/<key>.json of one model."""
    setup, arrays = f.setup, f.setup.arrays
    return MemberMetrics(
        valid=Score.of(score(preds["valid"], arrays["valid_y"])) if "valid" in preds else None,
        test=score_on_test(preds["test"], arrays),
        oof=Score.of(score(preds["oof"], held_out[1])) if held_out is not None else None,
        lr=f.lr,
        lr_found=f.lr_found is not None,
        lr_suggested=f.lr_found,
        phases=setup.phases,
        freeze_epochs=f.freeze_epochs,
        bs=setup.bs,
        train_s=round(f.train_s, 2),
        img_per_s=round(f.seen / f.train_s, 1),
        images_seen=int(f.seen),  # the training budget: epochs × training images (frozen epochs included)
        eval_s=round(eval_s, 2),
        param_count=sum(p.numel() for p in f.learn.model.parameters()),
        train_images=int(len(arrays["train_y"])),
        device=str(setup.device),
        precision=dtype_name(setup.dtype),
        peak_gpu_mib=round(torch.cuda.max_memory_allocated(setup.device) / 2**20)
        if setup.device.type == "cuda"
        else None,
        sampler=setup.sampler,
        loss_weights=setup.loss_weights,
        average=f.averaged,
        arch=setup.arch.name,
        source=setup.arch.source,
        pretrained=bool(setup.pretrained),
    )


def member_spec(key: str, f: Fitted, meta: PreparedMeta, seed: int, tta: bool) -> MemberSpec:
    """models/<key>/spec.json: what pipeline.commands.predict rebuilds the model from."""
    setup, spec = f.setup, f.spec
    return MemberSpec(
        key=key,
        arch=setup.arch.name,
        source=setup.arch.source,
        n_in=setup.n_in,
        n_out=setup.n_out,
        size=setup.phases[-1][0],
        native_size=setup.native,
        mean=list(map(float, setup.mean)),
        std=list(map(float, setup.std)),
        classes=meta.classes,
        ps=spec.ps,
        model_kwargs=spec.model_kwargs,
        pretrained=setup.pretrained,
        tta=tta,
        channels_last=spec.channels_last,
        precision=dtype_name(setup.dtype),  # pipeline.commands.predict evaluates with the same autocast on the same
        device=str(setup.device),  # device type, so it reproduces preds/; elsewhere with that device's own
        seed=seed,
        train=spec.to_dict(),
    )


# --------------------------------------------------------------------------------------------- write
def versions() -> dict:
    """The library versions a model was trained with (models/<key>/versions.json)."""
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


def save_lr_plot(curve: dict, path: Path, lr: float) -> None:
    """lr_find's curve with the chosen lr, as a PNG."""
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
    if res.lr_curve:
        points = [{"lr": a, "loss": b} for a, b in zip(res.lr_curve["lr"], res.lr_curve["loss"])]
        live.log_plot("lr_find", points, x="lr", y="loss", template="linear", title=f"lr_find: {res.spec.key}")
        (live_dir / "plots" / "images").mkdir(parents=True, exist_ok=True)
        save_lr_plot(res.lr_curve, live_dir / "plots" / "images" / "lr_find.png", res.lr)
    else:  # a fixed lr: no curve, but the declared plot file exists
        (live_dir / "plots" / "custom").mkdir(parents=True, exist_ok=True)
        (live_dir / "plots" / "custom" / "lr_find.json").write_text("[]\n")
    live.end()
    write_model(res, model_dir)
    (model_dir / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
    save_preds(preds_dir, res.preds)
    save_member_metrics(metrics_file, res.metrics)
    for snap in res.snapshots or []:  # `snapshots`: each a member of its own, inside the entry's folders
        sub = snapshot_folder(snap.spec.key)
        write_model(snap, model_dir / sub)
        save_preds(preds_dir / sub, snap.preds)
        save_member_metrics(preds_dir / sub / "metrics.json", snap.metrics)


def write_model(res: TrainResult, folder: Path) -> None:
    """A member's weights and spec.json into folder (with folds: one sub-folder per fold model, named by the spec)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    saved = list(zip(res.spec.folds, res.folds)) if res.folds else [(".", res)]
    for sub, r in saved:
        (folder / sub).mkdir(exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in r.model.state_dict().items()}
        save_file(state, str(folder / sub / "model.safetensors"))
        save_member_spec(folder / sub / "spec.json", r.spec)
    save_member_spec(folder / "spec.json", res.spec)  # with folds: names their folders
