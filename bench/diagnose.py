"""Does the report call out a model that learned nothing? A Kaggle-layout folder through the pipeline.

Builds its own Kaggle-style data set from Fashion-MNIST (digits in --small mode, or where Fashion-MNIST is absent):
train/<id>.png with trainLabels.csv, test/<id>.png with sampleSubmission.csv (`data.name: kaggle-csv`). Then runs
the stages in-process (prepare, train, ensemble, report) on two entries: `resnet34` for one epoch of 3 000 images
at batch 128 from scratch (23 optimizer steps: the setting that scored chance on hidden data sets), and the
project's `mlp` (which learns). Records each model's validation score, chance, its optimizer steps and the flags
the report raised (pipeline.inspect.diagnose), and whether the stage's log names them.
Writes bench/results/diagnose.{json,md} (--out).
Run:    python -m bench.diagnose [--small]   (full: a couple of minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import yaml

from bench.machine import add_paths, cpu_name, out_dir, write_json, write_text
from pipeline.inspect.tables import markdown_table

FULL = {"train": 3000, "test": 500, "limit": None}
SMALL = {"train": 120, "test": 20, "limit": None}


def make_kaggle(root: Path, small: bool) -> Path:
    """The Kaggle layout from real images: ids 1..n in train/ and test/, labels by class name."""
    from PIL import Image

    from bench.scale import source_images

    cfg = SMALL if small else FULL
    x, y, _ = source_images(small)
    stamp = root / ".complete"
    if stamp.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(y))[: cfg["train"] + cfg["test"]]
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    labels, sample = ["id,label"], ["id,label"]
    for j, i in enumerate(rows):
        split, n = ("train", j + 1) if j < cfg["train"] else ("test", j - cfg["train"] + 1)
        Image.fromarray(x[i]).save(root / split / f"{n}.png")
        (labels if split == "train" else sample).append(f"{n},{f'c{y[i]}' if split == 'train' else 'c0'}")
    (root / "trainLabels.csv").write_text("\n".join(labels) + "\n")
    (root / "sampleSubmission.csv").write_text("\n".join(sample) + "\n")
    stamp.write_text("made\n")
    return root


def params(raw: Path, small: bool) -> dict:
    """The project's params.yaml: the Kaggle folder as `data:`, two entries."""
    from bench.machine import ROOT

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"] = {"name": "kaggle-csv", "path": str(raw), "size": 28, "valid_pct": 0.2}
    r34 = {"epochs": 1, "bs": 128, "size": 28, "lr": 0.001, "tta": False}
    p["archs"] = {"resnet34": r34, "mlp": {"epochs": 1 if small else 3, "pad": 0}}
    p["variants"] = {}
    p["ensemble"] = {**p["ensemble"], **({"resamples": 200, "folds": 2} if small else {})}
    return p


def run(work: Path, small: bool) -> dict:
    """The stages in `work`; what the report flagged."""
    from ensembles import ensemble
    from pipeline import prepare, report, train
    from pipeline.artifacts import load_metrics_of, prepared_dir, read_live_series
    from pipeline.inspect.diagnose import chance, diagnose, steps

    raw = make_kaggle(work / "raw", small)
    root = work / "run"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    p = params(raw, small)
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    prepare.run(root / "params.yaml", prepared_dir(root))
    for key in p["archs"]:
        train.run(key, str(root / "params.yaml"), root)
    ens = ensemble.run(p, root)
    log = io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(log):
        report.main([])
    from pipeline.artifacts import load_labels

    meta = load_labels(root).meta
    models = load_metrics_of(root, list(p["archs"]))
    metric = ens.judged_by()
    valid = list(meta.counts_per_class.get("valid", {}).values())
    curves = {n: {s: read_live_series(root, n, s)[1] for s in ("train/loss", "eval/loss")} for n in models}
    flags = {d.model: d for d in diagnose(models, metric, valid, curves)}
    return {
        "metric": metric,
        "chance": chance(metric, valid),
        "models": {
            n: {
                "valid": m.valid.value(metric),
                "valid_ci95": m.valid.interval(metric),
                "steps": steps(m),
                "flag": flags[n].kind if n in flags else None,
                "words": flags[n].words if n in flags else None,
            }
            for n, m in models.items()
        },
        "log": log.getvalue(),
        "log_lines": len(log.getvalue().splitlines()),
    }


def markdown(r: dict) -> str:
    rows = [
        [
            n,
            f"{100 * m['valid']:.1f} [{100 * m['valid_ci95'][0]:.1f}–{100 * m['valid_ci95'][1]:.1f}]",
            m["steps"],
            m["flag"] or "-",
        ]
        for n, m in r["models"].items()
    ]
    head = f"`python -m bench.diagnose{' --small' if r['small'] else ''}` on {r['cpu']}, {r['minutes']} min\n\n"
    what = (
        f"A Kaggle-layout folder ({r['train']} training images, {r['test']} test; `data.name: kaggle-csv`), "
        f"judged by {r['metric']}; chance {100 * r['chance']:.1f} %. Validation score [95 %], optimizer steps, the "
        "report's flag:\n\n"
    )
    said = "".join(f"\n- {m['words']}" for m in r["models"].values() if m["words"])
    return (
        head
        + what
        + markdown_table(["model", "valid %", "steps", "flag"], rows)
        + f"\nThe report's words:{said or ' none'}\n\nThe report stage's log ({r['log_lines']} lines):\n\n```\n"
        + r["log"]
        + "```\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.diagnose", description=__doc__.split("\n")[0]))
    ap.add_argument("--small", action="store_true", help="digits, 120 images: a test")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: bench/cache/diagnose)")
    a = ap.parse_args(argv)
    from bench.machine import ROOT

    work = a.work or ROOT / "bench" / "cache" / "diagnose" / ("small" if a.small else "full")
    t0 = time.perf_counter()
    r = run(work, a.small)
    cfg = SMALL if a.small else FULL
    r = {"cpu": cpu_name(), "small": a.small, "train": cfg["train"], "test": cfg["test"], **r}
    r["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    name = "diagnose_small" if a.small else "diagnose"
    out = out_dir(a)
    write_json(out / f"{name}.json", r)
    write_text(out / f"{name}.md", markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
