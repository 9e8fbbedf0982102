"""fastai callbacks of the project: bf16/fp16 autocast, a stop on a non-finite loss, curves across phases."""

from __future__ import annotations

import time

import torch
from fastai.callback.core import Callback, CancelTrainException, CancelValidException
from fastai.learner import AvgLoss, AvgMetric, AvgSmoothLoss
from fastai.torch_core import find_bs

from pipeline.errors import PipelineError


class Autocast(Callback):
    """Autocast for forward and loss (as fastai's MixedPrecision, without a grad scaler: bf16 needs none)."""

    order = 10

    def __init__(self, device_type: str, dtype: torch.dtype):
        self.device_type, self.dtype = device_type, dtype

    def before_batch(self):
        """Enter autocast for the forward pass."""
        self.ctx = torch.autocast(self.device_type, dtype=self.dtype)
        self.ctx.__enter__()

    def after_pred(self):
        """Predictions back to fp32 for the loss."""
        self.learn.pred = self.pred.float()

    def after_loss(self):
        """Leave autocast before the backward pass."""
        self.ctx.__exit__(None, None, None)


class StopOnNaN(Callback):
    """Stop with an error, saying where, once the training loss is not finite. On a GPU the check stays on the
    device and is read every `every` batches and at each epoch's end (reading it each batch would stall the stream);
    on a CPU, every batch. Under data-parallel training the ranks agree on it first (an all-reduce), so a rank's NaN
    stops every rank and none is left waiting."""

    order = 11

    def __init__(self, key: str, every: int = 50):
        self.key, self.every = key, every

    def before_fit(self):
        """No bad loss seen yet."""
        self.bad = None

    def after_loss(self):
        """Remember the first non-finite training loss."""
        if not self.training:
            return
        flag = ~torch.isfinite(self.loss.detach()).all()
        if self.bad is None:
            self.bad = flag
        else:
            self.bad |= flag
        if self.loss.device.type != "cuda" or self.iter % self.every == 0:
            self.check()

    def after_epoch(self):
        """Stop at the end of an epoch that saw a non-finite loss."""
        self.check()

    def check(self):
        """Raise, naming the model and the step, once a non-finite loss was seen."""
        if self.bad is None:
            return
        from fastai.distributed import num_distrib

        bad = self.bad.to(torch.int32)
        if num_distrib() > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item():
            where = "" if self.loss.device.type != "cuda" else f" (or up to {self.every - 1} batches earlier)"
            raise PipelineError(
                f"{self.key}: training loss became {self.loss.item()} at epoch {self.epoch + 1}, "
                f"batch {self.iter + 1}{where}; "
                "nothing was written. Lower `lr`, or check the data"
            )


def _glibc():
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # musl and others: no malloc_trim
        return None


class TrimHeap(Callback):
    """Give glibc's freed heap pages back every `every` training batches. Batch-sized buffers (MBs) freed between
    steps leave glibc's heap fragmented once its dynamic mmap threshold has risen past them: train@logreg on
    100 000 images of 64 px (`python -m bench.scale --sets tiny`) peaked far higher without this than with it
    (bench/results/scale_tiny.json), no slower (a fixed M_MMAP_THRESHOLD bounds it too, but page faults made the
    steps slower)."""

    order = 100

    def __init__(self, every: int = 50):
        self.every, self.libc = every, _glibc()

    def after_batch(self):
        """Return freed heap pages to the system every few batches."""
        if self.libc is not None and self.training and self.iter % self.every == 0:
            self.libc.malloc_trim(0)

    def after_epoch(self):
        """Return freed heap pages to the system."""
        if self.libc is not None:
            self.libc.malloc_trim(0)


class NoValidation(Callback):
    """Skip the validation pass (a refit has no held-out rows: its validation loader is empty, which fastai's
    DistributedDL cannot even iterate)."""

    order = 0

    def before_validate(self):
        """Skip validation (a refit has no validation split)."""
        raise CancelValidException


