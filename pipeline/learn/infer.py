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
    mirror image; `dtype` is the autocast dtype (None: fp32). No rows in, (0, n_classes) out. A batch that runs a
    GPU out of memory (`eval_bs: auto` is 1024 there; VGG19 at 224 px can need more than a 16 GB card has, by estimate) is retried
    at half the size (again if need be), each time said."""
    model.eval()
    out = [torch.zeros(0, n_classes, device=device)]
    cuda = device.type == "cuda"
    i = 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        while i < len(x):
            xb = to_tensor(x[i : i + bs])
            xb = xb.pin_memory().to(device, non_blocking=True) if cuda else xb.to(device)
            (xb,) = tfm((xb,))
            try:
                p = F.softmax(model(xb).float(), dim=1)
                if tta:
                    p = (p + F.softmax(model(xb.flip(3)).float(), dim=1)) / 2
            except torch.cuda.OutOfMemoryError:
                if bs == 1:
                    raise
                del xb
                bs = smaller_batch(bs, device)
                continue
            out.append(p)  # kept on the device: one copy to the host at the end, no sync per batch
            i += len(p)
    return torch.cat(out).cpu().numpy().astype(np.float32)


def smaller_batch(bs: int, device: torch.device) -> int:
    """Half the batch after running out of GPU memory, said; the cache emptied for the retry."""
    from pipeline.errors import warn

    if device.type == "cuda":
        torch.cuda.empty_cache()
    warn(f"predicting {bs} images at once ran {device} out of memory: {bs // 2} at a time (set a smaller eval_bs)")
    return bs // 2
