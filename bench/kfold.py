"""Benchmark 8: stratified K-fold entries and refit, through the pipeline's own stages, on scikit-learn's digits
(offline) or a 6000-image subset of Fashion-MNIST (the notebooks' "Accuracy (Stratified KFold, 5 splits)").

A project folder under bench/cache/kfold/ gets its own params.yaml: three `archs` entries with `folds: K`
(logreg, mlp, the fast ResNet-9 at 32 px) and a `variants` entry `fast-refit` (the fast recipe without folds,
`refit: true`). It runs prepare, train (every entry), the ensemble stage over the three K-fold entries, and then
the fitted strategies once more fitted on the validation split alone, to compare with their fit on the
out-of-fold rows. Prints and writes bench/results/kfold_<data>.{json,md} and docs/kfold_<data>.png.
Run:    python -m bench.kfold [--data digits|fashion-mnist] [--folds 5]   (digits: minutes; fashion-mnist (6000 images,
        needs `make data`): longer)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import yaml

from bench.machine import ROOT, write_text
from ensembles import ensemble
from ensembles.candidates import load_candidates
from ensembles.strategies import ensemble_params, run_strategies
from pipeline import prepare, train
from pipeline.artifacts import load_member_metrics, load_prepared, metrics_file, prepared_dir
from pipeline.data.array_formats import digits_file
from pipeline.inspect.tables import markdown_table
from pipeline.records import MemberMetrics

WORK_DIR = ROOT / "bench" / "cache" / "kfold"
FAST = {"arch": "resnet9", "pad": 2, "epochs": 10, "lr": 0.005, "model_kwargs": {"widths": [16, 32, 64, 128]}}
DATA = {  # data section, train defaults, what the fast net adds
    "digits": (
        {"name": "digits", "path": str(digits_file()), "valid_pct": 0.1},
        {"flip": False, "tta": False},  # digits are not mirror-symmetric
        {"size": 32},  # 8×8 is too small for four poolings
    ),
    "fashion-mnist": (
        {"name": "fashion-mnist", "path": "data/raw/fashion-mnist", "valid_pct": 0.1, "limit": 6000},
        {"flip": True, "tta": True},
        {},
    ),
}


def params(data: str, folds: int) -> dict:
    section, train_, fast = DATA[data]
    path = Path(section["path"])
    section = {**section, "path": str(path if path.is_absolute() else ROOT / path)}
    return {
        "seed": 0,
        "data": section,
        "train": {"bs": 32, "lr": 0.01, "pad": 0, **train_},
        "archs": {
            "logreg": {"epochs": 20, "folds": folds},
            "mlp": {"epochs": 20, "folds": folds},
            "fast": {**FAST, **fast, "folds": folds},
        },
        "variants": {"fast-refit": {"of": "fast", "folds": None, "refit": True}},
        "ensemble": {"select": "threshold", "threshold": 0.0, "per_family": False, "method": "stacking"},
    }


def pct(v) -> str:
    return f"{100 * v:.2f}"


def figure(path: Path, metrics: dict[str, MemberMetrics], fits: dict, data: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    for i, m in enumerate(metrics.values()):
        f = m.folds
        cv = 100 * np.array(f.cv_accuracy)
        a.scatter(np.full(len(cv), i) + np.linspace(-0.12, 0.12, len(cv)), cv, s=18, color="C0", zorder=3)
        a.errorbar(i, cv.mean(), yerr=cv.std(ddof=1), fmt="_", color="C0", ms=26, capsize=6, zorder=2)
        a.scatter(i + 0.3, 100 * m.valid.accuracy, marker="D", color="C1", zorder=3)
        a.scatter(i + 0.3, 100 * m.test.accuracy, marker="x", color="C3", zorder=3)
    a.scatter([], [], color="C0", label="each fold model on its held-out fold (mean ± std)")
    a.scatter([], [], marker="D", color="C1", label="the fold models' average on valid")
    a.scatter([], [], marker="x", color="C3", label="... on test")
    a.set_xticks(
        range(len(metrics)),
        [f"{n}\n{pct(m.folds.cv_mean)} ± {pct(m.folds.cv_std)}" for n, m in metrics.items()],
    )
    a.set(ylabel="top-1 %", title=f"{data}, stratified {next(iter(metrics.values())).folds.k}-fold")
    a.legend(fontsize=7, loc="lower right")
    kinds = list(fits["oof"])
    x = np.arange(len(kinds))
    for j, (where, label) in enumerate([("valid", "fitted on valid (cross-fitted)"), ("oof", "fitted on OOF rows")]):
        b.bar(x + (j - 0.5) * 0.38, [100 * fits[where][k]["test"]["accuracy"] for k in kinds], 0.38, label=label)
    accs = [100 * fits[w][k]["test"]["accuracy"] for w in fits for k in kinds]
    b.set(xticks=x, xticklabels=kinds, ylim=(min(accs) - 1.5, max(accs) + 1), ylabel="test top-1 %")
    b.set_title("ensemble of the 3 entries: fitted strategies")
    b.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def smallest(p: dict) -> dict:
    """The smallest mode (`--small`, for the smoke test): 300 images, one epoch per entry."""
    p["data"]["limit"] = 300
    for e in p["archs"].values():
        e["epochs"] = 1
    return p


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.kfold", description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--data", choices=list(DATA), default="digits", help="fashion-mnist: a 6000-image subset")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from bench/results/kfold_<data>.json")
    ap.add_argument("--small", action="store_true", help="300 images, 1 epoch per entry: checks that it runs")
    ap.add_argument("--out", type=Path, default=None, help="results and figure (default: bench/results, docs)")
    args = ap.parse_args(argv)
    out, docs = (args.out, args.out) if args.out else (ROOT / "bench" / "results", ROOT / "docs")
    WORK = (args.out / "work") if args.out else WORK_DIR  # the project folder of this run
    if args.replot:
        saved = json.loads((out / f"kfold_{args.data}.json").read_text())
        fits = {"valid": saved["on_valid"], "oof": {k: saved["ensemble"][k] for k in saved["on_valid"]}}
        figure(docs / f"kfold_{args.data}.png", saved["entries"], fits, args.data)
        return
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    p = params(args.data, args.folds)
    if args.small:
        p = smallest(p)
    pf = WORK / "params.yaml"
    pf.write_text(yaml.safe_dump(p, sort_keys=False))
    prepare.run(str(pf), prepared_dir(WORK))
    for key in [*p["archs"], *p["variants"]]:
        train.run(key, str(pf), WORK)
    ens_params = {**p, "variants": {}}  # the ensemble of the three K-fold entries
    m = ensemble.run(ens_params, WORK)

    # the fitted strategies again, fitted on the validation split alone (as for entries without folds)
    prep = load_prepared(WORK)
    vy, ty = prep.labels("valid"), prep.labels("test")
    c = load_candidates(m.members, len(vy), len(ty), len(prep.meta.classes), WORK, n_train=len(prep.labels("train")))
    cfg = replace(ensemble_params(ens_params), metric=m.judged_by())
    on_valid = run_strategies(c.valid, vy, c.test, ty, m.members, cfg, 0)
    fitted = ("greedy", "logloss", "stacking")
    fits = {
        "valid": {k: on_valid[k].record.to_json() for k in fitted},
        "oof": {k: m.strategies[k].to_json() for k in fitted},
    }
    metrics = {n: load_member_metrics(metrics_file(WORK, n), n) for n in p["archs"]}
    refit = load_member_metrics(metrics_file(WORK, "fast-refit"), "fast-refit")

    lines = [
        f"# Stratified K-fold and refit on {args.data} (`python -m bench.kfold --data {args.data} --folds {args.folds}`)",
        "",
        f"{args.data}: {metrics['fast'].train_images} training, {len(vy)} validation, {len(ty)} test images. "
        f"One test image = {100 / len(ty):.3f} points. Entries: {json.dumps(p['archs'])}; train defaults "
        f"{json.dumps(p['train'])}.",
        "",
        *markdown_table(
            ["entry", "CV top-1 (held-out folds)", "fold models on valid", "their average: valid", "test"],
            [
                [n, f"{pct(f.cv_mean)} ± {pct(f.cv_std)}", f"{pct(f.valid_mean)} ± {pct(f.valid_std)}"]
                + [pct(mm.valid.accuracy), pct(mm.test.accuracy)]
                for n, mm in metrics.items()
                for f in [mm.folds]
            ],
        ).splitlines(),
    ]
    lines += [
        "",
        f"Ensemble of the three (stacking, written to the submission): valid {pct(m.valid.accuracy)}, test "
        f"{pct(m.test.accuracy)}; fitted on the {m.fitted_on}.",
        "",
    ]
    table = []
    for where, label in (("valid", f"valid ({len(vy)} rows, cross-fitted score)"), ("oof", "out-of-fold rows")):
        for k, r in fits[where].items():
            w = ", ".join(f"{n} {v:.2f}" for n, v in r["weights"].items())
            table.append([k, label, pct(r["valid"]["accuracy"]), pct(r["test"]["accuracy"]), w])
    lines += markdown_table(["strategy", "fitted on", "valid top-1", "test top-1", "weights"], table).splitlines()
    lines += [
        "",
        f"Refit (`fast-refit`: the fast recipe, `refit: true`): validated model valid {pct(refit.valid.accuracy)}"
        f" / test {pct(refit.test_validated.accuracy)} ({refit.train_images} training images); refit model "
        f"test {pct(refit.test.accuracy)} ({refit.refit.train_images} images, lr {refit.refit.lr}).",
        "",
    ]
    md = "\n".join(lines)
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"kfold_{args.data}.md", md)
    (out / f"kfold_{args.data}.json").write_text(
        json.dumps(
            {
                "entries": {n: mm.to_json() for n, mm in metrics.items()},
                "ensemble": {k: s.to_json() for k, s in m.strategies.items()},
                "on_valid": fits["valid"],
                "refit": refit.to_json(),
            },
            indent=1,
        )
        + "\n"
    )
    figure(docs / f"kfold_{args.data}.png", metrics, fits, args.data)


if __name__ == "__main__":
    main()
