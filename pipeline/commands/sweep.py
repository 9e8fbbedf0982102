"""Command `python -m pipeline.commands.sweep`: DVC's finished experiments as a table sorted by the runs' own validation
metric (summary.json `submission.valid.score`, in each run's `metric`: accuracy, balanced accuracy or macro-F1), and a
plot of it against each swept param.

A sweep is DVC's own grid (no code of ours runs it):
    dvc exp run --queue -S 'archs.fast.lr=0.002,0.005,0.01' -S 'archs.fast.bs=64,128'
    dvc queue start --jobs 1          # then wait for `dvc queue status`
    python -m pipeline.commands.sweep          # the table and the plot
Reads:  `dvc exp show --json` (the experiments of the current commit; the commit itself is the baseline row).
Writes: sweep/table.md, sweep/table.csv, sweep/accuracy_vs_params.png, whole or not at all (not a DVC output:
        rerun it whenever experiments finish).
Run:    python -m pipeline.commands.sweep [--metric summary.json:models.fast.valid] [--out sweep]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.inspect.tables import markdown_table, write_csv
from pipeline.io import staged

METRIC = "summary.json:submission.valid.score"  # the submission's validation score, in the run's own metric
RUN_METRIC = "summary.json:metric"  # what each run was judged by (params.yaml `metric`, resolved)


def runs_metric(rows: list[dict]) -> str:
    """The sort key the runs call for: the submission's validation score (summary.json, in each run's `metric`),
    where every run is judged by the same metric."""
    used = sorted({r["metrics"][RUN_METRIC] for r in rows if r["metrics"].get(RUN_METRIC)})
    if len(used) > 1:
        raise PipelineError(
            f"the experiments are judged by different metrics ({', '.join(used)}): choose one score to sort by, "
            "e.g. --metric summary.json:models.<model>.valid"
        )
    return METRIC


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested mapping as dotted keys."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out |= flatten(v, key) if isinstance(v, dict) else {key: v}
    return out


def experiments(shown: list[dict]) -> list[dict]:
    """One row per finished experiment (and the baseline commit): name, flat params, flat metrics by file."""
    rows = []
    for base in shown:
        if base.get("rev") == "workspace":
            continue
        runs = [(f"baseline {base.get('name') or str(base.get('rev'))[:7]}", base)]
        runs += [(e.get("name") or "", (e.get("revs") or [e])[0]) for e in base.get("experiments") or []]
        for name, rev in runs:
            data = rev.get("data") or {}
            if rev.get("error") or not data.get("metrics"):
                continue  # failed or still running
            params = {}
            for f in (data.get("params") or {}).values():
                params |= flatten(f.get("data") or {})
            metrics = {
                f"{path}:{k}": v for path, f in data["metrics"].items() for k, v in flatten(f.get("data") or {}).items()
            }
            rows.append({"name": name or str(rev.get("rev", ""))[:7], "params": params, "metrics": metrics})
    return rows


def table(rows: list[dict], metric: str | None = None) -> tuple[list[str], list[dict]]:
    """(the swept params, rows sorted by `metric` descending with `metric`, the matching test figure and each
    swept param's value). A swept param is one whose value differs between the experiments."""
    if not rows:
        raise PipelineError("no finished experiments: run `dvc exp run --queue -S ...` and `dvc queue start` first")
    have = sorted({k for r in rows for k in r["metrics"]})
    metric = metric or runs_metric(rows)
    if not any(metric in r["metrics"] for r in rows):
        scores = [k for k in have if k.endswith(("valid", "test", "score"))]
        raise PipelineError(f"--metric {metric!r} is in no experiment; scores there: {', '.join(scores)}")
    keys = sorted({k for r in rows for k in r["params"]})
    swept = [k for k in keys if len({json.dumps(r["params"].get(k), sort_keys=True) for r in rows}) > 1]
    test = re.sub(r"([:.])valid\b", r"\1test", metric, count=1)
    out = []
    for r in rows:
        out.append(
            {
                "experiment": r["name"],
                metric: r["metrics"].get(metric),
                **({test: r["metrics"].get(test)} if test != metric else {}),
                **{k: r["params"].get(k) for k in swept},
            }
        )
    out.sort(key=lambda r: -(r[metric] if isinstance(r[metric], int | float) else -math.inf))
    return swept, out


def plot(path: Path, swept: list[str], rows: list[dict], metric: str) -> None:
    """The metric against each swept param, one panel per param."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(swept), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4), squeeze=False)
    for ax, k in zip(axes[0], swept or ["experiment"]):
        pts = [(r[k], r[metric]) for r in rows if r.get(k) is not None and isinstance(r[metric], int | float)]
        xs = [x for x, _ in pts]
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
        if numeric:
            ax.scatter(xs, [100 * y for _, y in pts])
            if xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        else:
            labels = sorted({json.dumps(x) for x in xs})
            ax.scatter([labels.index(json.dumps(x)) for x in xs], [100 * y for _, y in pts])
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set(xlabel=k, ylabel=f"{metric} (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(shown: list[dict], metric: str | None, out: Path) -> list[dict]:
    """The sweep's table and plot written under `out`, sorted by `metric` (None: the runs' own); returns the rows."""
    swept, rows = table(experiments(shown), metric)
    cols = list(rows[0])
    metric = cols[1]
    with staged(out) as (d,):
        write_csv(d / "table.csv", cols, rows)

        scores = set(cols[1 : len(cols) - len(swept)])  # the metric and its test twin: percentages; params as written

        def cell(col, v):
            if col in scores and isinstance(v, int | float):
                return f"{100 * v:.2f}"
            return json.dumps(v) if isinstance(v, list) else v

        head = f"Experiments sorted by `{metric}` (scores in %); swept: {', '.join(swept) or 'nothing'}.\n\n"
        (d / "table.md").write_text(head + markdown_table(cols, [[cell(c, r[c]) for c in cols] for r in rows]))
        plot(d / "accuracy_vs_params.png", swept, rows, metric)
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.commands.sweep`: reads `dvc exp show --json` and writes the table; 1 on an error."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--metric",
        default=None,
        help="metrics file:key to sort and plot (default: summary.json's submission score, in the runs' metric)",
    )
    ap.add_argument("--out", default="sweep", help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    r = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if r.returncode:
        print(f"error: `dvc exp show --json` failed: {r.stderr.strip()}", file=sys.stderr)
        return 1
    try:
        run(json.loads(r.stdout), args.metric, Path(args.out))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print((Path(args.out) / "table.md").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
