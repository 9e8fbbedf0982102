"""The set-up's helpers (the Makefile's): the torch versions this project supports and a check of an interpreter's
own torch (`make setup TORCH=system` keeps it only inside the range; `doctor` reports it), the files that keep it in a
new virtual environment, and the list of wheels a wheelhouse holds (`make wheelhouse`). Standard library and pip
only: it runs with an interpreter that has nothing of the project installed.

Run (from the project's folder):
        python -m pipeline.commands.environment check [--gpu]     exit 0: a torch in the range (--gpu: that sees a
                                                                  GPU), 3: no torch, 4: outside the range, 5: no GPU
        python -m pipeline.commands.environment keep-torch VENV   VENV sees this interpreter's torch; writes VENV's
                                                                  requirements-no-torch.txt, torch-constraints.txt
        python -m pipeline.commands.environment wheels REPORT [--with-torch] [--skip ..] [--have ..]
                                                                  pip's --report -> name==version lines
        python -m pipeline.commands.environment pins 2.5.1        torch==2.5.1 and its torchvision, as constraints
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from importlib import metadata
from pathlib import Path

# The oldest torch the code, fastai 2.8 and timm run with (tested at both ends on a CPU: bench/results/torches_quick.md, torches_test.md):
# 2.5 has torch.cpu's bf16 checks (`precision: native`; fastai's torch.amp imports need 2.3) and Python 3.13 wheels;
# and the first minor release not yet tried. torchvision must be torch's own pair (TORCHVISION).
OLDEST = (2, 5)
NEWER_THAN = (2, 15)  # exclusive: 2.15 is out, not yet tried here (pip on these machines is capped at 2.14)
TORCHVISION = {(2, m): (0, m + 15) for m in range(OLDEST[1], NEWER_THAN[1])}  # torch 2.14 <-> torchvision 0.29
RANGE = f"torch>={OLDEST[0]}.{OLDEST[1]},<{NEWER_THAN[0]}.{NEWER_THAN[1]}"


def release(version: str) -> tuple[int, int]:
    """'2.14.1+cu130' -> (2, 14)."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"not a version: {version!r}")
    return int(m[1]), int(m[2])


def supported(version: str) -> bool:
    """Is this torch version inside the supported range?"""
    return OLDEST <= release(version) < NEWER_THAN


def problem(torch_version: str, torchvision_version: str | None) -> str | None:
    """Why this torch (and torchvision) pair cannot run the project, or None where it can."""
    if not supported(torch_version):
        return f"torch {torch_version} is outside the supported range {RANGE}"
    want = TORCHVISION[release(torch_version)]
    if torchvision_version is None:
        return f"torch {torch_version} has no torchvision beside it: install torchvision {want[0]}.{want[1]}.*"
    if release(torchvision_version) != want:
        return (
            f"torchvision {torchvision_version} does not pair with torch {torch_version}: "
            f"torch {torch_version} needs torchvision {want[0]}.{want[1]}.*"
        )
    return None


# what TORCH=system keeps from the machine (and takes out of requirements.txt)
TORCH_PINS = re.compile(r"^(torch|torchvision)$")


