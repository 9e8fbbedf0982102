"""Benchmark 2: `dvc repro` of the default params from scratch: wall time and peak memory per stage, in total.

Runs `dvc repro --force --no-run-cache` (every stage executes; nothing is restored from DVC's run cache),
follows its output to know which stage runs, and samples the resident memory of the whole process tree
(dvc and the stage's python) every 0.2 s with psutil. Writes bench/results/default_run.{json,md} with the
ensemble's accuracy from ensemble/metrics.json.
Run:    python -m bench.default_run          (from the project root, in the virtual environment)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from bench.machine import add_paths, cpu_name, out_dir, write_json, write_text
from pipeline.artifacts import ensemble_metrics_file, load_ensemble_metrics, load_member_metrics, metrics_file
from pipeline.inspect.tables import markdown_table


def tree_rss(p: psutil.Process) -> int:
    total = 0
    for q in [p, *p.children(recursive=True)]:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def main(argv: list[str] | None = None) -> None:
    ap = add_paths(argparse.ArgumentParser(prog="python -m bench.default_run", description=__doc__.split("\n")[0]))
    ap.add_argument("targets", nargs="*", help="stages to run (default: all)")
    args = ap.parse_args(argv)
    ROOT = args.root  # the project the run is in
    cmd = ["dvc", "repro", "--force", "--no-run-cache", *args.targets]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    stages: dict[str, dict] = {}
    current = {"name": None}
    done = threading.Event()

    def sample():
        while not done.is_set():
            name = current["name"]
            if name:
                rss = tree_rss(ps)
                stages[name]["peak_rss_mib"] = max(stages[name]["peak_rss_mib"], rss / 2**20)
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    for line in proc.stdout:
        sys.stdout.write(line)
        m = re.match(r"Running stage '([^']+)'", line)
        if m:
            now = time.perf_counter() - t0
            if current["name"]:
                stages[current["name"]]["end_s"] = now
            current["name"] = m.group(1)
            stages[m.group(1)] = {"start_s": now, "peak_rss_mib": 0.0}
    rc = proc.wait()
    total = time.perf_counter() - t0
    done.set()
    if current["name"]:
        stages[current["name"]]["end_s"] = total
    for s in stages.values():
        s["wall_s"] = round(s["end_s"] - s["start_s"], 1)
        s["peak_rss_mib"] = round(s["peak_rss_mib"], 1)
    if rc:
        sys.exit(f"dvc repro failed with exit code {rc}")
    ens = load_ensemble_metrics(ensemble_metrics_file(ROOT))
    for name, s in stages.items():  # each model's accuracy beside its cost
        key = name.split("@", 1)[-1]
        if "@" in name and (metrics_file(ROOT, key)).is_file():
            m = load_member_metrics(metrics_file(ROOT, key), key)
            s |= {"valid_acc": m.valid.accuracy, "test_acc": m.test.accuracy if m.test else None}
            s["precision"] = m.precision
    result = {
        "command": " ".join(cmd),
        "total_s": round(total, 1),
        "stages": stages,
        "ensemble": {
            "method": ens.chosen,
            "members": ens.members,
            "test": ens.test.to_json() if ens.test else None,
            "valid": ens.valid.to_json(),
            "best_model": ens.best_model,
            "gain": ens.gain,
            "strategies": {
                k: {"valid": v.valid.accuracy} | ({"test": v.test.accuracy} if v.test else {})
                for k, v in ens.strategies.items()
            },
        },
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "avx512_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text()
            if Path("/proc/cpuinfo").exists()
            else None,
        },
    }
    OUT = out_dir(args)
    write_json(OUT / "default_run.json", result)

    def pct(v):
        return f"{100 * v:.2f}" if v is not None else ""

    test = f"{100 * ens.test.accuracy:.2f} %" if ens.test else "n/a"
    gain = ", ".join(f"{100 * v:+.2f} points on {k}" for k, v in ens.gain.items())
    precisions = sorted({s["precision"] for s in stages.values() if s.get("precision")})
    md = (
        f"`python -m bench.default_run` (`{result['command']}`), default params, Fashion-MNIST\n\n"
        f"Total: {total / 60:.1f} min; ensemble ({ens.chosen}, {len(ens.members)} members: "
        f"{', '.join(ens.members)}) validation {pct(ens.valid.accuracy)} %, test {test}; "
        f"gain over the best model ({ens.best_model}, by validation): {gain}; "
        f"largest peak memory {max(s['peak_rss_mib'] for s in stages.values()) / 1024:.2f} GiB; "
        f"precision {', '.join(precisions)}\n\n"
        + markdown_table(
            ["stage", "wall s", "peak memory MiB", "valid acc %", "test acc %"],
            [
                [k, v["wall_s"], v["peak_rss_mib"], pct(v.get("valid_acc")), pct(v.get("test_acc"))]
                for k, v in stages.items()
            ],
        )
        + "\nEnsemble strategies (valid / test %): "
        + "; ".join(
            f"{k} {pct(v.get('valid'))} / {pct(v.get('test'))}" for k, v in result["ensemble"]["strategies"].items()
        )
        + f"\n\nMachine: {result['machine']}\n"
    )
    write_text(OUT / "default_run.md", md)
    print(md)


if __name__ == "__main__":
    main()
