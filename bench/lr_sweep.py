"""Which learning rate for a from-scratch net: lr_find's valley against fixed values, same budget.

Trains one params.yaml entry (its own settings, with `train_limit` and `epochs` overridden) on the prepared data
once per lr and reports valid/test accuracy. Backs the `lr:` choices in params.yaml.
Writes bench/results/lr_sweep_<arch>.{json,md}.
Run:    python -m bench.lr_sweep fast --lrs auto 2e-3 5e-3 1e-2 [--train-limit 12000] [--epochs 2]
        (needs data/prepared: `dvc repro prepare`)
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.machine import add_paths, out_dir, train_member, write_json, write_text
from pipeline.artifacts import load_prepared
from pipeline.inspect.tables import markdown_table
from pipeline.params import load_params, train_spec


def main(argv: list[str] | None = None) -> None:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.lr_sweep"))
    ap.add_argument("arch", help="a key of `archs:` in params.yaml")
    ap.add_argument("--lrs", nargs="+", default=["auto", "2e-3", "5e-3"])
    ap.add_argument("--train-limit", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    prep = load_prepared(args.root)
    arrays, meta = prep.arrays, prep.meta
    params = load_params(args.root / "params.yaml")
    rows = []
    for lr in args.lrs:
        spec = replace(
            train_spec(params, args.arch),
            train_limit=args.train_limit,
            epochs=args.epochs,
            phases=None,
            lr=lr if lr == "auto" else float(lr),
        )
        m = train_member(args.arch, spec, arrays, meta, args.seed).metrics
        rows.append(
            {
                "lr_param": lr,
                "lr": m.lr,
                "valid_acc": m.valid.accuracy,
                "test_acc": m.test.accuracy if m.test else None,
                "train_s": m.train_s,
            }
        )
        print(rows[-1], flush=True)
    out = out_dir(args)
    saved = {k: v for k, v in vars(args).items() if k not in ("root", "out")}
    write_json(out / f"lr_sweep_{args.arch}.json", {"args": saved, "rows": rows})
    md = (
        f"`python -m bench.lr_sweep {args.arch} --lrs {' '.join(args.lrs)} --train-limit {args.train_limit} "
        f"--epochs {args.epochs}` (seed {args.seed})\n\n"
        + markdown_table(
            ["lr", "used", "valid acc", "test acc", "train s"],
            [
                [
                    r["lr_param"],
                    f"{r['lr']:.2e}",
                    f"{r['valid_acc']:.4f}",
                    f"{r['test_acc']:.4f}",
                    f"{r['train_s']:.0f}",
                ]
                for r in rows
            ],
        )
    )
    write_text(out / f"lr_sweep_{args.arch}.md", md)
    print(md)


if __name__ == "__main__":
    main()
