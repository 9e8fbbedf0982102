"""Benchmark 5: which models are worth ensembling — each model's validation and test accuracy, and what the
accuracy-weighted ensemble of the first k models (ordered by validation accuracy) adds over the best of them.

Models are params.yaml entries (`archs` or `variants`) or ad-hoc variants written `name=of:key=value;key=value`,
e.g. `fast-noflip=fast:flip=false` or `fast-32=fast:size=32;seed=1` (values are YAML). Each model is trained
through the stage's own train_entry on data/prepared (what `dvc repro train@<name>` runs, without DVC) and its
predictions are kept in bench/cache/members/<name>-<hash of its spec>/, so a rerun trains only new or changed models.
Every choice is made on validation: the order, the weights; test accuracy is printed beside it, never used.
Writes bench/results/members_<tag>.{json,md}.
Run:    python -m bench.members fast fast-noflip=fast:flip=false --tag flip   (needs data/prepared)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import yaml

from bench.machine import ROOT, add_paths, out_dir, train_member, write_json, write_text
from ensembles.evaluate import by_size
from ensembles.weights import accuracy
from pipeline.artifacts import load_member_metrics, load_prepared, read_probs, save_member_metrics, save_preds
from pipeline.inspect.tables import markdown_table
from pipeline.params import load_params, member_seed, train_spec
from pipeline.records import PreparedMeta

CACHE = ROOT / "bench" / "cache" / "members"


def parse_model(arg: str, params: dict) -> str:
    """`name` (already in params) or `name=of:k=v;k=v` (added to params['variants']); returns the name."""
    if "=" not in arg:
        return arg
    name, rest = arg.split("=", 1)
    of, _, kvs = rest.partition(":")
    v = {"of": of}
    for kv in filter(None, kvs.split(";")):
        k, _, val = kv.partition("=")
        v[k] = yaml.safe_load(val)
    params.setdefault("variants", {})[name] = v
    return name


def trained(name: str, params: dict, arrays: dict, meta: PreparedMeta, cache: Path = CACHE) -> dict:
    spec = train_spec(params, name)
    seed = member_seed(params, spec)
    h = hashlib.sha1(json.dumps([spec.to_dict(), seed, len(arrays["train_y"]), meta.classes], sort_keys=True).encode())
    d = cache / f"{name}-{h.hexdigest()[:10]}"
    if not (d / "metrics.json").exists():
        res = train_member(name, spec, arrays, meta, seed)
        d.mkdir(parents=True, exist_ok=True)
        save_preds(d, res.preds)
        save_member_metrics(d / "metrics.json", res.metrics)
    m = load_member_metrics(d / "metrics.json", name)
    return {"valid": read_probs(d, "valid"), "test": read_probs(d, "test"), "metrics": m, "spec": spec.to_dict()}


def main(argv: list[str] | None = None) -> None:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.members"))
    ap.add_argument("models", nargs="+", help="params entries, or name=of:key=value;key=value")
    ap.add_argument("--tag", default="run")
    args = ap.parse_args(argv)
    params = load_params(args.root / "params.yaml")
    names = [parse_model(a, params) for a in args.models]
    prep = load_prepared(args.root)
    arrays, meta = prep.arrays, prep.meta
    cache = args.out / "cache" if args.out else CACHE
    yv, yt = arrays["valid_y"], arrays["test_y"]
    runs = {n: trained(n, params, arrays, meta, cache) for n in names}
    acc = {n: (accuracy(r["valid"], yv), accuracy(r["test"], yt)) for n, r in runs.items()}
    order = sorted(names, key=lambda n: (-acc[n][0], n))  # as by_size orders them
    lines = [
        f"`python -m bench.members {' '.join(args.models)} --tag {args.tag}`",
        "",
        *markdown_table(
            ["model", "valid acc", "test acc", "train s", "overrides"],
            [
                [n, f"{acc[n][0]:.4f}", f"{acc[n][1]:.4f}", f"{runs[n]['metrics'].train_s:.0f}"]
                + [params.get("variants", {}).get(n) or ""]
                for n in order
            ],
        ).splitlines(),
        "",
        "Accuracy-weighted ensemble of the k best models by validation accuracy:",
        "",
    ]
    curve = by_size(
        order, np.stack([runs[n]["valid"] for n in order]), yv, np.stack([runs[n]["test"] for n in order]), yt
    )
    best_v, best_t = acc[order[0]]
    table, md_rows = [], []
    for r in curve:
        top = order[: r.k]
        table.append({"k": r.k, "models": top, "valid": r.valid, "test": r.test})
        md_rows.append(
            [r.k, ", ".join(top), f"{r.valid:.4f}", f"{r.test:.4f}"]
            + [f"{r.valid - best_v:+.4f} / {r.test - best_t:+.4f}"]
        )
    header = ["k", "models", "valid acc", "test acc", "gain over the best member (valid / test)"]
    lines += markdown_table(header, md_rows).splitlines()
    text = "\n".join(lines) + "\n"
    print(text)
    out = out_dir(args) / f"members_{args.tag}"
    write_text(out.with_suffix(".md"), text)
    write_json(
        out.with_suffix(".json"), {"models": {n: {"valid": a[0], "test": a[1]} for n, a in acc.items()}, "top_k": table}
    )


if __name__ == "__main__":
    main()
