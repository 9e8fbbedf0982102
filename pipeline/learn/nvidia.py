"""The machine's NVIDIA driver and GPUs, read without CUDA (the kernel driver's files, libcuda's version query,
nvidia-smi), and whether this torch build can use them: what `device: auto` checks before any work, and what
`python -m pipeline.commands.doctor` prints.

A GPU torch cannot use is an error, not a slow surprise: a driver older than the build's CUDA, or a GPU older than
the build's architectures (torch's `is_available()` says yes to a P100 beside a CUDA 13 build, which then fails at
the first kernel with "no kernel image"). A GPU hidden on purpose (`CUDA_VISIBLE_DEVICES` empty or -1, as the test
suite does) is no GPU.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PROC_VERSION = Path("/proc/driver/nvidia/version")
# device nodes, not /proc/driver/nvidia alone: a container given no GPU on a GPU host sees the host's /proc entry
SIGNS = (Path("/dev/nvidiactl"), Path("/dev/nvidia0"))


def ways_out(where: str) -> str:
    """How to get going, said wherever a GPU is unusable (README "GPU machines"): a torch that fits, or the CPU on
    purpose (`--device cpu` for a command, `device: cpu` for params.yaml)."""
    cpu = "pass `--device cpu`" if where.startswith("--") else "set `device: cpu` in params.yaml"
    return (
        "either use a torch that fits this machine: its own (`make setup TORCH=system` keeps the interpreter's "
        "torch), or a build for an older CUDA (`make setup TORCH_CUDA=cu126`, for drivers of CUDA 12: R525 and "
        f"newer); or {cpu} to run on the CPU on purpose (many times slower)"
    )


@dataclass(frozen=True)
class Gpu:
    """One GPU as the driver's tools describe it."""

    name: str
    capability: tuple[int, int] | None = None  # None: the driver's tools did not say
    memory_mib: int | None = None

    def __str__(self) -> str:
        cap = f", compute capability {self.capability[0]}.{self.capability[1]}" if self.capability else ""
        mem = f", {self.memory_mib / 1024:.0f} GiB" if self.memory_mib else ""
        return f"{self.name}{cap}{mem}"


@dataclass(frozen=True)
class Driver:
    """The NVIDIA driver: its version, the newest CUDA it runs, its GPUs."""

    version: str | None = None  # the kernel module's, e.g. 535.104.05
    cuda: str | None = None  # the newest CUDA it runs, e.g. 12.2
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        cuda = f" (runs CUDA ≤ {self.cuda})" if self.cuda else ""
        return f"driver {self.version or 'of unknown version'}{cuda}"


def present() -> bool:
    """Is there an NVIDIA GPU or driver for this machine's processes (the driver's device nodes), usable by torch or
    not?"""
    return any(p.exists() for p in SIGNS)


def hidden() -> bool:
    """Are the GPUs hidden from this process on purpose (`CUDA_VISIBLE_DEVICES` empty, -1 or `none`)?"""
    v = os.environ.get("CUDA_VISIBLE_DEVICES")
    return v is not None and v.strip().split(",")[0].strip() in ("", "-1", "none", "NoDevFiles")


def _smi(*args: str) -> list[str]:
    try:
        r = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return []
    return r.stdout.strip().splitlines() if r.returncode == 0 else []


def _number(text: str) -> int | None:
    return int(float(text)) if re.fullmatch(r"\d+(\.\d+)?", text.strip()) else None


def parse_gpus(lines: list[str]) -> tuple[Gpu, ...]:
    """nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits -> Gpus (compute_cap is
    missing from drivers before R510: then None)."""
    out = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        cap = re.fullmatch(r"(\d+)\.(\d+)", parts[2]) if len(parts) > 2 else None
        out.append(
            Gpu(parts[0], (int(cap[1]), int(cap[2])) if cap else None, _number(parts[1]) if len(parts) > 1 else None)
        )
    return tuple(out)


def _libcuda_version() -> str | None:
    """The newest CUDA the driver runs (cuDriverGetVersion: 12020 -> '12.2'), without initialising CUDA."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) != 0 or v.value <= 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{v.value // 1000}.{v.value % 1000 // 10}"


@functools.lru_cache(maxsize=1)
def driver() -> Driver:
    """The driver's version, the CUDA it runs and its GPUs, as far as this machine tells (empty where no driver)."""
    version = None
    if PROC_VERSION.exists():
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", PROC_VERSION.read_text(errors="replace"))
        version = m[1] if m else None
    gpus = parse_gpus(_smi("--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"))
    if not gpus:  # drivers before R510 do not know compute_cap
        gpus = parse_gpus(_smi("--query-gpu=name,memory.total", "--format=csv,noheader,nounits"))
    if version is None:
        smi = _smi("--query-gpu=driver_version", "--format=csv,noheader")
        version = smi[0].strip() if smi else None
    return Driver(version, _libcuda_version(), gpus)


def arch_fits(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Does a build with these architectures (torch.cuda.get_arch_list(): sm_75 … compute_120) have code for a GPU of
    this compute capability? A cubin sm_XY runs on X.Y and newer minors of major X; PTX compute_XY is compiled for
    any GPU of X.Y or newer. An empty list (a build that does not say) fits."""
    parsed = [re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", a) for a in arch_list]
    if not any(parsed):  # a build that does not say, or ROCm's gfx names: nothing to check here
        return True
    for m in parsed:
        if not m:
            continue
        built = (int(m[2]), int(m[3]))
        if m[1] == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if m[1] == "compute" and built <= capability:
            return True
    return False


def build_words(torch) -> str:
    """'torch 2.14.1 (a CUDA 13.0 build, kernels for sm_75 … sm_120)' or '(a CPU-only build)'."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} (a CPU-only build)"
    try:
        archs = torch.cuda.get_arch_list()
    except Exception:  # any exception: a build whose CUDA runtime cannot even be queried
        archs = []
    kernels = f", kernels for {archs[0]} … {archs[-1]}" if archs else ""
    return f"torch {torch.__version__} (a CUDA {torch.version.cuda} build{kernels})"


def unusable(where: str, why: str, torch) -> str:
    """The error of a stage that finds an NVIDIA GPU or driver torch cannot use: both versions, the GPU, why, and
    the two ways out."""
    d = driver()
    gpus = "; ".join(str(g) for g in d.gpus) or "an NVIDIA GPU"
    return (
        f"{where} = 'auto', but {build_words(torch)} cannot use this machine's {gpus} with NVIDIA {d} ({why}): "
        f"{ways_out(where)}"
    )


def too_old(where: str, name: str, capability: tuple[int, int], torch) -> str:
    """The error for a GPU whose architecture the build has no kernels for."""
    return (
        f"{where}: {build_words(torch)} has no kernels for {name} (compute capability "
        f"{capability[0]}.{capability[1]}): its first kernel would fail with 'no kernel image'; {ways_out(where)}"
    )
