"""Stage `train@<key>`: train one architecture from params.yaml `archs.<key>` (over `train:` defaults).

Reads:  data/prepared/, params.yaml (`seed`, `train`, `archs.<key>`).
Writes: models/<key>/ (model.safetensors, spec.json, versions.json), preds/<key>/{valid,test}.npy,
        metrics/<key>.json, dvclive/<key>/ (training curves, lr_find curve) — all whole or not at all.
Run:    dvc repro train@<key>    (or: python -m pipeline.train <key>)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import fastai.callback.schedule  # noqa: F401 - patches Learner with lr_find, fit_one_cycle, fine_tune
import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.distributed import DistributedDL, DistributedTrainer, num_distrib, rank_distrib
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed, trainable_params

from pipeline import archs as archs_mod
from pipeline.data import BatchTfm, load_prepared, make_dls, to_tensor
from pipeline.errors import PipelineError
from pipeline.io import staged
from pipeline.params import load_params, seed_param, train_spec


# --------------------------------------------------------------------------------------------- hardware
def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matmuls and convolutions run natively."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(name: str, key: str = "") -> torch.device | None:
    """`device` param -> torch.device; None (auto) lets train_arch take cuda when present. A GPU that is not
    there is an error before training."""
    if name == "auto":
        return None
    dev = torch.device(name)
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise PipelineError(f"params.yaml: `archs.{key}.device` = {name!r}, but this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s)")  # fmt: skip
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"params.yaml: `archs.{key}.device` = 'mps', but MPS is not available here")
    return dev


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None = fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16":
        raise PipelineError("params.yaml: `precision: fp16` needs a CUDA device; use bf16 or fp32 on a CPU")
    if precision == "bf16" or cpu_has_bf16():
        return torch.bfloat16
    return None


class Autocast(Callback):
    """bfloat16 autocast for forward and loss (as fastai's MixedPrecision, without a grad scaler)."""

    order = 10

    def __init__(self, device_type: str, dtype: torch.dtype):
        self.device_type, self.dtype = device_type, dtype

    def before_batch(self):
        self.ctx = torch.autocast(self.device_type, dtype=self.dtype)
        self.ctx.__enter__()

    def after_pred(self):
        self.learn.pred = self.pred.float()

    def after_loss(self):
        self.ctx.__exit__(None, None, None)


class StopOnNaN(Callback):
    """Stop with an error, saying where, as soon as the training loss is not finite."""

    order = 11

    def __init__(self, key: str):
        self.key = key

    def after_loss(self):
        if self.training and not torch.isfinite(self.loss).all():
            raise PipelineError(
                f"{self.key}: training loss became {self.loss.item()} at epoch {self.epoch + 1}, batch {self.iter + 1}; "
                "nothing was written. Lower `lr`, or check the data"
            )


def epoch_logger(log) -> None:
    """One plain line per epoch (and the header) when the console is not a terminal."""
    print("  ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in log), flush=True)


def make_live_callback(live):
    from dvclive.fastai import DVCLiveCallback

    class PhasedDVCLive(DVCLiveCallback):
        """dvclive's fastai callback, kept open across fits (phases); the stage ends the Live itself."""

        def after_fit(self):
            pass

    return PhasedDVCLive(live=live)


# --------------------------------------------------------------------------------------------- evaluation
def predict_probs(model: torch.nn.Module, x: np.ndarray, tfm: BatchTfm, bs: int, tta: bool, device: torch.device,
                  dtype: torch.dtype | None) -> np.ndarray:  # fmt: skip
    """Class probabilities for uint8 N×H×W×C images, in row order; tta averages with the mirror image."""
    model.eval()
    out = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(0, len(x), bs):
            (xb,) = tfm((to_tensor(x[i : i + bs]).to(device),))
            p = F.softmax(model(xb).float(), dim=1)
            if tta:
                p = (p + F.softmax(model(xb.flip(3)).float(), dim=1)) / 2
            out.append(p.cpu())
    n_cls = out[0].shape[1] if out else 0
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, n_cls), np.float32)


