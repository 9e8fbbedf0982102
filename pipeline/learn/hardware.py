"""Which device and which precision a stage runs with: the `device` and `precision` params -> torch objects.

Devices: `auto` is the GPU of this process (cuda:LOCAL_RANK under torchrun) where CUDA is usable, else the CPU; an
NVIDIA GPU or driver on the machine that this torch cannot use (a driver older than the build's CUDA, a GPU older
than its kernels, a CPU-only build) is an error before any work, naming both and the ways out (pipeline/learn/
nvidia.py); a GPU hidden on purpose (`CUDA_VISIBLE_DEVICES=""`) and a machine without one are the CPU, silently.
`cuda` is that GPU too, `cuda:N` pins one; asking for CUDA where there is none is an error naming the key. Every
stage's log line names the device and its precision (`describe`).

Precision: `auto` is fp32 on a CPU: on CPUs with AVX512-BF16 bf16 ran the fast net faster but cost small nets
accuracy (`python -m bench.fast_recipe --precision bf16`, docs/results.md), and on CPUs without those instructions
it ran far slower; fp32
keeps a default run's results the same whichever CPU ran it. On a GPU `auto` is bf16 autocast where the GPU runs
bf16 natively (compute capability >= 8.0: A100, H100, RTX 30xx and newer), fp16 with a gradient scaler (fastai's
MixedPrecision) on older ones (T4, V100, P100), whose bf16 torch would only emulate. `precision: bf16` forces bf16
autocast on any CPU (correct everywhere, fast only with AVX512-BF16/AMX); `fp16` needs CUDA. `native` is bf16
where the CPU computes bf16 in hardware (AMX-BF16, AVX512-BF16) and fp32 on other CPUs (on a GPU: `auto`): for
the entries measured not to lose accuracy in bf16 (the fast recipe), so a run's results then depend on the CPU's
kind, and metrics/<key>.json `precision` and the report say which ran.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from pipeline.errors import PipelineError, warn
from pipeline.learn import nvidia

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_said: set[str] = set()


def dtype_name(dtype: torch.dtype | None) -> str:
    """None -> 'fp32', torch.bfloat16 -> 'bf16', ...: the word spec.json and metrics record."""
    return next(k for k, v in DTYPES.items() if v == dtype)


def cuda_usable() -> tuple[bool, str]:
    """(is CUDA usable, why not): torch.cuda.is_available() with the reason torch gives (it warns, e.g. 'The NVIDIA
    driver on your system is too old') or the plain one."""
    if torch.version.cuda is None:
        return False, "this torch is a CPU-only build"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = torch.cuda.is_available()
    if ok:
        return True, ""
    told = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
    return False, told[0] if told else "no NVIDIA GPU or driver found"


def pick_device(name: str, key: str = "", where: str | None = None) -> torch.device:
    """`device` param -> a concrete torch.device (cuda:N, cpu or mps); under torchrun `auto` and `cuda` are this
    process's GPU (LOCAL_RANK). A GPU that is not there is an error before any work, naming `where` (default: the
    params key)."""
    where = where or f"params.yaml: `{f'archs.{key}.device' if key else 'device'}`"
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        ok, why = cuda_usable()
        if ok:
            one_gpu_per_process(where)
            return kernels_fit(torch.device(f"cuda:{rank}"), where)
        if nvidia.present() and not nvidia.hidden():
            raise PipelineError(nvidia.unusable(where, why, torch))
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        ok, why = cuda_usable()
        if not ok:
            raise PipelineError(f"{where} = {name!r}, but CUDA is not usable here ({why}); set it to auto or cpu")
        if name == "cuda":
            one_gpu_per_process(where)
        index = rank if name == "cuda" else int(name.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise PipelineError(f"{where} = {name!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return kernels_fit(torch.device(f"cuda:{index}"), where)
    if name == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"{where} = 'mps', but MPS is not available here")
    return torch.device(name)


def concrete(device: torch.device | str | None) -> torch.device:
    """A device a caller passed (a notebook's `torch.device("cuda")`, bench.overhead's) made concrete as pick_device
    makes it: `cuda` gains this process's index (torch.cuda.set_device needs one), None is `auto`."""
    if device is None:
        return pick_device("auto")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return pick_device("cuda", where="device")
    return device


def kernels_fit(device: torch.device, where: str) -> torch.device:
    """`device` where this torch build has kernels for its architecture; else the error naming both (a GPU older
    than the wheels' oldest architecture passes `is_available()` and fails at its first kernel)."""
    if getattr(torch.version, "hip", None):  # ROCm: AMD's architectures, not CUDA's compute capabilities
        return device
    cap = torch.cuda.get_device_capability(device)
    if not nvidia.arch_fits(cap, torch.cuda.get_arch_list()):
        raise PipelineError(nvidia.too_old(where, torch.cuda.get_device_name(device), cap, torch))
    return device


def one_gpu_per_process(where: str) -> None:
    """Under torchrun / `accelerate launch`, each process needs a GPU of its own: NCCL cannot run two ranks on one
    device (it fails at the first collective). More processes on this node than GPUs is an error, said before any
    work."""
    procs = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)) + 1)
    gpus = torch.cuda.device_count()
    if procs > gpus:
        raise PipelineError(
            f"{where}: {procs} processes on this machine (torchrun --nproc_per_node {procs}) but {gpus} GPU(s): "
            f"each process needs its own GPU; use --nproc_per_node {gpus}, or `device: cpu` for CPU processes"
        )


