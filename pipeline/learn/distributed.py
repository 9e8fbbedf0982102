"""Data-parallel plumbing around fastai's DistributedTrainer, for stages launched by torchrun or
`accelerate launch`: NCCL on GPUs, gloo on CPU processes; rank 0 alone runs lr_find, evaluates and writes."""

from __future__ import annotations

import contextlib
import os

import torch
from fastai.callback.progress import ProgressCallback
from fastai.distributed import DistributedDL, DistributedTrainer, rank_distrib
from fastai.learner import Learner


class AnyBackendDL(DistributedDL):
    """fastai's DistributedDL, whose shuffled-order broadcast also works on gloo (CPU processes): fastai sends
    it through a CUDA tensor, which only nccl needs."""

    def _broadcast(self, t, rank):
        if torch.distributed.get_backend() == "nccl":
            return super()._broadcast(t, rank)
        t = torch.tensor(t, dtype=torch.long)
        torch.distributed.broadcast(t, rank)
        return t.tolist()


class AnyBackendTrainer(DistributedTrainer):
    """fastai's DistributedTrainer (DDP through Accelerate) with AnyBackendDL."""

    def _wrap_dl(self, dl):
        return dl if isinstance(dl, DistributedDL) else AnyBackendDL(dl, device=self.learn.model.device)


@contextlib.contextmanager
def data_parallel(learn: Learner, device: torch.device):
    """fastai's learn.distrib_ctx() for processes launched by torchrun or `accelerate launch`: NCCL with
    SyncBatchNorm on GPUs, gloo on CPU processes (Accelerate's cpu=True)."""
    kw = {"sync_bn": True} if device.type == "cuda" else {"sync_bn": False, "cpu": True}
    # precision is fastai's (MixedPrecision's loss scaler, or Autocast): an accelerate config's `mixed_precision`
    # (ACCELERATE_MIXED_PRECISION under `accelerate launch`) would autocast and scale the loss a second time
    learn.add_cb(AnyBackendTrainer(mixed_precision="no", **kw))
    if rank_distrib():
        learn.remove_cb(ProgressCallback)
    try:
        yield learn
    finally:
        learn.detach_distributed()


@contextlib.contextmanager
def single_process():
    """Within: fastai sees one process (WORLD_SIZE=1), so rank 0's lr_find neither gathers nor waits on ranks
    that are not running it. Restored on exit."""
    old = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = old


def share(value: tuple) -> tuple:
    """Rank 0's value on every rank (e.g. the lr lr_find chose: all ranks must follow the same schedule)."""
    box = list(value)
    torch.distributed.broadcast_object_list(box, src=0)
    return tuple(box)


def shutdown() -> None:
    """End this process's part in a data-parallel run: destroy the process group before the interpreter exits, so
    that gloo's or NCCL's threads are joined, not killed mid-way (a rank could abort with `terminate called without
    an active exception` at exit). Nothing to do in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def say(msg: str) -> None:
    """Print on rank 0 only: the one guard for what a data-parallel run tells the user."""
    if rank_distrib() == 0:
        print(msg, flush=True)
