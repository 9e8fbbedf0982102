"""Does `time_budget` hold? Each entry trained with a budget of training seconds: asked against taken.

The budget per entry is `--budget` seconds, or `--scale` × the training seconds the entry took in the last
`dvc repro` (metrics/<entry>.json `train_s`), so every default entry is asked for its own size of run. Each is
trained through the stage's train_entry on data/prepared (what its stage runs, without DVC). Writes
bench/results/time_budget.{json,md}: asked, predicted, taken, their ratio, what the stage chose.
Run:    python -m bench.time_budget [entries ...] [--scale 1.0 | --budget S] [--root .]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.machine import add_paths, cpu_name, out_dir, train_member, write_json, write_text
from pipeline.artifacts import load_member_metrics, load_prepared, metrics_file
from pipeline.inspect.tables import markdown_table
from pipeline.params import load_params, member_seed, model_names, train_spec


def run(root: Path, out: Path, names: list[str], scale: float = 1.0, budget: float | None = None) -> dict:
    params = load_params(root / "params.yaml")
    names = names or model_names(params)
    prep = load_prepared(root)
    arrays, meta = prep.arrays, prep.meta
    rows = {}
    for n in names:
        asked = budget or scale * load_member_metrics(metrics_file(root, n), n).train_s
        spec = replace(train_spec(params, n), time_budget=asked)
        seed = member_seed(params, spec)
        m = train_member(n, spec, arrays, meta, seed).metrics
        tb = m.time_budget
        rows[n] = {**tb, "ratio": round(m.train_s / asked, 3), "valid": m.valid.accuracy}
    res = {"cpu": cpu_name(), "scale": scale, "budget": budget, "entries": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "time_budget.json", res)
    how = f"--budget {budget:g}" if budget else f"--scale {scale:g}"
    lines = [
        f"`python -m bench.time_budget {' '.join(names)} {how}` on {res['cpu']}",
        "",
        *markdown_table(
            ["entry", "asked s", "predicted s", "taken s", "taken / asked", "chosen", "valid acc"],
            [
                [n, f"{r['asked_s']:.1f}", f"{r['predicted_s']:.1f}", f"{r['train_s']:.1f}", f"{r['ratio']:.3f}"]
                + [r["chosen"], f"{r['valid']:.4f}"]
                for n, r in rows.items()
            ],
        ).splitlines(),
    ]
    worst = max(abs(r["ratio"] - 1) for r in rows.values())
    lines += ["", f"Largest miss: {100 * worst:.1f} % of the asked seconds."]
    write_text(out / "time_budget.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return res


def main(argv: list[str] | None = None) -> None:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.time_budget", description=__doc__.split("\n")[0]))
    ap.add_argument("entries", nargs="*", help="archs / variants names (default: every model)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--budget", type=float, default=None, help="the same seconds for every entry")
    a = ap.parse_args(argv)
    run(a.root, out_dir(a), a.entries, a.scale, a.budget)


if __name__ == "__main__":
    main()
