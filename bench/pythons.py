"""Set-up on other Pythons: a fresh `git clone --depth 1` (what notebooks and CI templates make: no history), then
`make quick PYTHON=<python>` (its own virtual environment, the pinned requirements, the suite without the slow
tests; `--target test` for the whole suite), per Python; what passed and how long it took.

`--check` (the smallest mode, what the test runs): only `make python PYTHON=<python>`, which says which Python and
virtual environment the set-up would use or what to install; nothing is installed.
Writes bench/results/pythons_<target>.{json,md} (--out), a row as soon as each Python is measured.
Run:    python -m bench.pythons [--pythons /usr/bin/python3.12 python3.13] [--target quick|test] [--check]
        (a new Python downloads torch's CUDA wheels, several GB: minutes per Python)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import ROOT, cpu_name, write_json, write_text
from pipeline.inspect.tables import markdown_table

PYENV = Path("/root/.pyenv/versions")


def found() -> list[str]:
    """python3.12 and python3.13 where this machine has them (on PATH, or pyenv's builds)."""
    out = []
    for v in ("3.12", "3.13"):
        p = shutil.which(f"python{v}")
        builds = sorted(PYENV.glob(f"{v}.*/bin/python{v}"))
        if builds:
            p = str(builds[-1])  # pyenv's shims answer only for the global version
        if p:
            out.append(p)
    return out


def make(
    target: str, python: str, cwd: Path, timeout: int = 5400, extra=(), wrap=None, env_extra=None
) -> tuple[int, str, float]:
    """`make <target> PYTHON=<python> <extra>` in `cwd`, outside any activated environment; `wrap` turns the
    command into another (bench.torches: `unshare -n`), `env_extra` adds variables. (rc, output, seconds)"""
    # not the calling make's variables either (a test run by `make test TORCH=system VENV=...` passes them on in
    # MAKEFLAGS, and the Makefile exports PYTHON): this make resolves its own
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHON")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p and "venv-" not in p)
    env |= env_extra or {}
    cmd = ["make", "--no-print-directory", target, f"PYTHON={python}", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(
        wrap(cmd) if wrap else cmd,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return r.returncode, r.stdout + r.stderr, time.perf_counter() - t0


def measure(python: str, check: bool, target: str = "quick") -> dict:
    row: dict = {"python": python}
    rc, out, dt = make("python", python, ROOT)
    said = [line for line in out.splitlines() if line.startswith(("Python ", "error:"))]
    row |= {"resolved": said[0] if said else out.strip(), "check_rc": rc}
    if check or rc:
        return row
    with tempfile.TemporaryDirectory() as d:
        clone = Path(d) / "clone"
        subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)], check=True)
        rc, out, dt = make(target, python, clone)
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed)", line)]  # pytest's last line
    tail = summary[-1].strip("= ") if summary else out.strip()[-300:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", tail)}
    return row | {"target": target, "rc": rc, "minutes": round(dt / 60, 1), "summary": tail, **counts}


def markdown(r: dict) -> str:
    rows = [
        [
            x["python"],
            x["resolved"],
            x.get("target", "-"),
            x.get("minutes", "-"),
            x.get("passed", "-"),
            x.get("failed", 0) if "rc" in x else "-",
            "ok" if x.get("rc", x["check_rc"]) == 0 else "failed",
        ]
        for x in r["rows"]
    ]
    head = ["python", "`make python` says", "make target", "minutes", "passed", "failed", "result"]
    mode = " --check" if r["check"] else f" --target {r['target']}"
    return f"`python -m bench.pythons{mode}` on {r['cpu']}\n\n" + markdown_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pythons", description=__doc__.split("\n")[0])
    ap.add_argument("--pythons", nargs="+", default=None, help="interpreters (default: python3.12 and 3.13 found)")
    ap.add_argument("--check", action="store_true", help="only `make python`: which Python and venv, no install")
    ap.add_argument("--target", default="quick", choices=["quick", "test"], help="the make target run in the clone")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    pythons = args.pythons or found()
    if not pythons:
        print("no python3.12 or python3.13 on this machine: nothing to measure (--pythons to name one)")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    name = "pythons_check" if args.check else f"pythons_{args.target}"
    r = {"cpu": cpu_name(), "check": args.check, "target": args.target, "rows": []}
    for p in pythons:
        r["rows"].append(measure(p, args.check, args.target))
        write_json(args.out / f"{name}.json", r)
        write_text(args.out / f"{name}.md", markdown(r))
        print(json.dumps(r["rows"][-1]), flush=True)
    print(markdown(r))
    return 0 if all(x.get("rc", x["check_rc"]) == 0 for x in r["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
