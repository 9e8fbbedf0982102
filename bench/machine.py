"""What every benchmark shares: the machine facts its results record, where it reads and writes, markdown tables.
(No torch import at module level: default_run.py runs without it.)"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


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


def md_table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
