"""Stages `train@<key>` and `variant@<key>`: train one model from params.yaml `archs.<key>`, or `variants.<key>`
(its `archs` entry with a few keys overridden), over the `train:` defaults.

Reads:  data/prepared/, params.yaml (`seed`, `train`, `archs.<key>`, `variants.<key>`).
Writes: models/<key>/ (model.safetensors, spec.json, versions.json), preds/<key>/{valid,test}.npy,
        metrics/<key>.json, dvclive/<key>/ (training curves, lr_find curve) — all whole or not at all.
        `folds: K`: models/<key>/fold<i>/ (one model per fold; spec.json names them), preds/<key>/oof.npy and
        oof_rows.npy (out-of-fold probabilities and the training rows they belong to); valid/test from their
        average. `refit: true`: models/<key>/ and preds/<key>/test.npy come from the model refit on train + valid.
Run:    dvc repro train@<key> / variant@<key>    (or: python -m pipeline.train <key>)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from fastai.distributed import rank_distrib

from pipeline.artifacts import load_prepared, member_outputs
from pipeline.errors import PipelineError
from pipeline.io import staged
from pipeline.learn import archs as archs_mod
from pipeline.learn.distributed import shutdown
from pipeline.learn.folds import train_folds, train_refit
from pipeline.learn.hardware import pick_device
from pipeline.learn.member import TrainResult, train_arch, write_member
from pipeline.params import TrainSpec, load_params, member_seed, resolve_remedies, train_spec
from pipeline.plan import time_budget_of


def train_entry(key, spec: TrainSpec, arrays, meta, seed, device=None, live=None, evaluate=True) -> TrainResult:
    """One `archs`/`variants` entry: one model, or K fold models (`folds`), then the refit (`refit`)."""
    if spec.folds:
        res = train_folds(key, spec, arrays, meta, seed, device, live, evaluate)
    else:
        res = train_arch(key, spec, arrays, meta, seed, device, live, evaluate)
    if spec.refit:
        res = train_refit(key, spec, res, arrays, meta, seed, device, evaluate)
    return res


def spec_of(params: dict, key: str, meta) -> tuple[TrainSpec, int]:
    """The recipe of one entry as its stage trains it: `train:` and its entry, the plan's seconds (`budget`,
    `race`: budgets/<key>.json), the imbalance remedies resolved on the training counts; and its seed."""
    spec = train_spec(params, key)
    if (planned := time_budget_of(params, key)) is not None:
        spec = replace(spec, time_budget=planned)
    return resolve_remedies(spec, meta.counts_per_class.get("train", {})), member_seed(params, spec)


def run(key: str, params_file: str | Path = "params.yaml", root: Path = Path(".")) -> TrainResult:
    """The stage for one `archs` or `variants` key: trains, writes its outputs whole, returns the result."""
    from dvclive import Live

    params = load_params(params_file)
    base = train_spec(params, key)
    archs_mod.resolve(base.arch)  # unknown names and absent GPUs fail before loading data
    device = pick_device(base.device, key)
    prep = load_prepared(root)
    arrays, meta = prep.arrays, prep.meta
    spec, seed = spec_of(params, key, meta)
    if rank_distrib() > 0:  # data-parallel: the other ranks train in step; rank 0 alone evaluates and writes
        return train_entry(key, spec, arrays, meta, seed, device=device, evaluate=False)
    with staged(*member_outputs(root, key)) as (model_dir, preds_dir, metrics_file, live_dir):
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
        res = train_entry(key, spec, arrays, meta, seed, device=device, live=live)
        write_member(res, live, model_dir, preds_dir, metrics_file, live_dir)
    m = res.metrics
    test = f", test acc {m.test.accuracy:.4f}" if m.test else ""
    refit = " (refit model)" if m.refit else ""
    print(f"{key}: valid acc {m.valid.accuracy:.4f}{test}{refit}, {m.train_s:.0f} s, {m.img_per_s:.0f} img/s")
    if f := m.folds:
        print(
            f"{key}: {f.k}-fold CV acc {f.cv_mean:.4f} ± {f.cv_std:.4f} (held-out folds), fold models on "
            f"valid {f.valid_mean:.4f} ± {f.valid_std:.4f}, their average {m.valid.accuracy:.4f}"
        )
    return res


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.train KEY`: the stage of one entry; 1 with the error's words on a bad input."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.split("\n")[0])
    ap.add_argument("key", help="a key of `archs:` or `variants:` in params.yaml")
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = ap.parse_args(argv)
    try:
        run(args.key, args.params)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
