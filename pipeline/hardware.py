"""Which device and which precision a stage runs with: the `device` and `precision` params -> torch objects.

`precision: auto` is bf16 autocast on CUDA and fp32 on a CPU: on CPUs with AVX512-BF16 bf16 ran the fast net
2.07x faster but cost cnn4 a point and mlp three (issue 13's measurements), and on CPUs without those
instructions it ran ~10x slower; fp32 keeps a default run's results the same whichever CPU ran it.
`precision: bf16` forces bf16 autocast on any CPU (correct everywhere, fast only with AVX512-BF16/AMX).
"""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_name(dtype: torch.dtype | None) -> str:
    """None -> 'fp32', torch.bfloat16 -> 'bf16', ...: the word spec.json and metrics record."""
    return next(k for k, v in DTYPES.items() if v == dtype)


def pick_device(name: str, key: str = "") -> torch.device | None:
    """`device` param -> torch.device; None (auto) lets training take cuda when present. A GPU that is not
    there is an error before training."""
    if name == "auto":
        return None
    dev = torch.device(name)
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise PipelineError(
            f"params.yaml: `archs.{key}.device` = {name!r}, but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"params.yaml: `archs.{key}.device` = 'mps', but MPS is not available here")
    return dev


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None = fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16":
        raise PipelineError("params.yaml: `precision: fp16` needs a CUDA device; use bf16 or fp32 on a CPU")
    if precision == "bf16":
        return torch.bfloat16
    return None  # auto on a CPU: fp32 (see the module docstring)
