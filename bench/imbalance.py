"""Imbalanced classes: a photo folder of 60:1 through the pipeline, with its remedies off and on.

Builds its own ImageFolder in the real layout from Fashion-MNIST (digits in --small mode, or where Fashion-MNIST is
absent): train/<class>/ with 1 500 down to 25 images a class (geometric; class names with spaces and accents;
PNG, JPEG, WebP and BMP files) and a balanced, labelled test/<class>/ of 100 a class. Then runs the stages
in-process (prepare, train, ensemble) for each setting:
- `off, metric accuracy`: no remedy, everything chosen by top-1 (what the pipeline did before `metric:`);
- `off`: no remedy (loss_weights none, sampler shuffle, adjust none), balanced accuracy chooses;
- `loss_weights`, `sampler`: one training remedy; `adjust`: the `off` models with post-hoc logit adjustment;
- `default`: nothing set but `data:` (sampler auto -> balanced, adjust auto -> logit).
The `archs`/`variants` entries are the project's params.yaml's: `--archs`, by default those built from the local
networks (the ImageNet ones, 1 epoch from scratch and never in the blend, are left out); a name params.yaml does not
have is an error. Each setting's row is written as soon as it is measured.
Writes bench/results/imbalance.{json,md} (--out).
Run:    python -m bench.imbalance [--small] [--archs logreg fast ...]   (full: minutes on 2 CPU cores; each result file records its own, `minutes`)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import yaml

from bench.machine import ROOT, add_paths, cpu_name, out_dir, write_json, write_text
from pipeline.artifacts import load_submission_preds, prepared_dir, read_prepared
from pipeline.inspect.scores import compare, verdict
from pipeline.inspect.tables import markdown_table

CACHE = ROOT / "bench" / "cache" / "imbalance"
NAMES = [  # Fashion-MNIST's classes, as a user might name their folders: spaces, accents
    *("T-shirt top", "Trouser", "Pull-over", "Dress", "Coat"),
    *("Sandale été", "Shirt", "Sneaker", "Bag", "Ankle boot"),
]
FORMATS = ["png", "jpg", "webp", "bmp"]
FULL = {"hi": 1500, "lo": 25, "test": 100}
SMALL = {"hi": 100, "lo": 2, "test": 4, "classes": 3}
OFF = {"loss_weights": "none", "sampler": "shuffle"}
SETTINGS = {  # name -> (metric, train keys, ensemble keys, the training it shares)
    "off, metric accuracy": ("accuracy", OFF, {"adjust": "none"}, "off"),
    "off": ("auto", OFF, {"adjust": "none"}, "off"),
    "adjust": ("auto", OFF, {"adjust": "logit"}, "off"),
    "loss_weights": ("auto", {**OFF, "loss_weights": "balanced"}, {"adjust": "none"}, "loss_weights"),
    "sampler": ("auto", {**OFF, "sampler": "balanced"}, {"adjust": "none"}, "sampler"),
    "default": ("auto", {}, {}, "sampler"),  # sampler: auto resolves to the sampler setting's models here
}


def counts(cfg: dict, k: int) -> list[int]:
    """Training images per class: geometric from `hi` down to `lo`."""
    return [int(round(cfg["hi"] * (cfg["lo"] / cfg["hi"]) ** (i / (k - 1)))) for i in range(k)]


def make_folder(root: Path, small: bool) -> tuple[Path, list[int]]:
    """train/<class>/ (imbalanced) and test/<class>/ (balanced), mixed image formats; made once (a stamp)."""
    from PIL import Image

    from bench.scale import source_images

    cfg = SMALL if small else FULL
    x, y, src = source_images(small)
    k = cfg.get("classes", len(NAMES))
    n = counts(cfg, k)
    stamp = root / ".complete"
    if stamp.is_file():
        return root, n
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for c in range(k):
        rows = rng.permutation(np.flatnonzero(y == c))[: n[c] + cfg["test"]]
        for j, i in enumerate(rows):
            split, fmt = ("train", FORMATS[j % 4]) if j < n[c] else ("test", "png")
            path = root / split / NAMES[c] / f"img_{j}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(x[i])
            (img.convert("RGB") if fmt == "jpg" else img).save(path)
    stamp.write_text(src + "\n")
    return root, n


def default_archs(p: dict) -> list[str]:
    """The project's entries and variants built from the local networks (pipeline/learn/models.py): the ImageNet
    ones are one epoch from scratch in the default run, never in its blend."""
    from pipeline.learn.archs import resolve
    from pipeline.params import arch_names, variants

    entries = p["archs"]
    local = [k for k in arch_names(p) if resolve((entries[k] or {}).get("arch", k)).source == "local"]
    return local + [k for k, v in variants(p).items() if v["of"] in local]


def project_params(raw: Path, archs: list[str] | None, small: bool) -> tuple[dict, list[str]]:
    """The project's params.yaml with `data:` pointing at the folder and only `archs` kept (default:
    `default_archs`; --small: logreg); a name params.yaml does not have is an error naming the ones it has."""
    from pipeline.errors import PipelineError
    from pipeline.params import arch_names, variants

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    known = arch_names(p) + list(variants(p))
    archs = archs or (["logreg"] if small else default_archs(p))
    missing = [a for a in archs if a not in known]
    if missing:
        raise PipelineError(
            f"{ROOT / 'params.yaml'}: no archs or variants entry {', '.join(missing)} (--archs); it has {', '.join(known)}"
        )
    entries = {k: v for k, v in p["archs"].items() if k in archs}
    variants = {k: v for k, v in (p.get("variants") or {}).items() if k in archs and v["of"] in entries}
    p["data"] = {"name": "folder", "path": str(raw), "size": 28, "valid_pct": 0.1}
    p["archs"], p["variants"] = entries, variants
    if small:
        p["train"] = {**p["train"], "bs": 16, "eval_bs": 64}
        p["archs"] = {k: {**(v or {}), "epochs": 1} for k, v in entries.items()}
        p["ensemble"] = {**p["ensemble"], "resamples": 200, "folds": 2}
    return p, archs


def run_setting(name: str, base: dict, work: Path, trained: dict[str, Path], probs: dict | None = None) -> dict:
    """One setting: train (unless another setting trained the same models), then the ensemble stage; its
    submission's test probabilities go in `probs` (the paired comparisons)."""
    from ensembles import ensemble
    from pipeline import train
    from pipeline.params import model_names

    metric, train_keys, ens_keys, group = SETTINGS[name]
    p = json.loads(json.dumps(base))
    p["metric"] = metric
    p["train"] = {**p["train"], **train_keys}
    p["ensemble"] = {**p["ensemble"], **ens_keys}
    root = work / group
    t0 = time.perf_counter()
    if group not in trained:
        shutil.rmtree(root, ignore_errors=True)
        (root / "data").mkdir(parents=True)
        prepared_dir(root).symlink_to(prepared_dir(work).resolve())
        (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        for key in model_names(p):
            train.run(key, str(root / "params.yaml"), root)
        trained[group] = root
    m = ensemble.run(p, root)
    if probs is not None:
        probs[name] = load_submission_preds(root, "test")
    k = len(m.per_class.test.rows)
    rec = m.per_class.test.ensemble_report["recall"]
    worst = int(np.argmin(rec))
    return {
        "setting": name,
        "metric": m.judged_by(),
        "members": [n for n, w in m.weights.items() if w > 0],
        "strategy": m.chosen,
        "tau": m.tau or 0.0,
        "test_accuracy": m.test.accuracy,
        "test_accuracy_ci95": m.test.ci95,
        "test_balanced": m.test.balanced_accuracy,
        "test_balanced_ci95": m.test.balanced_ci95,
        "test_macro_f1": m.test.macro_f1,
        "test_worst_recall": m.test.worst_recall,
        "test_worst_class": NAMES[worst] if k <= len(NAMES) else worst,
        "classes_never_right": sum(1 for r in rec if r == 0),
        "valid_accuracy": m.valid.accuracy,
        "valid_balanced": m.valid.balanced_accuracy,
        "valid_balanced_ci95": m.valid.balanced_ci95,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def read_labels_of(folder: Path) -> np.ndarray:
    """The prepared test labels."""
    return read_prepared(folder, images=False).arrays["test_y"]


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def ci(v: list[float]) -> str:
    return f"{100 * v[0]:.1f}–{100 * v[1]:.1f}"


def markdown(r: dict) -> str:
    rows = [
        [
            s["setting"],
            s["metric"],
            ", ".join(s["members"]),
            s["tau"],
            pct(s["test_accuracy"]),
            f"{pct(s['test_balanced'])} [{ci(s['test_balanced_ci95'])}]",
            pct(s["test_macro_f1"]),
            f"{pct(s['test_worst_recall'])} ({s['test_worst_class']})",
            f"{pct(s['valid_balanced'])} [{ci(s['valid_balanced_ci95'])}]",
            pct(s["valid_accuracy"]),
            verdict(r["vs_off"][s["setting"]]) if s["setting"] in r.get("vs_off", {}) else "",
        ]
        for s in r["settings"]
    ]
    head = [
        "setting",
        "metric",
        "members (weight > 0)",
        "τ",
        "test top-1",
        "test balanced acc [95 %]",
        "test macro-F1",
        "test worst recall",
        "valid balanced acc [95 %]",
        "valid top-1",
        "test balanced acc − off [95 %], p",
    ]
    lines = [
        f"`python -m bench.imbalance{' --small' if r['small'] else ''}` on {r['cpu']}, {r['minutes']} min",
        "",
        f"train/ folders {r['train_counts'][0]:,} → {r['train_counts'][-1]:,} images a class ({r['ratio']:.0f}:1), "
        "prepared at 28 px; validation: a stratified 10 % of them (as imbalanced); "
        f"test: {r['test_per_class']} a class "
        f"(balanced). Archs: {', '.join(r['archs'])}. Test scores of the submission (ensemble.csv).",
        "",
        markdown_table(head, rows),
    ]
    by = {s["setting"]: s for s in r["settings"]}
    if "default" in by and "off" in by:
        d, o = by["default"], by["off"]
        inside = d["test_balanced_ci95"][0] <= d["valid_balanced"] <= d["test_balanced_ci95"][1]
        paired = r.get("vs_off", {}).get("default")
        lines.append(
            "Default − off: balanced accuracy on test "
            + (verdict(paired) if paired else f"{100 * (d['test_balanced'] - o['test_balanced']):+.1f} points")
            + "; "
            f"classes never right on test: {d['classes_never_right']} (off: {o['classes_never_right']}); the "
            f"default's validation balanced accuracy {pct(d['valid_balanced'])} is "
            f"{'inside' if inside else 'outside'} its test interval [{ci(d['test_balanced_ci95'])}]."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.imbalance", description=__doc__.split("\n")[0]))
    ap.add_argument("--small", action="store_true", help="3 classes of digits, 50:1, one epoch of logreg (a test)")
    ap.add_argument("--archs", nargs="+", default=None, help="archs/variants entries of params.yaml to train")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: bench/cache/imbalance)")
    args = ap.parse_args(argv)
    from pipeline import prepare

    work = args.work or CACHE / ("small" if args.small else "full")
    raw, n = make_folder(work / "raw", args.small)
    base, archs = project_params(raw, args.archs, args.small)
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    t0 = time.perf_counter()
    shutil.rmtree(prepared_dir(work), ignore_errors=True)
    prepare.run(str(work / "params.yaml"), prepared_dir(work))
    out = out_dir(args)
    name = "imbalance_small" if args.small else "imbalance"
    r = {
        "cpu": cpu_name(),
        "small": args.small,
        "archs": archs,
        "train_counts": n,
        "ratio": n[0] / n[-1],
        "test_per_class": (SMALL if args.small else FULL)["test"],
        "settings": [],
    }
    trained: dict[str, Path] = {}
    probs: dict[str, np.ndarray] = {}
    test_y = read_labels_of(prepared_dir(work))
    for s in args.settings:
        r["settings"].append(run_setting(s, base, work, trained, probs))
        if "off" in probs and s != "off":  # each remedy against none, paired on the same test rows
            r.setdefault("vs_off", {})[s] = compare(probs[s], probs["off"], test_y, 0, metric="balanced_accuracy")
        r["minutes"] = round((time.perf_counter() - t0) / 60, 1)
        write_json(out / f"{name}.json", r)  # each row as soon as it is measured
        write_text(out / f"{name}.md", markdown(r))
        print(f"{s}: {json.dumps(r['settings'][-1])}", flush=True)
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