def norm(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def check(gpu: bool) -> int:
    """This interpreter's torch: 0 in the range (with `gpu`: and seeing a GPU, else 5), 3 none, 4 outside."""
    if importlib.util.find_spec("torch") is None:  # without importing anything: cheap for the Makefile
        print(f"{sys.executable}: no torch; supported: {RANGE}")
        return 3
    import torch

    try:
        import torchvision

        tv = torchvision.__version__
    except Exception:  # any exception: torchvision missing, or built for another torch (fails to import)
        tv = None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    usable = torch.cuda.is_available()
    print(f"{sys.executable}: torch {torch.__version__} ({build} build, GPU usable: {'yes' if usable else 'no'})")
    why = problem(torch.__version__, tv)
    if why:
        print(f"error: {why}; supported: {RANGE} with its torchvision")
        return 4
    if gpu and not usable:
        return 5
    print(f"ok: torch {torch.__version__} with torchvision {tv} is in the supported range {RANGE}")
    return 0


def keep_torch(venv: Path, requirements: Path) -> int:
    """Make `venv` (made with --system-site-packages) see this interpreter's torch also where the interpreter is
    itself a virtual environment or conda's (a .pth file naming torch's folder), and write the requirements without
    torch and the constraints that pin torch and torchvision to the versions found, so pip installs the rest
    beside them and never replaces them."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        print(f"error: {sys.executable} has no torch to keep; supported: {RANGE}")
        return 3
    site = Path(next(iter(spec.submodule_search_locations))).parent
    found = sorted(venv.glob("lib/python*/site-packages"))
    target = found[0] if found else None
    if target is None:
        print(f"error: {venv}: not a virtual environment (no lib/python*/site-packages)")
        return 2
    (target / "machine-torch.pth").write_text(f"{site}\n")
    kept = [f"{d}=={metadata.version(d)}" for d in ("torch", "torchvision") if _installed(d)]
    (venv / "torch-constraints.txt").write_text("\n".join(kept) + "\n")
    lines = requirements.read_text().splitlines()
    rest = [ln for ln in lines if not TORCH_PINS.match(norm(re.split(r"[=<>~!;\[ ]", ln.strip(), maxsplit=1)[0]))]
    (venv / "requirements-no-torch.txt").write_text("\n".join(rest) + "\n")
    print(f"keeping {', '.join(kept)} from {site}")
    return 0


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _requirement():
    """packaging's Requirement (markers evaluated for this interpreter and platform): the installed packaging, else
    the copy pip carries (the set-up runs with an interpreter that has pip and maybe nothing else)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def requirements_of(item: dict, extras: set[str]) -> list[tuple[str, set[str]]]:
    """(name, extras) of what a resolved distribution requires on this interpreter and platform (markers such as
    `platform_system == "Windows"` evaluated), with the requirements of the `extras` asked of it."""
    requirement = _requirement()
    out = []
    for r in item["metadata"].get("requires_dist") or []:
        req = requirement(r)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            continue
        out.append((norm(req.name), {norm(e) for e in req.extras}))
    return out


def needed(report: dict, stop: set[str], roots: set[str] | None = None) -> set[str]:
    """The distributions of pip's resolution reached from `roots` (default: the requested ones) through their
    requirements (the extras asked for followed), without entering those in `stop`."""
    items = {norm(i["metadata"]["name"]): i for i in report.get("install", [])}
    seen: set[tuple[str, frozenset]] = set()
    starts = {norm(r) for r in roots} if roots is not None else {n for n, i in items.items() if i.get("requested")}
    todo = [(n, frozenset()) for n in starts]
    while todo:
        n, extras = todo.pop()
        if (n, extras) in seen or n not in items or n in stop:
            continue
        seen.add((n, extras))
        todo += [(d, frozenset(e)) for d, e in requirements_of(items[n], set(extras))]
    return {n for n, _ in seen}


def wheel_list(report: dict, with_torch: bool, skip: tuple[str, ...] = (), have: tuple[str, ...] = ()) -> list[str]:
    """pip install --dry-run --report's resolution -> the name==version lines of a wheelhouse: torch with what only
    it needs left out unless `with_torch` (a machine with its own torch has them); `skip`: distributions an install
    with --no-deps can go without, left out with what only they need; `have`: distributions the target machine
    has installed, left out with everything they require (it has those too)."""
    stop = {norm(n) for n in skip} | (set() if with_torch else {"torch", "torchvision"})
    keep = needed(report, stop) - (needed(report, set(), set(have)) if have else set())
    out = [
        f"{i['metadata']['name']}=={i['metadata']['version']}"
        for i in report.get("install", [])
        if norm(i["metadata"]["name"]) in keep
    ]
    return sorted(out, key=str.lower)


def main(argv: list[str] | None = None) -> int:
    """The subcommands: check, keep-torch, wheels."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.commands.environment", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="is this interpreter's torch in the supported range?")
    c.add_argument("--gpu", action="store_true", help="and does it see a usable GPU? (exit 5 if not)")
    k = sub.add_parser("keep-torch", help="let a new virtual environment use this interpreter's torch")
    k.add_argument("venv", type=Path)
    k.add_argument("--requirements", type=Path, default=Path("requirements.txt"))
    w = sub.add_parser("wheels", help="pip's --report -> the wheelhouse's name==version list")
    w.add_argument("report", type=Path)
    w.add_argument("--with-torch", action="store_true")
    w.add_argument("--skip", nargs="*", default=[], help="distributions a --no-deps install goes without")
    w.add_argument("--have", nargs="*", default=[], help="distributions the target has, with what they require")
    c2 = sub.add_parser("pins", help="constraints for a machine's torch: torch==V and its torchvision")
    c2.add_argument("torch_version")
    args = ap.parse_args(argv)
    if args.cmd == "check":
        return check(args.gpu)
    if args.cmd == "keep-torch":
        return keep_torch(args.venv, args.requirements)
    if args.cmd == "pins":
        if not supported(args.torch_version):
            print(f"error: torch {args.torch_version} is outside the supported range {RANGE}", file=sys.stderr)
            return 4
        tv = TORCHVISION[release(args.torch_version)]
        print(f"torch=={args.torch_version}\ntorchvision=={tv[0]}.{tv[1]}.*")
        return 0
    print(
        "\n".join(wheel_list(json.loads(args.report.read_text()), args.with_torch, tuple(args.skip), tuple(args.have)))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