class EpochLog:
    """fastai's logger when the console is not a terminal: a header with the column names (fastai's
    `metric_names`) once, then one aligned line per epoch, numbered on across fits (frozen epochs, then each
    progressive-resizing phase) instead of restarting at 0 with each."""

    def __init__(self, learn):
        self.learn, self.offset, self.last, self.header = learn, 0, -1, False

    def __call__(self, log) -> None:
        names = [str(n) for n in self.learn.recorder.metric_names]
        if not self.header:
            print("  ".join(f"{n:>10}" for n in names), flush=True)
            self.header = True
        if isinstance(log[0], int):
            if log[0] <= self.last:  # a new fit began
                self.offset += self.last + 1
            self.last = log[0]
            log = [log[0] + self.offset, *log[1:]]
        print("  ".join(f"{v:>10.4f}" if isinstance(v, float) else f"{v!s:>10}" for v in log), flush=True)


def live_callback(live):
    """dvclive's fastai callback, kept open across fits (phases); the stage ends the Live itself."""
    from dvclive.fastai import DVCLiveCallback

    class PhasedDVCLive(DVCLiveCallback):
        def after_fit(self):
            pass

    return PhasedDVCLive(live=live)


class Probe(Callback):
    """Times the first batches of one training epoch and of its validation (fastai's own loop, data loading and
    callbacks included), then cancels each: `warm` batches skipped, then the median of `n` batch intervals."""

    order = 100

    def __init__(self, warm: int = 3, n: int = 8):
        self.warm, self.n = warm, n

    def before_fit(self):
        """Start timing."""
        self.times = {"train": [], "valid": []}
        self.last = None

    def before_train(self):
        """Mark the start of the first training batch."""
        self.last = time.perf_counter()

    before_validate = before_train

    def after_batch(self):
        """One batch's seconds (synchronised on a GPU)."""
        if self.dls.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        split = "train" if self.training else "valid"
        self.times[split].append(now - self.last)
        self.last = now
        if len(self.times[split]) >= self.warm + self.n:
            raise CancelTrainException() if self.training else CancelValidException()

    def per_batch(self, split: str) -> float | None:
        """Median seconds per batch of a split, after the warm-up batches."""
        t = self.times[split][self.warm :] or self.times[split]
        return float(sorted(t)[len(t) // 2]) if t else None


# ------------------------------------------------------------------ losses and metrics kept on the GPU
class DeviceSmoothLoss(AvgSmoothLoss):
    """fastai's smoothed training loss, kept on the device the loss is on: fastai's own copies it to the host every
    batch, a synchronisation that keeps the CPU from queueing the next batch while the GPU works. Read on the host
    once per epoch (the recorder's log) and by lr_find."""

    def accumulate(self, learn):
        """Update the exponential average on the loss's device."""
        self.count += 1
        loss = learn.loss.mean().detach().float()
        self.val = torch.lerp(loss, self.val.to(loss.device), self.beta)


class DeviceAvgLoss(AvgLoss):
    """fastai's validation loss, summed on the device: no copy to the host per batch."""

    def accumulate(self, learn):
        """Add the batch's loss × its size, on the device."""
        bs = find_bs(learn.yb)
        self.total += learn.loss.mean().detach().float() * bs
        self.count += bs


class DeviceAvgMetric(AvgMetric):
    """fastai's averaged metric (accuracy), summed on the device: no copy to the host per validation batch."""

    def accumulate(self, learn):
        """Add the batch's metric × its size, on the device."""
        bs = find_bs(learn.yb)
        self.total += self.func(learn.pred, *learn.yb).detach().float() * bs
        self.count += bs


def keep_on_device(learn) -> None:
    """The recorder's training loss, validation loss and metrics accumulated where they are computed (a GPU)."""
    learn.recorder.smooth_loss = DeviceSmoothLoss(beta=learn.recorder.smooth_loss.beta)
    learn.recorder.loss = DeviceAvgLoss()
    learn.metrics = [DeviceAvgMetric(m.func) if type(m) is AvgMetric else m for m in learn.metrics]
