"""Benchmark 3 and 4: the fast recipe's time-to-accuracy on full Fashion-MNIST, and its share of the machine.

A recipe is an entry of params.yaml's `archs` (default `fast`, the from-scratch recipe), with the `train`
defaults it inherits, trained through the stage's own train_entry on data/prepared — what `dvc repro train@fast`
runs, without DVC around it.
Reports training seconds (lr_find excluded: the recipes fix their lr), test accuracy, and the achieved training
FLOP/s (3 × forward FLOPs per image, counted by torch.utils.flop_counter, × images/s) as a fraction of a
matrix multiply's FLOP/s measured in the same run, in fp32 and bf16.
Writes bench/results/fast_recipe_<name>_<size>px<epochs>ep[-...]-bs<bs>.{json,md}.
Run:    python -m bench.fast_recipe [--recipe fast] [--epochs N | --phases 20:2,28:3] [--bs B] [--precision native|fp32|bf16|...]
        (needs data/prepared: `dvc repro prepare`)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.machine import ROOT, add_paths, out_dir, train_member, write_json, write_text
from pipeline.artifacts import load_prepared
from pipeline.inspect.tables import markdown_table
from pipeline.learn import archs
from pipeline.params import TRAIN_SCHEMA, TrainSpec, load_params, make_spec, train_spec


def entry_spec(name: str = "fast", params_file: Path = ROOT / "params.yaml") -> TrainSpec:
    """The checked train spec of `archs.<name>` in params.yaml."""
    return train_spec(load_params(params_file), name)


def matmul_flops(dtype: torch.dtype, n: int = 1024, seconds: float = 3.0) -> float:
    """FLOP/s of an n×n matrix multiply, repeated for about `seconds` (bf16 is very slow on CPUs without
    AVX512-BF16/AMX, so a fixed repeat count could take minutes)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    reps, t = 0, time.perf_counter()
    while reps == 0 or time.perf_counter() - t < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t)


def forward_flops(spec: TrainSpec, n_in: int, n_out: int, size: int) -> float:
    model, _ = archs.build_model(archs.resolve(spec.arch), n_in, n_out, size, model_kwargs=spec.model_kwargs)
    x = torch.randn(8, n_in, size, size)
    with FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() / 8


def main(argv: list[str] | None = None) -> None:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.fast_recipe"))
    ap.add_argument("--recipe", default="fast", help="a key of params.yaml's archs")
    ap.add_argument("--epochs", type=int, default=None, help="one phase of N epochs at the prepared size")
    ap.add_argument("--phases", default=None, help="progressive resizing, size:epochs,... e.g. 20:2,28:3")
    ap.add_argument("--bs", type=int, default=None, help="training batch size (default: the entry's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--precision",
        choices=TRAIN_SCHEMA["precision"][1].choices,  # the entry's own choices (pipeline/params.py)
        default=None,
        help="default: the entry's (params.yaml); native: bf16 where the CPU computes it, else fp32",
    )
    ap.add_argument("--matmul-s", type=float, default=3.0, help="seconds of each matrix-multiply measurement")
    args = ap.parse_args(argv)
    prep = load_prepared(args.root)
    arrays, meta = prep.arrays, prep.meta
    overrides = {}
    if args.epochs:
        overrides |= {"epochs": args.epochs, "phases": None}
    if args.bs:
        overrides["bs"] = args.bs
    if args.precision:
        overrides["precision"] = args.precision
    if args.phases:
        overrides["phases"] = [[int(v) for v in p.split(":")] for p in args.phases.split(",")]
    spec = make_spec({**entry_spec(args.recipe, args.root / "params.yaml").to_dict(), **overrides}, args.recipe)
    h, _, n_in = meta.image_shape
    res = train_member(args.recipe, spec, arrays, meta, args.seed)
    m = res.metrics
    per_epoch = m.train_images - m.train_images % spec.bs  # drop_last
    train_flops = sum(3 * forward_flops(spec, n_in, len(meta.classes), sz) * ep * per_epoch for sz, ep in m.phases)
    fwd = forward_flops(spec, n_in, len(meta.classes), h)
    achieved = train_flops / m.train_s  # validation passes inside train_s are not counted: a lower bound
    peak = {k: matmul_flops(d, seconds=args.matmul_s) for k, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    out = {
        "recipe": args.recipe,
        "spec": spec.to_dict(),
        "test_acc": m.test.accuracy,
        "valid_acc": m.valid.accuracy,
        "train_s": m.train_s,
        "img_per_s": m.img_per_s,
        "precision": m.precision,
        "forward_flops_per_image": fwd,
        "achieved_train_flop_s": achieved,
        "matmul_flop_s": peak,
        "fraction_of_matmul": {k: achieved / v for k, v in peak.items()},
        "threads": torch.get_num_threads(),
        "device": m.device,
    }
    dest = out_dir(args)
    # file tag: 28px5ep-bs128, 20px2ep-28px3ep-bs64, ...
    tag = "-".join(f"{size}px{ep}ep" for size, ep in m.phases) + f"-bs{spec.bs}"
    tag += f"-{args.precision}" if args.precision else ""
    epochs = sum(ep for _, ep in m.phases)
    cmd = "python -m bench.fast_recipe " + " ".join(sys.argv[1:] if argv is None else argv)
    write_json(dest / f"fast_recipe_{args.recipe}_{tag}.json", {**out, "command": cmd})
    header = ["recipe", "phases (size × epochs)", "train s", "valid acc", "test acc", "img/s", "train GFLOP/s"]
    row = [args.recipe, f"{', '.join(f'{sz} × {ep}' for sz, ep in m.phases)} ({epochs} epochs)", f"{m.train_s:.0f}"]
    row += [f"{m.valid.accuracy:.4f}", f"{m.test.accuracy:.4f}", f"{m.img_per_s:.0f}", f"{achieved / 1e9:.1f}"]
    row += [f"{out['fraction_of_matmul'][p]:.2f}" for p in ("fp32", "bf16")]
    md = (
        f"`{cmd.strip()}`\n\n"
        + markdown_table([*header, "of fp32 matmul", "of bf16 matmul"], [row])
        + f"\nmatmul 1024²: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s; "
        f"{torch.get_num_threads()} threads, device {m.device}, precision {m.precision}; "
        f"training FLOPs: 3 × forward FLOPs per image at each phase's size (validation passes not counted)\n"
    )
    write_text(dest / f"fast_recipe_{args.recipe}_{tag}.md", md)
    print(md)


if __name__ == "__main__":
    main()