def score(probs: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy and log-loss of probabilities against labels."""
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return {"accuracy": float((probs.argmax(1) == y).mean()), "loss": float(-np.log(p).mean())}


def versions() -> dict:
    import fastai
    import timm
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "fastai": fastai.__version__, "timm": timm.__version__, "numpy": np.__version__,
            "machine": platform.machine(), "cuda": torch.version.cuda if torch.cuda.is_available() else None}  # fmt: skip


# --------------------------------------------------------------------------------------------- training
def build_learner(key: str, spec: dict, arrays: dict, meta: dict, seed: int, device: torch.device | None = None):
    """The fastai Learner of one architecture at its first phase's size, and what training it needs next:
    (learn, ctx) with ctx = arch, phases, pretrained, mean, std, dtype, device, dls_at (DataLoaders at a size)."""
    if device is None:  # under torchrun / accelerate launch each process takes its own GPU
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    set_seed(seed, reproducible=True)
    arch = archs_mod.resolve(spec["arch"])
    h, _, n_in = meta["image_shape"]
    n_out = len(meta["classes"])
    phases = spec["phases"] or [[spec["size"] or h, spec["epochs"]]]
    pretrained = spec["pretrained"]
    if spec["train_limit"] and spec["train_limit"] < len(arrays["train_y"]):
        from pipeline.prepare import stratified_subset

        keep = stratified_subset(arrays["train_y"], spec["train_limit"], seed)
        arrays = {**arrays, "train_x": arrays["train_x"][keep], "train_y": arrays["train_y"][keep]}
    mean, std = archs_mod.norm_stats(arch, pretrained, n_in, meta["train_mean"], meta["train_std"])
    dtype = pick_dtype(spec["precision"], device)
    try:
        model, splitter = archs_mod.build_model(arch, n_in, n_out, h, pretrained, spec["ps"], spec["model_kwargs"])
    except PipelineError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a hub download refused offline
        how = (
            " (pretrained: true downloads weights; offline, give a weights file path instead)"
            if pretrained is True
            else ""
        )
        raise PipelineError(f"{key}: cannot build {arch.name}{how}: {type(e).__name__}: {e}") from e
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)

    def dls_at(size):
        return make_dls(arrays, size, spec["bs"], mean, std, spec["flip"], spec["pad"], device, spec["eval_bs"],
                        spec["channels_last"])  # fmt: skip

    cbs = [StopOnNaN(key)] + ([Autocast(device.type, dtype)] if dtype is not None else [])
    learn = Learner(dls_at(phases[0][0]), model, loss_func=CrossEntropyLossFlat(label_smoothing=spec["label_smoothing"]),
                    metrics=accuracy, wd=spec["wd"], splitter=splitter or trainable_params, cbs=cbs)  # fmt: skip
    if not sys.stdout.isatty():
        learn.remove_cb(ProgressCallback)
        learn.logger = epoch_logger
    ctx = {"arch": arch, "phases": phases, "pretrained": pretrained, "mean": mean, "std": std, "dtype": dtype,
           "device": device, "dls_at": dls_at, "n_in": n_in, "n_out": n_out, "native": h, "arrays": arrays}  # fmt: skip
    return learn, ctx


# --------------------------------------------------------------------------------------------- data-parallel
class AnyBackendDL(DistributedDL):
    """fastai's DistributedDL, whose shuffled-order broadcast also works on gloo (CPU processes): fastai sends
    it through a CUDA tensor, which only nccl needs."""

    def _broadcast(self, t, rank):
        if torch.distributed.get_backend() == "nccl":
            return super()._broadcast(t, rank)
        t = torch.tensor(t, dtype=torch.long)
        torch.distributed.broadcast(t, rank)
        return t.tolist()


class AnyBackendTrainer(DistributedTrainer):
    """fastai's DistributedTrainer (DDP through Accelerate) with AnyBackendDL."""

    def _wrap_dl(self, dl):
        return dl if isinstance(dl, DistributedDL) else AnyBackendDL(dl, device=self.learn.model.device)


@contextlib.contextmanager
def data_parallel(learn: Learner, device: torch.device):
    """fastai's learn.distrib_ctx() for processes launched by torchrun or `accelerate launch`: NCCL with
    SyncBatchNorm on GPUs, gloo on CPU processes (Accelerate's cpu=True)."""
    kw = {"sync_bn": True} if device.type == "cuda" else {"sync_bn": False, "cpu": True}
    learn.add_cb(AnyBackendTrainer(**kw))
    if rank_distrib():
        learn.remove_cb(ProgressCallback)
    try:
        yield learn
    finally:
        learn.detach_distributed()


def pick_lr(learn: Learner, key: str, spec: dict) -> tuple[float | None, float | None, dict | None]:
    """(lr used, lr_find's valley or None, the lr_find curve or None).

    Data-parallel runs call this before the process group exists, and only rank 0 runs lr_find, as one process
    (fastai's lr_find restores the weights from a rank-0-only file behind a barrier, and gathers losses across
    ranks); `share_lr` then gives its result to every rank. Other ranks get (None, None, None) here."""
    lr_found, curve = None, None
    if spec["lr"] == "auto":
        if rank_distrib() > 0:
            return None, None, None
        with learn.no_logging(), single_process():
            sugg = learn.lr_find(num_it=spec["num_it"], show_plot=False)
        lr_found = float(sugg.valley)
        curve = {"lr": [float(v) for v in learn.recorder.lrs], "loss": [float(v) for v in learn.recorder.losses]}
        if not math.isfinite(lr_found) or lr_found <= 0:
            raise PipelineError(f"{key}: lr_find gave no usable learning rate ({lr_found}); set `lr` to a number")
    return (lr_found if lr_found is not None else spec["lr"]), lr_found, curve


@contextlib.contextmanager
def single_process():
    """Within: fastai sees one process (WORLD_SIZE=1), so rank 0's lr_find neither gathers nor waits on ranks
    that are not running it. Restored on exit."""
    old = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = old


def share_lr(found: tuple) -> tuple:
    """Rank 0's (lr, valley, curve) on every rank: all ranks must follow the same schedule."""
    box = list(found)
    torch.distributed.broadcast_object_list(box, src=0)
    return tuple(box)


def fit_phases(learn: Learner, spec: dict, phases: list, fine_tune: bool, lr: float, dls_at) -> tuple[int, float, int]:
    """Train through the phases: fine_tune (frozen epochs first) for pretrained nets, one-cycle otherwise.
    Returns (training images seen, start time, frozen epochs)."""
    seen, t0 = 0, time.perf_counter()
    freeze_epochs = spec["freeze_epochs"] if fine_tune else 0
    for i, (size, epochs) in enumerate(phases):
        if i:
            learn.dls = dls_at(size)
        n_batches = len(learn.dls.train)
        if fine_tune and i == 0 and freeze_epochs:
            learn.fine_tune(epochs, base_lr=lr, freeze_epochs=freeze_epochs, lr_mult=spec["lr_mult"],
                            pct_start=spec["pct_start"])  # fmt: skip
            seen += freeze_epochs * n_batches * spec["bs"]
        elif fine_tune:
            learn.unfreeze()
            top = lr / 2
            learn.fit_one_cycle(epochs, slice(top / spec["lr_mult"], top), pct_start=spec["pct_start"])
        else:
            learn.fit_one_cycle(epochs, lr, pct_start=spec["pct_start"])
        seen += epochs * n_batches * spec["bs"]
    return seen, t0, freeze_epochs


def train_arch(key: str, spec: dict, arrays: dict, meta: dict, seed: int, device: torch.device | None = None,
               live=None, evaluate: bool = True) -> dict:  # fmt: skip
    """Train one architecture; returns the model, its spec, predictions, metrics and the lr_find curve."""
    learn, ctx = build_learner(key, spec, arrays, meta, seed, device)
    arch, phases, pretrained, mean, std = ctx["arch"], ctx["phases"], ctx["pretrained"], ctx["mean"], ctx["std"]
    dtype, device, dls_at, arrays = ctx["dtype"], ctx["device"], ctx["dls_at"], ctx["arrays"]
    n_in, n_out, h = ctx["n_in"], ctx["n_out"], ctx["native"]
    fine_tune = bool(pretrained)
    if fine_tune:
        learn.freeze()

    distributed = num_distrib() > 1
    found = pick_lr(learn, key, spec)
    with data_parallel(learn, device) if distributed else contextlib.nullcontext():
        lr, lr_found, curve = share_lr(found) if distributed else found
        if rank_distrib() == 0:
            how = f" ({num_distrib()} processes, data-parallel)" if distributed else ""
            print(f"{key}: {arch.source} {arch.name}, lr {lr:.2e}{' (lr_find valley)' if lr_found else ''}, "
                  f"phases {phases}, {'fine-tune' if fine_tune else 'one-cycle'}, precision {dtype or 'fp32'}{how}",
                  flush=True)  # fmt: skip
        if live is not None:
            learn.add_cb(make_live_callback(live))
        seen, t0, freeze_epochs = fit_phases(learn, spec, phases, fine_tune, lr, dls_at)
    train_s = time.perf_counter() - t0
    if not evaluate:
        return {"model": learn.model, "lr": lr}

    size = phases[-1][0]
    tfm = BatchTfm(size, mean, std, train=False, channels_last=spec["channels_last"])
    tta = spec["tta"] and spec["flip"]  # mirror TTA only where mirrored images were trained on
    t1 = time.perf_counter()
    preds = {s: predict_probs(learn.model, arrays[f"{s}_x"], tfm, spec["eval_bs"], tta, device, dtype)
             for s in ("valid", "test")}  # fmt: skip
    eval_s = time.perf_counter() - t1
    metrics = {
        "valid": score(preds["valid"], arrays["valid_y"]),
        "test": score(preds["test"], arrays["test_y"]) if "test_y" in arrays and len(arrays["test_y"]) else None,
        "lr": lr, "lr_found": lr_found is not None, "lr_suggested": lr_found,
        "phases": phases, "freeze_epochs": freeze_epochs,
        "train_s": round(train_s, 2), "img_per_s": round(seen / train_s, 1), "eval_s": round(eval_s, 2),
        "param_count": sum(p.numel() for p in learn.model.parameters()),
        "train_images": int(len(arrays["train_y"])), "device": str(device), "precision": str(dtype or "fp32"),
        "arch": arch.name, "source": arch.source, "pretrained": bool(pretrained),
    }  # fmt: skip
    model_spec = {
        "key": key, "arch": arch.name, "source": arch.source, "n_in": n_in, "n_out": n_out, "size": size,
        "native_size": h, "mean": list(map(float, mean)), "std": list(map(float, std)), "classes": meta["classes"],
        "ps": spec["ps"], "model_kwargs": spec["model_kwargs"], "pretrained": pretrained, "tta": tta,
        "channels_last": spec["channels_last"], "seed": seed, "train": spec,
    }  # fmt: skip
    return {"model": learn.model, "spec": model_spec, "preds": preds, "metrics": metrics, "lr_curve": curve}


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


def main(key: str, params_file: str = "params.yaml", root: Path = Path(".")) -> dict:
    from dvclive import Live
    from safetensors.torch import save_file

    params = load_params(params_file)
    spec, seed = train_spec(params, key), seed_param(params)
    archs_mod.resolve(spec["arch"])  # unknown names fail before loading data
    device = pick_device(spec["device"], key)
    arrays, meta = load_prepared(root / "data/prepared")
    if rank_distrib() > 0:  # data-parallel: the other ranks train in step; rank 0 alone evaluates and writes
        return train_arch(key, spec, arrays, meta, seed, device=device, evaluate=False)
    outs = [root / "models" / key, root / "preds" / key, root / "metrics" / f"{key}.json", root / "dvclive" / key]
    with staged(*outs) as (model_dir, preds_dir, metrics_file, live_dir):
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
        res = train_arch(key, spec, arrays, meta, seed, device=device, live=live)
        if res["lr_curve"]:
            live.log_plot("lr_find", [{"lr": a, "loss": b} for a, b in zip(res["lr_curve"]["lr"], res["lr_curve"]["loss"])],
                          x="lr", y="loss", template="linear", title=f"lr_find: {key}")  # fmt: skip
            (live_dir / "plots" / "images").mkdir(parents=True, exist_ok=True)
            save_lr_plot(res["lr_curve"], live_dir / "plots" / "images" / "lr_find.png", res["metrics"]["lr"])
        else:  # a fixed lr: no curve, but the declared plot file exists
            (live_dir / "plots" / "custom").mkdir(parents=True, exist_ok=True)
            (live_dir / "plots" / "custom" / "lr_find.json").write_text("[]\n")
        live.end()
        model_dir.mkdir(exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in res["model"].state_dict().items()}
        save_file(state, str(model_dir / "model.safetensors"))
        (model_dir / "spec.json").write_text(json.dumps(res["spec"], indent=2) + "\n")
        (model_dir / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
        preds_dir.mkdir(exist_ok=True)
        for split, p in res["preds"].items():
            np.save(preds_dir / f"{split}.npy", p, allow_pickle=False)
        metrics_file.write_text(json.dumps(res["metrics"], indent=2) + "\n")
    m = res["metrics"]
    test = f", test acc {m['test']['accuracy']:.4f}" if m["test"] else ""
    print(f"{key}: valid acc {m['valid']['accuracy']:.4f}{test}, {m['train_s']:.0f} s, {m['img_per_s']:.0f} img/s")
    return res


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipeline.train <key of archs: in params.yaml>")
    try:
        main(sys.argv[1])
    except PipelineError as e:
        sys.exit(f"error: {e}")
