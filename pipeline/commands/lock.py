"""Command `python -m pipeline.commands.lock`: does the committed dvc.lock describe the code and params?

`dvc status` on a clean clone, keeping what a clone cannot have out of it: outputs live in DVC's cache (not in
git), so a clone lacks them and the stages reading them see them "deleted". What remains is what must never be
committed: a stage whose code file, params or command changed since its lock entry was written (the outputs were
not refreshed by running the pipeline), a stage of dvc.yaml the lock does not know, and a lock entry for a stage
dvc.yaml no longer has. Exit 1 naming each; CI runs it after the tests (.ci/run). Fix: `dvc repro` (or
`python -m bench.default_run`), then commit dvc.lock with the outputs.
Run:    python -m pipeline.commands.lock [--root .]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml


def stage_names(root: Path) -> set[str]:
    """dvc.yaml's stages, `foreach` expanded (`train@fast`), as DVC names them."""
    out = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=root, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"error: `dvc stage list` failed in {root}:\n{out.stderr.strip()}")
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def stale(root: Path) -> list[str]:
    """One line per problem; empty when the lock describes dvc.yaml, the code and params.yaml."""
    lock_file = root / "dvc.lock"
    locked = set((yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})) if lock_file.exists() else set()
    out = subprocess.run(["dvc", "status", "--json"], cwd=root, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"error: `dvc status` failed in {root}:\n{out.stderr.strip()}")
    status = json.loads(out.stdout or "{}")
    names = stage_names(root)
    produced = produced_by_a_stage(root)
    problems = [f"{s}: in dvc.lock, not in dvc.yaml (a removed stage's entry)" for s in sorted(locked - names)]
    problems += [f"{s}: in dvc.yaml, not in dvc.lock (never run and committed)" for s in sorted(names - locked)]
    for stage, changes in sorted(status.items()):
        if stage not in locked:
            continue
        for change in changes:
            if not isinstance(change, dict):  # "changed checksum", "always changed"
                problems.append(f"{stage}: {change}")
                continue
            for path, what in (change.get("changed deps") or {}).items():
                if isinstance(what, dict):  # a params file: {key: modified | new | deleted}
                    problems += [f"{stage}: param {key} {how} ({path})" for key, how in sorted(what.items())]
                elif not produced(path):
                    problems.append(f"{stage}: {path} {what}")
            if "changed command" in change:
                problems.append(f"{stage}: command changed")
    return problems


def produced_by_a_stage(root: Path):
    """is_produced(path): an output of some stage kept in DVC's cache, or a folder of them (`preds`): a clone has
    not got them. An output committed to git (`cache: false`: metrics/<key>.json) is on the clone and is checked
    like code. The raw data folder is skipped where it is absent (`make data` fills it); present and different, it
    is reported."""
    lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}  # read once, asked for every changed dependency
    outs = {o["path"] for s in lock.get("stages", {}).values() for o in s.get("outs", [])}
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    raw = str((params.get("data") or {}).get("path") or "")

    def is_produced(path: str) -> bool:
        if path == raw:
            return not (root / path).exists()
        if path not in outs and not any(o.startswith(path.rstrip("/") + "/") for o in outs):
            return False
        listed = subprocess.run(["git", "ls-files", "--", path], cwd=root, capture_output=True, text=True).stdout
        return not [f for f in listed.splitlines() if Path(f).name != ".gitignore"]  # nothing of it in git

    return is_produced


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.commands.lock`: 0 where the lock describes the code and params, else 1 naming why."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.commands.lock", description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="the project (default: .)")
    args = ap.parse_args(argv)
    problems = stale(args.root)
    if problems:
        print(f"dvc.lock does not describe the committed code and params of {args.root.resolve()}:")
        print("\n".join(f"  {p}" for p in problems))
        print("Run the pipeline (`dvc repro`, or `python -m bench.default_run`) and commit dvc.lock with its outputs.")
        return 1
    print(f"dvc.lock describes the code and params: {len(stage_names(args.root))} stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
