"""Prepared arrays -> fastai DataLoaders, all in memory.

Images stay uint8 tensors (N×C×H×W); each batch is converted, resized to the phase's size, augmented
(random flip, random translation) and normalised with whole-batch torch ops on the training device.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader

from pipeline.errors import PipelineError

PREPARED = Path("data/prepared")


def load_prepared(folder: Path = PREPARED) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays by stem (train_x, train_y, valid_x, ...) and meta.json; missing files name themselves."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise PipelineError(f"{meta_path} not found: run the prepare stage first (dvc repro prepare)")
    meta = json.loads(meta_path.read_text())
    arrays = {}
    for split in ("train", "valid", "test"):
        for k in ("x", "y"):
            p = folder / f"{split}_{k}.npy"
            if p.is_file():
                arrays[f"{split}_{k}"] = np.load(p, allow_pickle=False)
            elif not (split == "test" and k == "y"):
                raise PipelineError(f"{p} not found: data/prepared is incomplete; rerun the prepare stage")
    return arrays, meta


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×C -> uint8 N×C×H×W."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


class BatchTfm:
    """uint8 batch -> float, resized, augmented (train only), normalised, channels-last."""

    def __init__(self, size: int, mean, std, train: bool, flip: bool = False, pad: int = 0, channels_last: bool = True):
        self.size, self.train, self.flip, self.pad, self.channels_last = size, train, flip, pad, channels_last
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, b):
        x, *rest = b
        x = x.float().div_(255)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=x.shape[-1] > self.size, align_corners=False
            )
        if self.train:
            x = augment(x, self.flip, self.pad)
        if self.mean.device != x.device:  # moved once, not per batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x, *rest)


def augment(x: torch.Tensor, flip: bool, pad: int) -> torch.Tensor:
    """Random horizontal flip and random translation by up to `pad` pixels (reflect-padded crop), per image."""
    n, _, h, w = x.shape
    if flip:
        mask = torch.rand(n, device=x.device) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        idx_n = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        idx_c = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[idx_n, idx_c, rows, cols]
    return x


class TensorPair:
    """A dataset of two tensors indexed together."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class TensorDL(DataLoader):
    """fastai DataLoader whose batches are sliced from in-memory tensors: no per-item Python work."""

    def create_batches(self, samps):
        idxs = torch.as_tensor(list(samps), dtype=torch.long)
        n = len(idxs)
        stop = n - n % self.bs if self.drop_last else n
        for i in range(0, stop, self.bs):
            yield self.dataset[idxs[i : i + self.bs]]


def make_dls(
    arrays: dict,
    size: int,
    bs: int,
    mean,
    std,
    flip: bool,
    pad: int,
    device=None,
    eval_bs: int = 1024,
    channels_last: bool = True,
) -> DataLoaders:
    """Training and validation DataLoaders at image side `size`."""
    n_train = len(arrays["train_y"])
    if bs > n_train:
        raise PipelineError(f"params.yaml: `bs` = {bs} is larger than the training set ({n_train} images)")
    train = TensorPair(to_tensor(arrays["train_x"]), torch.from_numpy(arrays["train_y"]))
    valid = TensorPair(to_tensor(arrays["valid_x"]), torch.from_numpy(arrays["valid_y"]))
    tr = TensorDL(
        train,
        bs=bs,
        shuffle=True,
        drop_last=True,
        device=device,
        after_batch=BatchTfm(size, mean, std, True, flip, pad, channels_last),
    )
    va = TensorDL(
        valid,
        bs=eval_bs,
        shuffle=False,
        drop_last=False,
        device=device,
        after_batch=BatchTfm(size, mean, std, False, channels_last=channels_last),
    )
    return DataLoaders(tr, va, device=device)
