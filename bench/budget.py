"""Benchmark: the hand-tuned default against `budget:` (equal shares) and `race:` at the same total training time,
each through `dvc repro`; then one timm model added to the race with one line of params.yaml.

The total T is the hand-tuned run's training seconds (every model's `train_s`, summed): in the full mode the
committed default run of this tree (metrics/<name>.json), in --small mode a run of the small params beside the
others. Each configuration is a repository of its own in --work (the project's code and dvc.yaml, `dvc repro`):
- budget: params.yaml with every entry's `epochs` and `train_limit` removed and `budget: T` (equal shares);
- race:   the same with `race: {eta: 3, first: F}`, F = T / (entries x rungs) written out, so that an added entry
          leaves the other entries' first rung as it was;
- +model: one line added to the race's params.yaml (`resnet18: {}`) and `dvc repro` again in the same repository:
          the stages it ran, the new entry's rungs, where it stopped and by how much it trailed.
Each submission is compared with the hand-tuned one on the test split (reported, never chosen on) by the paired
comparison the report makes; every model's seconds against the seconds the plan gave it.
Writes: bench/results/budget.{json,md} (--out); budget_small.* with --small.
Run:    python -m bench.budget [--small]   (full: about 45 min on 2 CPU cores: three runs of the default's length)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from bench.machine import ROOT, add_paths, cpu_name, new_project, out_dir, write_json, write_text
from pipeline.inspect.tables import markdown_table

BUDGET_KEYS = ("epochs", "train_limit")
NEW = {"resnet18": {}}  # the one line added under race: a timm model with no budget of its own
SMALL_NEW = {"resnet18": {"size": 32}}  # digits are 8 px: timm's stem needs more


def base_params(small: bool) -> dict:
    """The hand-tuned params: this tree's params.yaml (data made absolute), or the small digits ones."""
    if small:
        from pipeline.data.array_formats import digits_file

        return {
            "seed": 0,
            "metric": "auto",
            "budget": None,
            "race": None,
            "data": {"name": "digits", "path": str(digits_file()), "limit": 300, "test_limit": 100},
            "train": {"epochs": 1, "bs": 32, "lr": 0.01, "tta": False, "flip": False, "pad": 0},
            "archs": {"logreg": {}, "mlp": {"epochs": 2}},
            "variants": {},
            "ensemble": {"select": "threshold", "threshold": 0.0, "method": "stacking", "resamples": 200},
        }
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"]["path"] = str((ROOT / p["data"]["path"]).resolve())
    p["data"]["download"] = False
    return p


def without_budgets(p: dict) -> dict:
    """Every entry without its hand-typed budget keys (`epochs`, `train_limit`)."""
    archs = {k: {kk: vv for kk, vv in (v or {}).items() if kk not in BUDGET_KEYS} for k, v in p["archs"].items()}
    return {**p, "archs": archs}


