"""One rank of the distributed test (launched by tests/test_distributed.py: torchrun -m tests.dist_worker, 2 CPU
processes, from the project root).

Trains mlp on tiny digits data through the pipeline's own path (build_learner, pick_lr, fit_phases inside
pipeline.learn.distributed.data_parallel, fastai's DistributedTrainer) and saves this rank's weights before and after,
for the test to compare.
"""

import os
from pathlib import Path

import torch
from fastai.distributed import num_distrib, rank_distrib
from safetensors.torch import save_file

from pipeline import prepare
from pipeline.data import array_formats
from pipeline.learn import recipe
from pipeline.learn.distributed import data_parallel, share
from pipeline.params import make_spec


def main(out: Path) -> None:
    arrays, meta = prepare.prepare(array_formats.read_digits(0), 0.2, 0, limit=400, test_limit=50)
    spec = make_spec({"arch": "cnn4", "epochs": 1, "bs": 16, "lr": "auto", "num_it": 10, "tta": False}, "cnn4")
    learn, setup = recipe.build_learner("cnn4", spec, arrays, meta, seed=0)
    rank = rank_distrib()
    save_file({k: v.contiguous() for k, v in learn.model.state_dict().items()}, str(out / f"init{rank}.safetensors"))
    found = recipe.pick_lr(learn, "cnn4", spec)
    with data_parallel(learn, torch.device("cpu")):
        lr, _, _ = share(found)
        recipe.fit_phases(learn, spec, setup, False, lr)
    state = {k: v.contiguous() for k, v in learn.model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.txt").write_text(f"{num_distrib()} {lr!r} {len(learn.dls.train)}\n")


if __name__ == "__main__":
    main(Path(os.environ["DIST_OUT"]))
