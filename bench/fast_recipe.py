"""Benchmark 3 and 4: the fast recipe's time-to-accuracy on full Fashion-MNIST, and its share of the machine.

A recipe is a named train spec (below) trained through the pipeline's own train_arch on data/prepared.
Reports training seconds (lr_find excluded: the recipes fix their lr), test accuracy, and the achieved training
FLOP/s (3 × forward FLOPs per image, counted by torch.utils.flop_counter, × images/s) as a fraction of a
matrix multiply's FLOP/s measured in the same run, in fp32 and bf16.
Writes bench/results/fast_recipe_<name>_<epochs>ep.{json,md}.
Run:    python bench/fast_recipe.py [--recipe fast] [--epochs N]    (needs data/prepared: `dvc repro prepare`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from pipeline import archs, train  # noqa: E402
from pipeline.data import load_prepared  # noqa: E402
from pipeline.params import TRAIN_SCHEMA, check_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    # the speed-record ResNet-9 shape at a quarter of the default width: 1/8 of resnet9's FLOPs per image
    "fast": {"arch": "resnet9", "model_kwargs": {"widths": [16, 32, 64, 128]}, "epochs": 4, "lr": 5e-3, "bs": 128,
             "label_smoothing": 0.1, "pad": 2, "flip": True, "tta": True},
    # the default params' resnet9 entry, for comparison
    "resnet9": {"arch": "resnet9", "model_kwargs": {"widths": [32, 64, 128, 256]}, "epochs": 2, "lr": 5e-3},
}  # fmt: skip


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


def forward_flops(spec: dict, n_in: int, n_out: int, size: int) -> float:
    model, _ = archs.build_model(archs.resolve(spec["arch"]), n_in, n_out, size, model_kwargs=spec.get("model_kwargs"))
    x = torch.randn(8, n_in, size, size)
    with FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() / 8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="fast", choices=sorted(RECIPES))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    arrays, meta = load_prepared(ROOT / "data" / "prepared")
    spec = dict(RECIPES[args.recipe])
    if args.epochs:
        spec["epochs"] = args.epochs
    spec = check_section(spec, TRAIN_SCHEMA, args.recipe)
    h, _, n_in = meta["image_shape"]
    res = train.train_arch(args.recipe, spec, arrays, meta, args.seed)
    m = res["metrics"]
    fwd = forward_flops(spec, n_in, len(meta["classes"]), h)
    achieved = 3 * fwd * m["img_per_s"]
    peak = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}
    out = {"recipe": args.recipe, "spec": spec, "test_acc": m["test"]["accuracy"], "valid_acc": m["valid"]["accuracy"],
           "train_s": m["train_s"], "img_per_s": m["img_per_s"], "precision": m["precision"],
           "forward_flops_per_image": fwd, "achieved_train_flop_s": achieved,
           "matmul_flop_s": peak, "fraction_of_matmul": {k: achieved / v for k, v in peak.items()},
           "threads": torch.get_num_threads(), "device": m["device"]}  # fmt: skip
    dest = ROOT / "bench" / "results"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"fast_recipe_{args.recipe}_{spec['epochs']}ep.json").write_text(json.dumps(out, indent=2) + "\n")
    md = (f"`python bench/fast_recipe.py --recipe {args.recipe}" + (f" --epochs {args.epochs}`" if args.epochs else "`")
          + f"\n\n| recipe | epochs | train s | test acc | img/s | train GFLOP/s | of fp32 matmul | of bf16 matmul |\n"
          "|---|---|---|---|---|---|---|---|\n"
          f"| {args.recipe} | {spec['epochs']} | {m['train_s']:.0f} | {m['test']['accuracy']:.4f} | {m['img_per_s']:.0f} | "
          f"{achieved / 1e9:.1f} | {out['fraction_of_matmul']['fp32']:.2f} | {out['fraction_of_matmul']['bf16']:.2f} |\n"
          f"\nmatmul 1024²: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s; "
          f"{torch.get_num_threads()} threads, device {m['device']}, precision {m['precision']}\n")  # fmt: skip
    (dest / f"fast_recipe_{args.recipe}_{spec['epochs']}ep.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
