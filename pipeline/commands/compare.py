"""Command `python -m pipeline.commands.compare A B`: is model A better than model B, on the same rows?

A and B name models of the run (`preds/<name>/`) or `ensemble` (the submission, `ensemble/preds/`). For the
validation split and, where it has labels, the test split, in the run's metric (params.yaml `metric`; auto:
accuracy on balanced training classes, else balanced accuracy; `--metric` to choose): both scores with their 95 %
intervals, the difference with a paired bootstrap 95 % interval (seeded; class-stratified beside accuracy) and its
p-value (McNemar's exact for accuracy), and whether the split resolves it (p < 0.05). Reads params.yaml's `metric`
and data/prepared; writes nothing.
Run:    python -m pipeline.commands.compare fast fast-32 [--metric auto] [--resamples 2000] [--seed 42] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.artifacts import load_labels, load_preds, load_submission_preds
from pipeline.errors import PipelineError
from pipeline.inspect.scores import CI_KEYS, METRICS, compare, resolve_metric, score, verdict
from pipeline.params import load_params, metric_param


def probs_of(name: str, split: str, root: Path) -> np.ndarray:
    """A model's probabilities on a split, or the submission's for `ensemble`."""
    return load_submission_preds(root, split) if name == "ensemble" else load_preds(root, name, split)


def run(
    a: str, b: str, root: Path = Path("."), seed: int = 42, resamples: int = 2000, metric: str = "accuracy"
) -> dict:
    """{split: {a: score, b: score, "a_vs_b": comparison in `metric`}} on every labelled split."""
    prep = load_labels(root)
    out = {}
    for split in ("valid", "test") if prep.meta.test_labeled else ("valid",):
        y = prep.labels(split)
        if not len(y):
            continue
        pa, pb = probs_of(a, split, root), probs_of(b, split, root)
        for n, p in ((a, pa), (b, pb)):
            if len(p) != len(y):
                raise PipelineError(f"{n}: {len(p)} {split} predictions for {len(y)} rows: a stale stage; `dvc repro`")
        out[split] = {a: score(pa, y), b: score(pb, y), "a_vs_b": compare(pa, pb, y, seed, resamples, metric)}
    return out


def words(a: str, b: str, res: dict, metric: str = "accuracy") -> str:
    """The comparison in plain words, one line per split."""
    lines = []
    test = "McNemar exact" if metric == "accuracy" else "class-stratified"
    for split, r in res.items():
        sa, sb = r[a], r[b]
        ci = lambda s: f"[{100 * s[CI_KEYS[metric]][0]:.2f}, {100 * s[CI_KEYS[metric]][1]:.2f}]"  # noqa: E731
        lines.append(
            f"{split} ({sa['n']} rows), {metric.replace('_', ' ')}: {a} {100 * sa[metric]:.2f} % {ci(sa)}, "
            f"{b} {100 * sb[metric]:.2f} % {ci(sb)}; {a} − {b}: {verdict(r['a_vs_b'])} (paired bootstrap 95 %, {test})"
        )
    return "\n".join(lines)


def run_metric(setting: str, root: Path) -> str:
    """`--metric auto`: params.yaml's `metric` (auto by default), resolved on the prepared training counts."""
    if setting != "auto":
        return setting
    params = load_params(root / "params.yaml") if (root / "params.yaml").is_file() else {}
    meta = load_labels(root).meta
    return resolve_metric(metric_param(params), meta.counts_per_class.get("train", {}))[0]


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.commands.compare A B`: prints the comparison; 1 on an error."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.commands.compare", description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    ap.add_argument("--metric", default="auto", choices=["auto", *METRICS])
    args = ap.parse_args(argv)
    try:
        metric = run_metric(args.metric, Path("."))
        res = run(args.a, args.b, Path("."), args.seed, args.resamples, metric)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=1) if args.json else words(args.a, args.b, res, metric))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
