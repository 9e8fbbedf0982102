"""The supported torch range on a CPU, as a machine with its own torch sets the project up: for each torch, a
"machine" Python that already has it (a virtual environment made here with that torch and its torchvision, as
Colab's or a container's Python has one), then in a fresh `git clone --depth 1`: `make setup TORCH=system
PYTHON=<that Python>` (the rest of requirements.txt installed beside the machine's torch, which must stay the one
used) and `make quick` or, with `--target test`, the whole suite. `--wheelhouse DIR` installs from a wheelhouse
(`make wheelhouse FOR_TORCH=<torch>`; `{torch}` in DIR is each torch's version), set-up and suite with the network cut (`unshare -n`, pip's configuration and find-links
emptied), as a node without network would. What passed, how long it took, whether set-up installed a torch of its own.

`--check` (the smallest mode, what the test runs): the current interpreter as the machine's Python, only `make
python TORCH=system`, which says the environment it would make; nothing is installed.
Writes bench/results/torches[_offline]_<target>.{json,md} (--out), a row as soon as each torch is measured.
Run:    python -m bench.torches [--torches 2.5.1 2.14.1] [--target quick|test] [--wheelhouse /tmp/wh-{torch}] [--check]
        (a torch other than the pinned one downloads its CUDA wheels from PyPI, several GB)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import ROOT, cpu_name, write_json, write_text
from bench.pythons import make
from pipeline.commands import environment
from pipeline.inspect.tables import markdown_table

MACHINES = Path(tempfile.gettempdir()) / "ensemble-bench-machines"


def machine_python(torch_version: str, base: str = sys.executable) -> Path:
    """A Python that has `torch_version` and its torchvision installed, as a machine's own (made once, reused)."""
    tv = ".".join(map(str, environment.TORCHVISION[environment.release(torch_version)]))
    home = MACHINES / f"torch{torch_version}"
    py = home / "bin" / "python"
    if not (home / ".complete").exists():
        base = getattr(sys, "_base_executable", base)
        subprocess.run([base, "-m", "venv", "--clear", str(home)], check=True)
        pins = [f"torch=={torch_version}", f"torchvision=={tv}.*"]
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *pins], check=True)
        (home / ".complete").touch()
    return py


def offline(cmd: list[str]) -> list[str]:
    """`cmd` with the network cut (a new network namespace) where unshare can make one."""
    return ["unshare", "-n", *cmd]


def torch_of(venv_python: Path) -> str:
    """Where the environment's torch comes from: the machine's folder, not the venv's own site-packages."""
    r = subprocess.run(
        [str(venv_python), "-c", "import torch, sys; print(torch.__version__, torch.__file__)"],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip()


def measure(torch_version: str | None, target: str, wheelhouse: str | None, check: bool) -> dict:
    py = Path(sys.executable) if torch_version is None else machine_python(torch_version)
    row: dict = {"torch": torch_version or "this interpreter's", "machine_python": str(py)}
    wheelhouse = Path(wheelhouse.format(torch=torch_version)) if wheelhouse else None
    if wheelhouse:
        wheels = list(wheelhouse.glob("*.whl"))
        row |= {"wheels": len(wheels), "wheelhouse_mib": round(sum(f.stat().st_size for f in wheels) / 2**20, 1)}
    rc, out, _ = make("python", str(py), ROOT, extra=["TORCH=system"])
    row |= {"resolved": next((ln for ln in out.splitlines() if ln.startswith(("Python", "error"))), out.strip())}
    if check or rc:
        return row | {"rc": rc}
    env_extra = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""} if wheelhouse else {}
    with tempfile.TemporaryDirectory() as d:
        clone, venv = Path(d) / "clone", Path(d) / "venv"
        subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)], check=True)
        extra = ["TORCH=system", f"VENV={venv}"] + ([f"WHEELHOUSE={wheelhouse.resolve()}"] if wheelhouse else [])
        wrap = offline if wheelhouse else None
        t0 = time.perf_counter()
        rc, out, _ = make("setup", str(py), clone, extra=extra, wrap=wrap, env_extra=env_extra)
        setup_min = (time.perf_counter() - t0) / 60
        row |= {"setup_rc": rc, "setup_minutes": round(setup_min, 1), "venv_torch": torch_of(venv / "bin" / "python")}
        row["installed_torch"] = bool(list(venv.glob("lib/python*/site-packages/torch")))
        if rc:
            return row | {"rc": rc, "summary": out.strip()[-600:]}
        rc, out, dt = make(target, str(py), clone, extra=extra, wrap=wrap, env_extra=env_extra)
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    tail = summary[-1].strip("= ") if summary else out.strip()[-300:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", tail)}
    failed = [line.split()[1] for line in out.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    row = row | {"target": target, "rc": rc, "minutes": round(dt / 60, 1), "summary": tail, **counts}
    return row | ({"failed_tests": failed} if failed else {})


def markdown(r: dict) -> str:
    rows = [
        [
            x["torch"],
            x.get("venv_torch", "-"),
            "yes" if x.get("installed_torch") else "no" if "installed_torch" in x else "-",
            f"{x['wheels']} wheels, {x['wheelhouse_mib']} MiB" if "wheels" in x else "network",
            x.get("setup_minutes", "-"),
            x.get("target", "-"),
            x.get("minutes", "-"),
            x.get("passed", "-"),
            x.get("failed", 0) if "summary" in x else "-",
            "ok" if x["rc"] == 0 else "failed",
        ]
        for x in r["rows"]
    ]
    head = ["machine's torch", "torch the venv imports", "set-up installed a torch", "from", "set-up min"]
    head += ["make target"]
    head += ["minutes", "passed", "failed", "result"]
    mode = " --check" if r["check"] else f" --target {r['target']}"
    where = ", set-up and suite with the network cut (`unshare -n`)" if r.get("offline") else ""
    return f"`python -m bench.torches{mode}` on {r['cpu']}{where}\n\n" + markdown_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.torches", description=__doc__.split("\n")[0])
    oldest = ".".join(map(str, environment.OLDEST)) + ".1"
    ap.add_argument("--torches", nargs="+", default=[oldest, "2.14.1"], help="torch versions (default: both ends)")
    ap.add_argument("--target", default="quick", choices=["quick", "test"], help="the make target run in the clone")
    ap.add_argument("--wheelhouse", default=None, help="set up from this wheelhouse ({torch}: each's), network cut")
    ap.add_argument("--check", action="store_true", help="only `make python TORCH=system` with this interpreter")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "torches_check" if args.check else f"torches{'_offline' if args.wheelhouse else ''}_{args.target}"
    r = {"cpu": cpu_name(), "check": args.check, "target": args.target, "offline": bool(args.wheelhouse), "rows": []}
    for t in [None] if args.check else args.torches:
        r["rows"].append(measure(t, args.target, args.wheelhouse, args.check))
        write_json(args.out / f"{name}.json", r)
        write_text(args.out / f"{name}.md", markdown(r))
        print(json.dumps(r["rows"][-1]), flush=True)
    print(markdown(r))
    return 0 if all(x["rc"] == 0 for x in r["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