def repro(repo: Path) -> tuple[float, list[str], str]:
    """`dvc repro` in repo: (minutes, the stages it ran, its output)."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(Path.home())}
    t0 = time.perf_counter()
    r = subprocess.run("dvc repro", shell=True, cwd=repo, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if r.returncode:
        raise RuntimeError(f"dvc repro failed in {repo}:\n{out[-3000:]}")
    return round((time.perf_counter() - t0) / 60, 2), re.findall(r"Running stage '([^']+)'", out), out


def collect(root: Path) -> dict:
    """A run's submission and every model's seconds (what the plan asked, what it spent)."""
    from pipeline.artifacts import load_metrics_of, load_submission_preds, with_snapshots
    from pipeline.params import load_params, model_names

    summary = json.loads((root / "summary.json").read_text())
    names = with_snapshots(root, model_names(load_params(root / "params.yaml")))
    models = load_metrics_of(root, names)
    race = root / "race" / "race.json"
    return {
        "submission": summary["submission"],
        "metric": summary["metric"],
        "models": {
            n: {
                "valid": summary["models"].get(n, {}).get("valid"),
                "test": summary["models"].get(n, {}).get("test"),
                "train_s": round(m.train_s, 1),
                "asked_s": (m.time_budget or {}).get("asked_s"),
            }
            for n, m in models.items()
        },
        "train_s": round(sum(m.train_s for m in models.values()), 1),
        "race": json.loads(race.read_text()) if race.is_file() else None,
        "test_preds": load_submission_preds(root, "test"),
    }


def against(run: dict, hand: dict, y: np.ndarray, seed: int) -> dict:
    """The run's submission against the hand-tuned one on test: the paired comparison, in the run's metric."""
    from pipeline.inspect.scores import compare, verdict

    c = compare(run["test_preds"], hand["test_preds"], y, seed=seed, metric=run["metric"])
    return {**{k: c[k] for k in ("diff", "ci95", "p", "resolved")}, "words": verdict(c)}


def run_all(work: Path, small: bool) -> dict:
    """The configurations, each through dvc repro; the comparisons."""
    from pipeline.artifacts import load_labels
    from pipeline.params import model_names
    from pipeline.plan import rungs_for

    hand_p = base_params(small)
    runs, minutes, stages = {}, {}, {}
    if small:
        minutes["hand"], _, _ = repro(new_project(work / "hand" / "repo", hand_p))
        runs["hand"] = collect(work / "hand" / "repo")
    else:
        runs["hand"] = collect(ROOT)
    total = round(runs["hand"]["train_s"], 1)
    n = len(model_names(hand_p))
    first = round(total / (n * rungs_for(n, 3)), 3)
    configs = {
        "budget": {**without_budgets(hand_p), "budget": total},
        "race": {**without_budgets(hand_p), "budget": total, "race": {"eta": 3, "first": first}},
    }
    for name, p in configs.items():
        minutes[name], stages[name], _ = repro(new_project(work / name / "repo", p))
        runs[name] = collect(work / name / "repo")
    repo = work / "race" / "repo"
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["archs"] |= SMALL_NEW if small else NEW
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    minutes["race+model"], stages["race+model"], _ = repro(repo)
    runs["race+model"] = collect(repo)
    y = load_labels(work / "race" / "repo").labels("test")
    seed = hand_p["seed"]
    return {
        "small": small,
        "total_s": total,
        "first_s": first,
        "added": next(iter(SMALL_NEW if small else NEW)),
        "minutes": minutes,
        "stages_run": stages,
        "runs": {k: {kk: vv for kk, vv in r.items() if kk != "test_preds"} for k, r in runs.items()},
        "vs_hand": {k: against(r, runs["hand"], y, seed) for k, r in runs.items() if k != "hand"},
    }


def markdown(r: dict) -> str:
    """The comparison table, the budget's accuracy per model, and the race with the added model."""
    rows = []
    for k, run in r["runs"].items():
        s = run["submission"]
        vs = r["vs_hand"].get(k, {}).get("words", "-")
        ci = s["test"]["ci95"]
        rows.append(
            [k, f"{run['train_s']:.0f}", f"{100 * s['test']['score']:.2f} [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]",
             s["members"], vs]
        )  # fmt: skip
    seconds = [
        [n, f"{m['asked_s']:.1f}", f"{m['train_s']:.1f}", f"{100 * (m['train_s'] / m['asked_s'] - 1):+.1f}"]
        for n, m in r["runs"]["budget"]["models"].items()
        if m["asked_s"]
    ]
    from pipeline.inspect.racing import race_md

    added = r["added"]
    return (
        f"`python -m bench.budget{' --small' if r['small'] else ''}` on {r['cpu']}, {r['minutes_total']} min\n\n"
        f"Every run spends the hand-tuned default's training time, {r['total_s']:.1f} s (summed `train_s`), "
        f"through `dvc repro`; submissions compared with the hand-tuned one on the test split (paired):\n\n"
        + markdown_table(["run", "train_s", "test score [95 %]", "members", "vs hand-tuned (test, paired)"], rows)
        + "\n`budget:` equal shares: seconds asked of each model and spent:\n\n"
        + markdown_table(["model", "asked_s", "train_s", "off %"], seconds)
        + f"\nThe race (eta 3, first {r['first_s']:.1f} s):\n\n"
        + race_md(r["runs"]["race"]["race"])
        + f"Adding `{added}: {{}}` under `archs:` (one line) and `dvc repro`: "
        f"{r['minutes']['race+model']} min, stages run: {', '.join(r['stages_run']['race+model'])}.\n\n"
        + race_md(r["runs"]["race+model"]["race"])
    )


def main(argv: list[str] | None = None) -> int:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.split("\n")[0]))
    ap.add_argument("--small", action="store_true", help="digits, seconds of training: the smoke test's mode")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "cache" / "budget", help="the runs' repositories")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = run_all(args.work, args.small)
    r |= {"cpu": cpu_name(), "minutes_total": round((time.perf_counter() - t0) / 60, 1)}
    name = "budget_small" if args.small else "budget"
    out = out_dir(args)
    write_json(out / f"{name}.json", r)
    write_text(out / f"{name}.md", markdown(r))
    print((out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
