"""Prepared arrays -> fastai DataLoaders.

The prepared image files are memory-mapped, never loaded or copied whole: a training subset, a fold or a refit's
train + valid is a `Rows` view (index arrays over the maps), and each batch gathers its rows from the map. A
batch is then converted, resized to the phase's size, augmented (random flip, random translation) and normalised
with whole-batch torch ops on the training device.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader

from pipeline.data.rows import Rows
from pipeline.errors import PipelineError


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×C -> uint8 N×C×H×W."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


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
        x = x.sub_(self.mean).div_(self.std)  # in place: `x` is this call's own float copy
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
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


def upload(x, device: torch.device, rows: int = 4096) -> torch.Tensor:
    """uint8 N×H×W×C rows (Rows or an array) copied chunk by chunk into one tensor on `device`."""
    x = Rows.of(x)
    out = torch.empty(x.shape, dtype=torch.uint8, device=device)
    for s in range(0, len(x), rows):
        out[s : s + rows] = torch.from_numpy(x[s : s + rows]).to(device)
    return out


def fits_on(device: torch.device, nbytes: int, share: float = 0.25) -> bool:
    """Do `nbytes` fit in a quarter of the GPU's free memory (room to spare for the model and activations)?"""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


class TensorPair:
    """Images (Rows or an array, uint8 N×H×W×C) and labels indexed together: a batch is gathered from the (memory-
    mapped) rows and becomes a uint8 N×C×H×W tensor. With `resident` (make_dls: a GPU the arrays fit), the rows are
    uploaded to `device` once and each batch is gathered there; otherwise, on a GPU, a batch is gathered on the host
    into pinned memory and copied without blocking. Either way the batch arrives on the device and fastai's own
    transfer is a no-op."""

    def __init__(self, x, y: np.ndarray, device: torch.device | None = None, resident: bool = False):
        self.x, self.y = Rows.of(x), torch.from_numpy(np.asarray(y, np.int64))
        self.device = device if device is not None and (resident or device.type == "cuda") else None
        self.resident_x = upload(self.x, device) if self.device is not None and resident else None
        if self.resident_x is not None:
            self.y = self.y.to(device)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        """A batch of rows `i` as (uint8 N×C×H×W, labels) on the device. Resident: gathered there (TensorDL sends
        the epoch's indices once), a channels-last view, no further copy. On a GPU otherwise: gathered on the host,
        pinned and sent without blocking, N×H×W×C as stored (a channels-last view there too)."""
        if self.resident_x is not None:
            i = torch.as_tensor(i, device=self.device)
            return self.resident_x[i].permute(0, 3, 1, 2), self.y[i]
        if self.device is not None:
            rows = torch.from_numpy(np.asarray(self.x[np.asarray(i)]))
            xb = rows.pin_memory().to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            return xb, self.y[i].pin_memory().to(self.device, non_blocking=True)
        return to_tensor(self.x[np.asarray(i)]), self.y[i]


class TensorDL(DataLoader):
    """fastai DataLoader whose batches are sliced from in-memory tensors: no per-item Python work."""

    def create_batches(self, samps):
        """Batches gathered from the tensors by index, without fastai's per-item collation."""
        idxs = torch.as_tensor(list(samps), dtype=torch.long)
        on = getattr(self.dataset, "resident_x", None)
        if on is not None and on.device.type == "cuda":  # the epoch's order to the GPU once, not a copy per batch
            idxs = idxs.pin_memory().to(on.device, non_blocking=True)
        n = len(idxs)
        stop = n - n % self.bs if self.drop_last else n
        for i in range(0, stop, self.bs):
            yield self.dataset[idxs[i : i + self.bs]]


def make_pairs(arrays: dict, device=None) -> tuple[TensorPair, TensorPair]:
    """The training and validation rows as TensorPairs: uploaded to a GPU once where both fit in a quarter of its
    free memory (resident), else gathered per batch (pinned on a GPU, memory-mapped on a CPU)."""
    device = torch.device(device) if device is not None else None
    nbytes = sum(int(np.prod(Rows.of(arrays[k]).shape)) for k in ("train_x", "valid_x"))
    resident = device is not None and fits_on(device, nbytes)
    train = TensorPair(arrays["train_x"], arrays["train_y"], device, resident)
    return train, TensorPair(arrays["valid_x"], arrays["valid_y"], device, resident)


class BalancedDL(TensorDL):
    """A TensorDL whose epoch draws its rows with replacement, each ∝ `wgts` (`sampler: balanced`: 1 / its class's
    size, so every class is seen about equally often), from fastai's seeded per-loader rng. Without `wgts` (a copy
    made by fastai's `new`) it shuffles as TensorDL does."""

    def __init__(self, dataset=None, wgts=None, **kwargs):
        super().__init__(dataset, **kwargs)
        self.wgts = wgts

    def get_idxs(self):
        """An epoch's rows drawn with replacement ∝ their weights (fastai's rng, so seeded)."""
        if self.wgts is None or not self.shuffle or self.n == 0:
            return super().get_idxs()
        return self.rng.choices(range(self.n), weights=self.wgts, k=self.n)


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
    sample_weights: np.ndarray | None = None,
    pairs: tuple[TensorPair, TensorPair] | None = None,
) -> DataLoaders:
    """Training and validation DataLoaders at image side `size`; `sample_weights` (one per training row): the
    training loader draws rows ∝ them (BalancedDL). `pairs`: the TensorPairs of make_pairs, made once per learner
    and shared by every size (progressive resizing), so a GPU-resident copy is uploaded once."""
    n_train = len(arrays["train_y"])
    if bs > n_train:
        raise PipelineError(f"params.yaml: `bs` = {bs} is larger than the training set ({n_train} images)")
    device = torch.device(device) if device is not None else None
    train, valid = pairs or make_pairs(arrays, device)
    tr = (TensorDL if sample_weights is None else partial(BalancedDL, wgts=sample_weights))(
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
