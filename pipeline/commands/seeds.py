"""Command `python -m pipeline.commands.seeds ENTRY N`: N more seeds of an `archs` entry, as `variants` in params.yaml.

Each is one line, `<entry>-s<seed>: {of: <entry>, seed: <seed>}` (seeds after the entry's own), so each is a DVC
stage (`variant@<entry>-s<seed>`), a model of its own and a candidate member; the leaderboard reports the entry's
mean ± std over its models and marks entries whose difference is smaller than that spread. The lines go under
`variants:` with the file's comments kept; existing names are left as they are (rerunning adds nothing).
Run:    python -m pipeline.commands.seeds fast 2 [--params params.yaml]
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

import yaml

from pipeline.errors import PipelineError
from pipeline.io import staged
from pipeline.params import arch_names, seed_param, variants


def add_seeds(path: Path, entry: str, n: int) -> list[str]:
    """Adds the lines; returns the names added."""
    text = path.read_text()
    params = yaml.safe_load(text) or {}
    names = arch_names(params)
    if entry not in names:
        near = difflib.get_close_matches(entry, names, n=3)
        raise PipelineError(
            f"{path}: no `archs.{entry}`" + (f" (did you mean {', '.join(near)}?)" if near else f"; entries: {names}")
        )
    if n < 1:
        raise PipelineError(f"N = {n}: give how many more seeds, 1 or more")
    base = (params["archs"][entry] or {}).get("seed")
    base = seed_param(params) if base is None else int(base)
    have = variants(params)
    new = [(f"{entry}-s{s}", s) for s in range(base + 1, base + 1 + n) if f"{entry}-s{s}" not in have]
    if not new:
        return []
    lines = [
        f"  {name}: {{of: {entry}, seed: {s}}}   # python -m pipeline.commands.seeds {entry} {n}\n" for name, s in new
    ]
    out = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(out) if re.match(r"variants:\s*(\{\s*\})?\s*(#.*)?$", line)), None)
    if at is None:
        out += ["\n", "variants:\n", *lines]
    else:
        out[at] = re.sub(r"variants:\s*\{\s*\}", "variants:", out[at])
        out[at + 1 : at + 1] = lines
    new_text = "".join(out)
    variants(yaml.safe_load(new_text))  # still a valid section before anything is written
    with staged(path) as (tmp,):  # whole or not at all
        tmp.write_text(new_text)
    return [name for name, _ in new]


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.commands.seeds ENTRY N`: adds the variants to params.yaml; 1 on an error."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.commands.seeds", description=__doc__.split("\n")[0])
    ap.add_argument("entry")
    ap.add_argument("n", type=int)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    try:
        added = add_seeds(a.params, a.entry, a.n)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"added {', '.join(added)} to {a.params} (`dvc repro` trains them)" if added else "nothing to add")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
