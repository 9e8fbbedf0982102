"""Probabilities of a model on uint8 arrays: shared by the train stage and pipeline.commands.predict."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.loaders import BatchTfm, to_tensor


def predict_probs(
    model: torch.nn.Module,
    x: np.ndarray,
    tfm: BatchTfm,
    bs: int,
    tta: bool,
    device: torch.device,
    dtype: torch.dtype | None,
    n_classes: int,
) -> np.ndarray:
    """Class probabilities (N × n_classes, float32) for uint8 N×H×W×C images, in row order; tta averages with the
    mirror image; `dtype` is the autocast dtype (None: fp32). No rows in, (0, n_classes) out."""
    model.eval()
    out = [torch.zeros(0, n_classes, device=device)]
    cuda = device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(0, len(x), bs):
            xb = to_tensor(x[i : i + bs])
            xb = xb.pin_memory().to(device, non_blocking=True) if cuda else xb.to(device)
            (xb,) = tfm((xb,))
            p = F.softmax(model(xb).float(), dim=1)
            if tta:
                p = (p + F.softmax(model(xb.flip(3)).float(), dim=1)) / 2
            out.append(p)  # kept on the device: one copy to the host at the end, no sync per batch
    return torch.cat(out).cpu().numpy().astype(np.float32)
