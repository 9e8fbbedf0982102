"""Accuracy for free? At one training budget: the fast recipe's final weights, their EMA and SWA averages and its
snapshot ensemble (all from the same run), the default run's blend of several members, and one run given those
members' whole budget (with its own averages and snapshots) — every pair compared on the same rows in the run's
metric (McNemar's exact test for accuracy, paired bootstrap 95 % interval), on valid and on test. Choices are
made on validation; test is reported.

The short run is `--recipe` (params.yaml's entry, `fast`) with `--base` keys over it (default: 5 epochs, no
average, fp32: the previous default run's `fast`), as the stage trains it; the blend is `--members` (entries, or
variants of the recipe written as bench.members does, `name=of:key=value;key=value`; default: the previous default
run's three), trained as their stages train them (the recipe's own run is reused) and blended by the ensemble
stage's code with params.yaml's `ensemble:` (`calibrate`, the `accuracy` strategy: weights ∝ validation score,
cross-fitted on valid); the long run is
the recipe with `time_budget` = the members' summed training seconds on this machine (`--scale` ×), as
bench.equal_compute.
EMA: timm's ModelEmaV3 (`--decay`, warm-up on); SWA: torch's AveragedModel from `--start` of the steps, then
update_bn; snapshots: the weights at the ends of the last `--snapshots` epochs, blended like the members.
Reads params.yaml and data/prepared of --root (`dvc repro prepare`). Writes bench/results/free_accuracy.{json,md}.
Run:    python -m bench.free_accuracy [--recipe fast] [--root .]   (the slowest bench: it trains four runs)
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import yaml

from bench.machine import add_paths, cpu_name, out_dir, train_member, write_json, write_text
from pipeline.artifacts import load_prepared
from pipeline.inspect.scores import compare, metric_value, resolve_metric, verdict
from pipeline.inspect.tables import markdown_table
from pipeline.learn.averaging import Snapshots, WeightAverage, size_at, snapshot_epochs
from pipeline.learn.hardware import concrete
from pipeline.learn.member import predictor, run_epochs
from pipeline.learn.recipe import budget_recipe, build_learner, fit_phases, pick_lr
from pipeline.params import eval_batch, load_params, member_seed, metric_param, resolve_remedies, train_spec

# the previous default run: fast at 5 epochs in fp32, blended with two variants of it
BASE = "epochs=5;average=none;precision=fp32"
MEMBERS = ["fast", "fast-32=fast:size=32;epochs=4", "fast-noflip=fast:flip=false"]


def blend(runs: list[dict], y: np.ndarray, params: dict, metric: str, seed: int) -> dict[str, np.ndarray]:
    """The ensemble stage's weighted blend of runs ({split: probs}), with the stage's own code: params.yaml's
    `ensemble:` (its per-member temperatures where `calibrate: temperature`), the `accuracy` strategy (weights ∝
    validation score in the run's metric) and what follows it; {split: probs}, valid cross-fitted as the stage
    scores it."""
    from ensembles.candidates import Candidates, calibrate_members
    from ensembles.strategies import ensemble_params, run_strategies

    cfg = replace(ensemble_params(params), strategies=["accuracy"], method="accuracy", metric=metric)
    names = [f"m{i}" for i in range(len(runs))]
    stack = {s: np.stack([r[s].astype(np.float64) for r in runs]) for s in ("valid", "test")}
    c = Candidates(names, stack["valid"], stack["test"], info={}, oof={})
    if cfg.calibrate == "temperature":
        calibrate_members(c, y)
    out = run_strategies(c.valid, y, c.test, None, names, cfg, seed)["accuracy"]
    return {"valid": out.valid_probs, "test": out.test_probs}


def one_run(key: str, spec, arrays, meta, seed: int, k: int, avg: tuple, params: dict, metric: str):
    """One training run of the recipe (the stage's build_learner / pick_lr / fit_phases, fine-tuning a pretrained
    net as the stage does, its epochs counted and its members predicted as pipeline.learn.member does) with EMA
    and SWA (`avg`: decay, start) and snapshots tracked side by side: ({arm: {split: probs}}, facts)."""
    decay, start = avg
    device = concrete(None)  # where the stage would train: the members' runs train there too
    spec = eval_batch(spec, device.type)
    facts = {}
    if spec.time_budget:
        spec, facts["time_budget"] = budget_recipe(key, spec, arrays, meta, seed, device)
    learn, setup = build_learner(key, spec, arrays, meta, seed, device)
    fine_tune = bool(setup.pretrained)
    if fine_tune:
        learn.freeze()
    lr, _, _ = pick_lr(learn, key, spec)
    epochs = run_epochs(spec, setup, fine_tune)
    avgs = {"ema": WeightAverage("ema", epochs, decay=decay), "swa": WeightAverage("swa", epochs, start=start)}
    snaps = Snapshots(snapshot_epochs(epochs, k))
    learn.add_cbs([*avgs.values(), snaps])
    t0 = time.perf_counter()
    fit_phases(learn, spec, setup, fine_tune, lr)
    facts |= {"epochs": epochs, "train_s": round(time.perf_counter() - t0, 1), "steps": avgs["ema"].total}
    predict = predictor(setup, spec, {s: arrays[f"{s}_x"] for s in ("valid", "test")})

    arms = {"final": predict(learn.model)}
    for name, a in avgs.items():  # nothing averaged (SWA's start past a tiny run): the final weights
        arms[name] = predict(a.averaged(learn.dls.train) or learn.model) if a.updates else arms["final"]
    snapshot_probs = []
    for n, state in sorted(snaps.states.items()):
        learn.model.load_state_dict(state)
        snapshot_probs.append(predict(learn.model, size_at(setup.phases, n, spec.freeze_epochs if fine_tune else 0)))
    arms[f"snapshots{k}"] = blend([*snapshot_probs, arms["final"]], arrays["valid_y"], params, metric, seed)
    return arms, facts


def run(
    root: Path, out: Path, recipe: str, members: list[str], k: int, decay: float, start: float, scale: float, base=""
):
    from bench.members import parse_model

    params = load_params(root / "params.yaml")
    entry = dict(params["archs"][recipe] or {})
    for kv in filter(None, base.split(";")):  # the recipe as the comparison defines it
        key, _, val = kv.partition("=")
        entry[key] = yaml.safe_load(val)
    params["archs"][recipe] = entry
    member_args, members = members, [parse_model(m, params) for m in members]
    prep = load_prepared(root)
    arrays, meta = prep.arrays, prep.meta
    counts = meta.counts_per_class.get("train", {})
    metric, _ = resolve_metric(metric_param(params), counts)
    spec = resolve_remedies(train_spec(params, recipe), counts)
    seed = member_seed(params, spec)
    arms, facts = {}, {}
    short, facts["short"] = one_run(recipe, spec, arrays, meta, seed, k, (decay, start), params, metric)
    arms |= short
    # the default run's blend: the members trained as their stages train them (the recipe's run is `final`)
    probs, train_s = {recipe: short["final"]}, {recipe: facts["short"]["train_s"]}
    for m in members:
        if m == recipe:
            continue
        s = resolve_remedies(train_spec(params, m), counts)
        res = train_member(m, s, arrays, meta, member_seed(params, s))
        probs[m], train_s[m] = {x: res.preds[x] for x in ("valid", "test")}, res.metrics.train_s
    y = arrays["valid_y"]
    names = [m for m in members if m in probs]
    arms[f"blend{len(names)}"] = blend([probs[m] for m in names], y, params, metric, seed)
    budget = scale * sum(train_s[m] for m in names)
    long, facts["long"] = one_run(
        recipe, replace(spec, time_budget=budget), arrays, meta, seed, k, (decay, start), params, metric
    )
    arms |= {f"long-{a}": p for a, p in long.items()}
    facts["members_train_s"], facts["budget_s"] = train_s, round(budget, 1)
    labels = {s: arrays[f"{s}_y"] for s in ("valid", "test")}
    scores = {a: {s: metric_value(metric, p[s], labels[s]) for s in labels} for a, p in arms.items()}
    pairs = {
        f"{a} vs {b}": {s: compare(arms[a][s], arms[b][s], labels[s], seed, metric=metric) for s in labels}
        for a, b in itertools.combinations(arms, 2)
    }
    r = {
        "cpu": cpu_name(),
        "recipe": recipe,
        "base": base,
        "member_args": member_args,
        "members": names,
        "snapshots": k,
        "ema_decay": decay,
        "swa_start": start,
        "scale": scale,
        "runs": facts,
        "metric": metric,  # the run's (`metric: auto`: accuracy on balanced classes, else balanced accuracy)
        "scores": scores,
        "pairs": pairs,
    }
    write_json(out / "free_accuracy.json", r)
    md = markdown(r)
    write_text(out / "free_accuracy.md", md)
    print(md)
    return r


def markdown(r: dict) -> str:
    """The arms' scores in the run's metric, then every pair's difference with its interval and p, by split."""
    f = r["runs"]
    head = (
        f"`python -m bench.free_accuracy --recipe {r['recipe']} --base '{r['base']}' --members "
        f"{' '.join(repr(m) if '=' in m else m for m in r['member_args'])} --snapshots {r['snapshots']}` on "
        f"{r['cpu']}. Short run: {r['recipe']}, {f['short']['epochs']} epochs "
        f"({f['short']['train_s']:.0f} s); blend: {' + '.join(r['members'])} "
        f"({sum(f['members_train_s'].values()):.0f} s of training); long run: {r['recipe']} with that budget × "
        f"{r['scale']:g} ({f['long']['epochs']} epochs, {f['long']['train_s']:.0f} s). EMA decay {r['ema_decay']:g} "
        f"(timm warm-up); SWA from {r['swa_start']:.0%} of the steps, update_bn; snapshots: the last "
        f"{r['snapshots']} epochs' weights blended.\n\n"
    )
    acc = markdown_table(
        ["arm", f"valid {r['metric']} %", f"test {r['metric']} %"],
        [[a, f"{100 * s['valid']:.2f}", f"{100 * s['test']:.2f}"] for a, s in r["scores"].items()],
    )
    pairs = markdown_table(
        ["A vs B", "valid: A − B", "test: A − B"],
        [[k, verdict(v["valid"]), verdict(v["test"])] for k, v in r["pairs"].items()],
    )
    return (
        head
        + acc
        + f"\n\nEvery pair, A − B in {r['metric']} points [95 % paired bootstrap], p (McNemar's exact for accuracy, "
        + "else the class-stratified bootstrap's):\n\n"
        + pairs
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.free_accuracy", description=__doc__.split("\n")[0]))
    ap.add_argument("--recipe", default="fast", help="the params entry trained short and long")
    ap.add_argument("--base", default=BASE, help="keys over the recipe's entry, k=v;k=v (YAML values)")
    ap.add_argument("--members", nargs="+", default=MEMBERS, help="the blend's entries, or name=of:k=v;k=v")
    ap.add_argument("--snapshots", type=int, default=3, help="K: the last K epochs' weights, blended")
    ap.add_argument("--decay", type=float, default=0.999, help="EMA's decay per step")
    ap.add_argument("--start", type=float, default=0.75, help="SWA's start, a share of the steps")
    ap.add_argument("--scale", type=float, default=1.0, help="the long run's budget: scale × the members' seconds")
    a = ap.parse_args(argv)
    run(a.root, out_dir(a), a.recipe, a.members, a.snapshots, a.decay, a.start, a.scale, a.base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
