"""Benchmark 1: training images/s of the pipeline's fastai learner against a bare PyTorch loop.

Same model (built by pipeline.learn.archs), batch size, precision, thread count and in-memory data; the bare loop
also applies the pipeline's batch transform (uint8 -> float, flip, translation, normalisation), so the gap is
the learner's own overhead (callbacks, recorder, metrics, fastai's DataLoader). Runs alternate in one process,
pipeline then bare, `--rounds` times; the ratio is of the medians. Only the training loop is timed (fastai's
before_train/after_train), not validation. Writes bench/results/overhead.{json,md}.
Run:    python -m bench.overhead [--images 4000] [--rounds 3] [--archs resnet34:32 fast:28]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from fastai.callback.core import Callback

from bench.fast_recipe import entry_spec
from bench.machine import add_paths, machine, out_dir, write_json, write_text
from pipeline import prepare
from pipeline.data import array_formats
from pipeline.data.loaders import BatchTfm, to_tensor
from pipeline.inspect.tables import markdown_table
from pipeline.learn import archs, recipe
from pipeline.params import arch_names, load_params, make_spec


class TrainTimer(Callback):
    """The seconds of an epoch's training pass alone (not its validation), the GPU's queue drained at both ends."""

    order = -100

    def sync(self):
        if next(self.learn.model.parameters()).is_cuda:
            torch.cuda.synchronize()

    def before_train(self):
        self.sync()
        self.t0 = time.perf_counter()

    def after_train(self):
        self.sync()
        self.seconds = time.perf_counter() - self.t0


def bare_epoch(model, x, y, tfm, bs, dtype, device, lr=1e-3) -> float:
    """One epoch of a plain loop: shuffled batches (the last partial one dropped, as the pipeline's), the same batch
    transform, AdamW, label-smoothed loss, at the pipeline's precision: bf16 autocast, or fp16 with a gradient
    scaler as fastai's MixedPrecision (GPUs without bf16), or fp32. `x`, `y` may already be on `device`."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    idx = torch.randperm(len(y), device=x.device)
    for i in range(0, len(y) - len(y) % bs, bs):
        j = idx[i : i + bs]
        xb, yb = tfm((x[j].to(device, non_blocking=True), y[j].to(device, non_blocking=True)))
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model(xb), yb)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.overhead"))
    ap.add_argument("--images", type=int, default=4000, help="training images per timed epoch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument(
        "--archs",
        nargs="+",
        default=["resnet34:32", "fast:28"],
        help="name:size; a key of params.yaml's archs (its arch and model_kwargs), else a model name",
    )
    args = ap.parse_args(argv)

    raw = array_formats.read_mnist_like("fashion-mnist", None, download=True)
    arrays, meta = prepare.prepare(raw, 0.1, 0, limit=args.images + 500, test_limit=100)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results, keys = {}, arch_names(load_params(args.root / "params.yaml"))
    for item in args.archs:
        name, size = item.split(":")
        base = (
            {
                k: v
                for k, v in entry_spec(name, args.root / "params.yaml").to_dict().items()
                if k in ("arch", "model_kwargs")
            }
            if name in keys
            else {"arch": name}
        )
        spec = make_spec({**base, "size": int(size), "epochs": 1, "bs": args.bs, "lr": 1e-3}, name)
        learn, setup = recipe.build_learner(name, spec, arrays, meta, seed=0, device=device)
        timer = TrainTimer()
        learn.add_cb(timer)
        dtype = setup.dtype
        bare_model = archs.build_model(
            setup.arch, setup.n_in, setup.n_out, setup.native, model_kwargs=spec.model_kwargs
        )[0]
        bare_model = bare_model.to(device, memory_format=torch.channels_last)
        x, y = to_tensor(setup.arrays["train_x"]), torch.from_numpy(setup.arrays["train_y"])
        tfm = BatchTfm(int(size), setup.mean, setup.std, True, spec.flip, spec.pad, spec.channels_last)
        n = len(y) - len(y) % args.bs
        pipe, bare = [], []
        with learn.no_logging():
            learn.fit(1, 1e-3)  # warm-up of both
            bare_epoch(bare_model, x, y, tfm, args.bs, dtype, device)
            for r in range(args.rounds):
                learn.fit(1, 1e-3)
                pipe.append(n / timer.seconds)
                bare.append(n / bare_epoch(bare_model, x, y, tfm, args.bs, dtype, device))
                print(f"{name}@{size} round {r}: pipeline {pipe[-1]:.1f} img/s, bare {bare[-1]:.1f} img/s", flush=True)
        results[item] = {
            "pipeline_img_s": pipe,
            "bare_img_s": bare,
            "precision": str(dtype or "fp32"),
            "ratio": statistics.median(pipe) / statistics.median(bare),
        }
    saved = {k: v for k, v in vars(args).items() if k not in ("root", "out")}
    out = {"args": saved, "machine": machine(), "device": str(device), "results": results}
    OUT = out_dir(args)
    write_json(OUT / "overhead.json", out)
    md = (
        f"Pipeline learner vs bare PyTorch loop, training images/s (median of {args.rounds} alternating rounds, "
        f"{args.images} images, bs {args.bs}), `python -m bench.overhead`\n\n"
    )
    md += markdown_table(
        ["model @ size", "precision", "pipeline img/s", "bare img/s", "ratio (goal ≥ 0.95)"],
        [
            [k, v["precision"], f"{statistics.median(v['pipeline_img_s']):.1f}"]
            + [f"{statistics.median(v['bare_img_s']):.1f}", f"{v['ratio']:.3f}"]
            for k, v in results.items()
        ],
    )
    md += f"\nMachine: {out['machine']}, device {device}\n"
    write_text(OUT / "overhead.md", md)
    print(md)


if __name__ == "__main__":
    main()
