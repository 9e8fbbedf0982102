"""Data-parallel training through fastai's distrib_ctx, launched by torchrun as 2 CPU processes (gloo)."""

import json
import subprocess
import sys

import pytest
from conftest import ENV, ROOT, TINY, make_repo, run
from safetensors.torch import load_file

from pipeline.artifacts import metrics_file

pytestmark = pytest.mark.slow  # real `dvc repro` / torchrun runs: `make test` runs them, `make quick` does not

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def test_two_processes_train_in_step(tmp_path):
    env = {**ENV, "DIST_OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [*TORCHRUN, "-m", "tests.dist_worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    init = load_file(str(tmp_path / "init0.safetensors"))
    weights = [k for k in w0 if k.endswith("weight")]
    assert weights and all(w0[k].equal(w1[k]) for k in w0)  # the same weights on both ranks ...
    assert any(not w0[k].equal(init[k]) for k in weights)  # ... after training moved them
    n0, lr0, _ = (tmp_path / "rank0.txt").read_text().split()
    n1, lr1, _ = (tmp_path / "rank1.txt").read_text().split()
    assert n0 == n1 == "2" and lr0 == lr1  # rank 0's lr_find result reached rank 1


def torchrun_train(repo, key: str) -> str:
    """`dvc repro prepare`, then `torchrun --nproc_per_node 2 -m pipeline.train <key>` in the repo; its output."""
    run("dvc repro prepare", repo)
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [*TORCHRUN, "-m", "pipeline.train", key], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    return out


def test_torchrun_stage_writes_outputs_once_from_rank_0(tmp_path):
    params = {**TINY, "train": {**TINY["train"], "lr": "auto", "num_it": 10}}
    repo = make_repo(tmp_path, params)
    out = torchrun_train(repo, "mlp")
    assert out.count("mlp: valid acc") == 1 and "(2 processes, data-parallel)" in out
    m = json.loads((metrics_file(repo, "mlp")).read_text())
    assert m["lr_found"] and 0 <= m["valid"]["accuracy"] <= 1
    assert sorted(p.name for p in (repo / "models").iterdir() if not p.name.startswith(".git")) == ["mlp"]


def test_torchrun_folds_and_refit_train_in_step_and_write_once(tmp_path):
    """`folds` and `refit` under torchrun: every rank runs the same sequence of fits (K folds, then the refit, lr
    from rank 0's lr_find on the first fold); rank 0 alone evaluates and writes. With `average` and `snapshots`:
    each rank averages its (identical) weights; rank 0 writes the averaged member and the snapshot member once."""
    mlp = {"epochs": 2, "folds": 2, "refit": True, "lr": "auto", "num_it": 10}
    archs = {"mlp": {**mlp, "average": "swa", "average_start": 0.5, "snapshots": 2}}
    repo = make_repo(tmp_path, {**TINY, "archs": archs})
    out = torchrun_train(repo, "mlp")
    assert out.count("mlp: valid acc") == 1 and out.count("(2 processes, data-parallel)") == 3  # 2 folds + refit
    m = json.loads((metrics_file(repo, "mlp")).read_text())
    assert m["folds"]["k"] == 2 and m["refit"]["lr"] == m["lr"] and m["lr_found"]
    # SWA starts at half of each rank's own steps (counted on the distributed loader): it averaged something
    assert m["average"]["kind"] == "swa" and m["average"]["updates"] > 0 and m["snapshots"] == ["mlp@e1"]
    # the refit snapshot is the one saved (its test predictions), as the refit model is the entry's
    assert (repo / "preds/mlp/snapshots/e1/test.npy").is_file()
    assert (repo / "models/mlp/snapshots/e1/model.safetensors").is_file()
