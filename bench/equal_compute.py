"""Is the ensemble worth its compute? The best member's recipe trained with the ensemble's whole training budget,
against the submission, paired on the same rows.

The budget is the training seconds of the members the submission uses (metrics/<name>.json `train_s`), times
`--scale`; the recipe is the best member's by validation accuracy (ensemble/metrics.json `best_member`), trained
through the stage's own train_entry with `time_budget` set to that budget (so it gets more epochs, measured on
this machine). Test is reported, never used to choose. Writes bench/results/equal_compute.{json,md}, which the
report shows beside the submission when it exists (not a declared dependency, so that a project without it runs:
`dvc repro --force --single-item report` after this bench; the report says when they are another run's).
Run:    python -m bench.equal_compute [--scale 1.0] [--root .]     (after `dvc repro`)
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


from bench.machine import add_paths, cpu_name, out_dir, train_member, write_text
from pipeline.artifacts import (
    ensemble_metrics_file,
    load_ensemble_metrics,
    load_member_metrics,
    load_prepared,
    load_submission_preds,
    metrics_file,
    save_equal_compute,
)
from pipeline.inspect.scores import compare, score, verdict
from pipeline.inspect.tables import markdown_table
from pipeline.params import load_params, member_seed, train_spec
from pipeline.records import EqualCompute


def run(root: Path, out: Path, scale: float = 1.0) -> dict:
    params = load_params(root / "params.yaml")
    ens = load_ensemble_metrics(ensemble_metrics_file(root))
    used = [n for n, w in ens.weights.items() if w > 0]
    metrics = {n: load_member_metrics(metrics_file(root, n), n) for n in used}
    best = ens.best_member or max(used, key=lambda n: metrics[n].valid.accuracy)
    budget = scale * sum(m.train_s for m in metrics.values())
    spec = replace(train_spec(params, best), time_budget=budget)
    seed = member_seed(params, spec)
    prep = load_prepared(root)
    arrays, meta = prep.arrays, prep.meta
    res = train_member(best, spec, arrays, meta, seed)
    sub = {s: load_submission_preds(root, s) for s in ("valid", "test")}
    labeled = ens.test is not None
    splits = ("valid", "test") if labeled else ("valid",)
    y = {s: arrays[f"{s}_y"] for s in splits}
    r = {
        "cpu": cpu_name(),
        "recipe": best,
        "members": used,
        "budget_s": round(budget, 1),
        "scale": round(res.metrics.images_seen / max(metrics[best].seen(), 1), 2),
        "images_seen": res.metrics.images_seen,
        "train_s": res.metrics.train_s,
        "time_budget": res.metrics.time_budget,
        "single_valid": score(res.preds["valid"], y["valid"])["accuracy"],
        "ensemble_valid": ens.valid.accuracy,
        "comparison": {s: compare(sub[s], res.preds[s], y[s], seed) for s in splits},
    }
    if labeled:
        r |= {"single_test": score(res.preds["test"], y["test"])["accuracy"], "ensemble_test": ens.test.accuracy}
    out.mkdir(parents=True, exist_ok=True)
    save_equal_compute(out / "equal_compute.json", EqualCompute.from_json(r, "equal_compute.json", strict=True))
    lines = [
        f"`python -m bench.equal_compute --scale {scale:g}` on {r['cpu']}",
        "",
        f"Recipe {best} with the ensemble's budget ({' + '.join(used)}: {budget:.0f} s of training), "
        f"{r['images_seen']} images seen in {r['train_s']:.0f} s (chosen: {r['time_budget']['chosen']}).",
        "",
        *markdown_table(
            ["split", "single recipe, equal compute", "submission", "submission − single"],
            [
                [s, f"{100 * r[f'single_{s}']:.2f}", f"{100 * r[f'ensemble_{s}']:.2f}", verdict(r["comparison"][s])]
                for s in splits
            ],
        ).splitlines(),
    ]
    write_text(out / "equal_compute.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    # not a dependency of the report stage (a project without the file must still run): rerun it by hand
    print("\nthe report shows it after `dvc repro --force --single-item report` (that stage alone)")
    return r


def main(argv: list[str] | None = None) -> None:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.equal_compute", description=__doc__.split("\n")[0]))
    ap.add_argument("--scale", type=float, default=1.0, help="budget = scale × the members' training seconds")
    a = ap.parse_args(argv)
    run(a.root, out_dir(a), a.scale)


if __name__ == "__main__":
    main()
