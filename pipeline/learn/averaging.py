"""Accuracy from one training run: weight averaging (`average: ema | swa`) and checkpoints along the run
(`snapshots: K`), as fastai callbacks over the libraries that already do them — timm's ModelEmaV3 (an exponential
moving average with timm's decay warm-up, for short runs) and torch.optim.swa_utils (AveragedModel's equal average
of the weights from `average_start` of the steps on, then update_bn recomputes the batch-norm statistics the
average no longer matches). The callbacks live across fits (frozen epochs, progressive-resizing phases); after the
last one `finish` puts the averaged weights into the learner's model, so the averaged model is the member that is
evaluated, saved and predicted.
"""

from __future__ import annotations

import torch
from fastai.callback.core import Callback


def plain(model: torch.nn.Module) -> torch.nn.Module:
    """The network under a data-parallel wrapper (fastai's DistributedTrainer wraps it in DDP while fitting)."""
    return getattr(model, "module", model)


class WeightAverage(Callback):
    """`average: ema`: timm's ModelEmaV3 updated after every optimizer step (decay warm-up on: the effective decay
    grows as 1 − (1 + step)^−2/3 up to `decay`, so a run of a few thousand steps is not dominated by its random
    start; batch-norm buffers are averaged alike). `average: swa`: torch's AveragedModel, the equal average of the
    weights after every step from `start` (a share of the run's steps) on; `finish` recomputes batch-norm statistics
    over the training batches (swa_utils.update_bn)."""

    order = 95  # after the optimizer step, before TrimHeap

    def __init__(self, kind: str, epochs: int, decay: float = 0.999, start: float = 0.75):
        self.kind, self.epochs, self.decay, self.start = kind, epochs, decay, start
        self.avg, self.total, self.step, self.updates = None, 1, 0, 0

    def before_fit(self):
        """At the first fit: the average of the model the learner starts with, and the run's steps — `epochs` ×
        the batches of this fit's training loader, which under torchrun is already each rank's share (the
        callback outlives each fit: frozen epochs, phases)."""
        if self.avg is not None:
            return
        self.total = max(self.epochs * len(self.dls.train), 1)
        if self.kind == "ema":
            from timm.utils import ModelEmaV3

            self.avg = ModelEmaV3(plain(self.learn.model), decay=self.decay, use_warmup=True)
        else:
            from torch.optim.swa_utils import AveragedModel

            self.avg = AveragedModel(plain(self.learn.model))

    def after_batch(self):
        """Fold the weights after this optimizer step into the average."""
        if not self.training:
            return
        self.step += 1
        model = plain(self.learn.model)
        if self.kind == "ema":
            self.avg.update(model, step=self.step)
            self.updates += 1
        elif self.step > self.start * self.total:
            self.avg.update_parameters(model)
            self.updates += 1

    def averaged(self, train_dl=None) -> torch.nn.Module | None:
        """The averaged network (SWA: its batch-norm statistics recomputed over `train_dl`), or None where nothing
        was averaged (SWA's start beyond the run)."""
        if self.updates == 0:
            return None
        net = self.avg.module
        if self.kind == "swa" and train_dl is not None and has_batch_norm(net):
            from torch.optim.swa_utils import update_bn

            with torch.no_grad():
                update_bn(train_dl, net)
        return net.eval()

    def finish(self, train_dl=None) -> dict:
        """Load the averaged weights into the learner's model (see `averaged`); returns what was averaged, for
        metrics/<key>.json."""
        net = self.averaged(train_dl)
        if net is None:  # the final weights stay
            return {"kind": self.kind, "updates": 0}
        plain(self.learn.model).load_state_dict(net.state_dict())
        out = {"kind": self.kind, "updates": self.updates}
        return out | ({"decay": self.decay} if self.kind == "ema" else {"start": self.start})


def has_batch_norm(model: torch.nn.Module) -> bool:
    """Does the model hold batch-norm layers (whose running statistics update_bn recomputes)?"""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Snapshots(Callback):
    """`snapshots: K`: a copy of the weights at the end of each of the run's last K training epochs but the very
    last (the member itself is that one), counted across fits (frozen epochs and phases included). Each copy is
    evaluated and written as a member of its own (`<key>@e<epoch>`), at no extra training cost."""

    order = 96

    def __init__(self, epochs: list[int]):
        self.epochs, self.epoch_no, self.states = set(epochs), 0, {}

    def after_epoch(self):
        """Copy the weights (to the CPU) when this epoch is one of the snapshots'."""
        self.epoch_no += 1
        if self.epoch_no in self.epochs:
            model = plain(self.learn.model)
            self.states[self.epoch_no] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def size_at(phases: list, epoch: int, freeze_epochs: int = 0) -> int:
    """The image size epoch `epoch` (1-based, counted as Snapshots counts: frozen epochs first) trained at: the
    first phase holds the frozen epochs and its own, each later phase its own; past the end, the last size."""
    end = freeze_epochs
    for size, epochs in phases:
        end += epochs
        if epoch <= end:
            return size
    return phases[-1][0]


def snapshot_epochs(total_epochs: int, k: int | None) -> list[int]:
    """The epochs (1-based, across fits) after which `snapshots: k` copies the weights: the last k − 1 before the
    final one."""
    if not k or k < 2:
        return []
    return list(range(max(1, total_epochs - k + 1), total_epochs))