def native_bf16(device: torch.device) -> bool:
    """Does this device run bf16 in hardware, not by emulation? A GPU of compute capability >= 8.0; a CPU with
    `cpu_bf16()`."""
    if device.type == "cpu":
        return cpu_bf16()
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 0)


def cpu_bf16() -> bool:
    """Does this CPU compute bf16 in hardware (AMX-BF16 tiles or AVX512-BF16), where bf16 autocast pays? torch's own
    checks (private: where a torch lacks them, no)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        return any(getattr(torch.cpu, c, lambda: False)() for c in checks)
    except Exception:  # any exception: a build without the checks or their CPU probe
        return False


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None = fp32). `native`: bf16 where the device computes it in
    hardware (a CPU with AMX-BF16 or AVX512-BF16; on a GPU as `auto`), else fp32."""
    if precision == "fp32":
        return None
    if precision == "native" and device.type == "cpu":
        return torch.bfloat16 if cpu_bf16() else None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        if precision == "bf16":
            if not native_bf16(device) and "bf16" not in _said:
                _said.add("bf16")
                warn(f"{torch.cuda.get_device_name(device)} has no native bf16 (compute capability < 8.0): emulated")
            return torch.bfloat16
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if precision == "fp16":
        raise PipelineError("params.yaml: `precision: fp16` needs a CUDA device; use bf16 or fp32 on a CPU")
    if precision == "bf16":
        return torch.bfloat16
    return None  # auto on a CPU: fp32 (see the module docstring)


def eval_dtype(trained: str, trained_on: str, device: torch.device, asked: str = "auto") -> torch.dtype | None:
    """The precision to evaluate a model with on `device`: the training precision on the device type it was trained
    on (so predictions reproduce the stage's own), otherwise that device's sensible one (`auto`): a model trained in
    bf16 on a GPU is evaluated in fp32 on a CPU, where bf16 may run far slower. A GPU's bf16 model on a GPU without
    bf16 in hardware (trained on an H100, predicting on a T4), or a CPU's (`precision: native` on an AMX CPU, predicting
    on one without bf16 instructions), predicts in fp32, said once: its probabilities then differ slightly from the
    stage's. A model whose entry forced bf16 (`asked`, the params' precision) predicts in
    bf16 as its stage evaluated it, emulated or not (so on CPUs a forced-bf16 model reproduces preds/)."""
    if torch.device(trained_on).type != device.type:
        return pick_dtype("auto", device)
    dtype = DTYPES[trained]
    if dtype == torch.bfloat16 and asked != "bf16" and not native_bf16(device):
        if "eval_bf16" not in _said:
            _said.add("eval_bf16")
            where = torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"
            why = "compute capability < 8.0" if device.type == "cuda" else "neither AMX-BF16 nor AVX512-BF16"
            warn(
                f"a model trained in bf16 predicts in fp32 on {where}, which has no bf16 in hardware ({why}): "
                "its probabilities differ slightly from the stage's preds/"
            )
        return None
    return dtype


def describe(device: torch.device, dtype: torch.dtype | None) -> str:
    """The log line's words for where a stage runs: `cuda:0 NVIDIA H200, bf16` or `cpu, 2 threads, fp32`."""
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}, {dtype_name(dtype)}"
    if device.type == "cpu":
        return f"cpu, {torch.get_num_threads()} threads, {dtype_name(dtype)}"
    return f"{device}, {dtype_name(dtype)}"


@contextlib.contextmanager
def settings(device: torch.device, deterministic: bool):
    """`configure` for the length of a `with` block, then the process's previous settings back: each model of an
    ensemble predicts under its own `deterministic` flags, not under the last-loaded member's."""
    if device.type != "cuda":
        yield
        return
    before = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    configure(device, deterministic)
    try:
        yield
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        ) = before[:4]
        torch.use_deterministic_algorithms(before[4], warn_only=before[5])


def configure(device: torch.device, deterministic: bool) -> None:
    """Speed settings of a GPU run: cuDNN autotuning and TF32 matmuls and convolutions, unless `deterministic`
    (bit-reproducible GPU runs: autotuning off, full fp32, and torch's deterministic algorithms — cuDNN's and
    cuBLAS's, with the workspace setting cuBLAS needs for them; an operation that has no deterministic CUDA kernel
    warns instead of failing the run). Nothing changes on a CPU, whose kernels are deterministic already."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS makes its handle
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
