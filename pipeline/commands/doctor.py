"""Command `python -m pipeline.commands.doctor`: what this machine offers and what a run will use, on one screen
(as `dvc doctor` and torch's `collect_env` do): Python, torch (version, CUDA build, kernels, in the supported range),
the NVIDIA driver and each GPU (name, compute capability, memory, native bf16), the CPU (bf16 in hardware),
what `device` and `precision` resolve to for each entry of params.yaml, the library versions, whether `data.path`
exists. Paste it into a bug report. Reads params.yaml; writes nothing; needs no network and no GPU.
Exit 1 where a stage would stop (a GPU torch cannot use, a torch outside the range, a bad params.yaml), else 0.
Run:    python -m pipeline.commands.doctor [--params params.yaml]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torchvision", "fastai", "timm", "numpy", "pandas", "scikit-learn", "dvc", "dvclive", "accelerate")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def version(dist: str) -> str:
    """An installed distribution's version, without importing it (fast), or 'not installed'."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def python_lines() -> list[str]:
    """The interpreter and its environment (a venv over the machine's own packages, TORCH=system, is said)."""
    venv = sys.prefix != sys.base_prefix
    where = f"virtual environment {sys.prefix}" if venv else "no virtual environment"
    shared = Path(sys.prefix, "pyvenv.cfg")
    if venv and shared.is_file() and "include-system-site-packages = true" in shared.read_text():
        where += " (with the system's packages: the machine's own torch)"
    return [f"python      {platform.python_version()} ({sys.executable}; {where})"]


def torch_lines(torch, problems: list[str]) -> list[str]:
    """torch's build and whether it is in the supported range (a problem where not), the libraries' versions."""
    from pipeline.commands import environment
    from pipeline.learn import nvidia

    tv = version("torchvision")
    why = environment.problem(torch.__version__, None if tv == "not installed" else tv)
    if why:
        problems.append(why)
    fits = "outside" if why else "in"
    lines = [
        f"torch       {nvidia.build_words(torch).removeprefix('torch ')}, {fits} the supported range {environment.RANGE}"
    ]
    lines.append("libraries   " + ", ".join(f"{d} {version(d)}" for d in LIBRARIES))
    return lines


def gpu_lines(torch) -> list[str]:
    """The driver and GPUs as the machine tells (without CUDA), then as torch sees them."""
    from pipeline.learn import nvidia
    from pipeline.learn.hardware import cuda_usable

    hidden = nvidia.hidden()
    shown = f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}"
    if not nvidia.present():
        return ["nvidia      no NVIDIA driver or GPU on this machine"]
    d = nvidia.driver()
    lines = [f"nvidia      {d}; {len(d.gpus)} GPU(s){'; hidden on purpose: ' + shown if hidden else ''}"]
    lines += [f"  gpu {i}     {g}" for i, g in enumerate(d.gpus)]
    ok, why = cuda_usable()
    if not ok:
        return lines + [f"torch sees  no usable GPU: {why}"]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        cap = (p.major, p.minor)
        fits = "has kernels" if nvidia.arch_fits(cap, torch.cuda.get_arch_list()) else "NO kernels for it"
        bf16 = "native bf16" if cap >= (8, 0) else "no native bf16 (fp16 on auto)"
        lines.append(
            f"  cuda:{i}    {p.name}, {cap[0]}.{cap[1]}, {p.total_memory / 2**30:.0f} GiB, {bf16}; torch {fits}"
        )
    return lines


def cpu_lines(torch) -> list[str]:
    """The CPU, its cores, torch's threads and whether it computes bf16 in hardware (`precision: native`)."""
    from pipeline.learn.hardware import cpu_bf16

    bf16 = "bf16 in hardware (AMX-BF16 or AVX512-BF16)" if cpu_bf16() else "no bf16 in hardware (fp32 on native)"
    return [f"cpu         {cpu_name()}, {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads; {bf16}"]


def entry_lines(params_file: Path, problems: list[str]) -> list[str]:
    """What `device` and `precision` resolve to for each model of params.yaml, and whether data.path is there."""
    from pipeline.errors import PipelineError
    from pipeline.learn.hardware import dtype_name, pick_device, pick_dtype
    from pipeline.params import data_params, load_params, model_names, train_spec

    try:
        params = load_params(params_file)
        data = data_params(params)
        names = model_names(params)
    except PipelineError as e:
        problems.append(str(e))
        return [f"params      {params_file}: {e}"]
    path = Path(data.path) if data.path else None
    there = "missing (prepare downloads the named data sets)" if path and not path.exists() else "there"
    lines = [f"data        {data.name}, data.path {data.path or '-'}: {there if path else 'no path'}"]
    lines.append(f"entries     of {params_file}: asked -> what runs")
    seen: dict[tuple[str, str], list[str]] = {}
    for key in names:
        spec = train_spec(params, key)
        try:
            device = pick_device(spec.device, key)
            said = f"{device}, {dtype_name(pick_dtype(spec.precision, device))}"
        except PipelineError as e:
            problems.append(str(e))
            said = "stops: see the problem below"
        seen.setdefault((f"device: {spec.device}, precision: {spec.precision}", said), []).append(key)
    for (asked, said), keys in seen.items():
        lines.append(f"  {asked:32s} -> {said:22s} {', '.join(keys)}")
    return lines


def report(params_file: Path) -> tuple[list[str], list[str]]:
    """(the screen's lines, the problems a stage would stop on)."""
    problems: list[str] = []
    lines = python_lines()
    try:
        import torch
    except ImportError as e:
        from pipeline.commands import environment

        return lines + [f"torch       cannot be imported: {e}"], [f"no torch: install one of {environment.RANGE}"]
    lines += torch_lines(torch, problems) + gpu_lines(torch) + cpu_lines(torch)
    lines += entry_lines(params_file, problems)
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    """Print the screen and the problems; 1 where a run would stop."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.commands.doctor", description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file (default: params.yaml)")
    args = ap.parse_args(argv)
    lines, problems = report(args.params)
    print("\n".join(lines))
    for p in dict.fromkeys(problems):
        print(f"problem: {p}")
    print("ok: nothing stops a run here" if not problems else f"{len(set(problems))} problem(s): a run would stop")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
