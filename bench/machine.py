"""What every benchmark shares: the machine facts its results record, where it reads and writes, markdown tables.
(No torch import at module level: default_run.py runs without it.)"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.commands.doctor import cpu_name  # noqa: F401 (the benches' import of it)

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    """CPU, cores, torch threads and version, the GPU if any."""
    import torch

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def add_paths(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--root` (the project: params.yaml, data/prepared, a finished run) and `--out` (where results go)."""
    ap.add_argument("--root", type=Path, default=ROOT, help="the project folder (default: this checkout)")
    ap.add_argument("--out", type=Path, default=None, help="where results go (default: <root>/bench/results)")
    return ap


def out_dir(args: argparse.Namespace) -> Path:
    out = args.out or args.root / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, data) -> None:
    """A result as indented JSON, whole or not at all."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    """A result's text (its markdown), whole or not at all (pipeline.io.staged, as the stages write)."""
    from pipeline.io import staged

    with staged(Path(path)) as (tmp,):
        tmp.write_text(text)


def train_member(key: str, spec, arrays: dict, meta, seed: int, **kw):
    """One params entry trained as its stage trains it (pipeline.train.train_entry: `folds` and `refit` included),
    without DVC and without writing the stage's outputs."""
    from pipeline.train import train_entry

    return train_entry(key, spec, arrays, meta, seed, **kw)


def new_project(repo: Path, params: dict, dvc_yaml: str | None = None, bench_files: tuple[str, ...] = ()) -> Path:
    """A git + DVC repository at `repo` holding the pipeline's code, its dvc.yaml (or the text given), the report's
    equal-compute dependency, these params, and the named bench/ files; committed once. For tests and benchmarks
    that run `dvc repro` on a project of their own."""
    import shutil
    import subprocess

    import yaml

    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for pkg in ("pipeline", "ensembles"):
        shutil.copytree(ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for f in (".dvcignore", ".gitignore", "bench/results/equal_compute.json", *(f"bench/{b}" for b in bench_files)):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, repo / f)
    (repo / "dvc.yaml").write_text(dvc_yaml if dvc_yaml is not None else (ROOT / "dvc.yaml").read_text())
    params = {"budget": None, "race": None, **params}  # the pipeline's plan and race stages declare them
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init = "git init -q && dvc init -q && dvc config core.analytics false && git add -A && git commit -qm init"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # dvc
    subprocess.run(init, shell=True, cwd=repo, check=True, capture_output=True, env=env)
    return repo
