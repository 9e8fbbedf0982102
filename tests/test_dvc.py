"""The real `dvc repro` on a tiny profile in a temporary git repository."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "GIT_AUTHOR_NAME": "t",
       "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
TINY = {
    "seed": 0,
    "data": {"name": "digits", "limit": 300, "test_limit": 100},
    "train": {"epochs": 1, "bs": 32, "lr": 0.01, "tta": False},
    "archs": {"logreg": {}, "mlp": {"epochs": 2}},
    "ensemble": {"threshold": 0.0, "method": "stacking"},
}


def run(cmd: str, cwd: Path) -> str:
    r = subprocess.run(cmd, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def make_repo(tmp: Path, params: dict) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    for pkg in ("pipeline", "ensembles"):
        shutil.copytree(ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / f, repo / f)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("git init -q && dvc init -q && dvc config core.analytics false && git add -A && git commit -qm init", repo)
    return repo


def stages_to_run(repo: Path) -> set[str]:
    out = json.loads(run("dvc status --json", repo))
    return set(out)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("dvc"), TINY)
    run("dvc repro", repo)
    run("git add -A && git commit -qm run", repo)
    return repo


def test_repro_writes_every_output_then_reruns_nothing(repo):
    for key in ("logreg", "mlp"):
        assert (repo / "models" / key / "model.safetensors").is_file()
        assert (repo / "preds" / key / "valid.npy").is_file()
        m = json.loads((repo / "metrics" / f"{key}.json").read_text())
        assert 0 <= m["valid"]["accuracy"] <= 1 and m["lr"] == 0.01 and not m["lr_found"]
    rows = list(csv.reader((repo / "submissions" / "ensemble.csv").open()))
    assert rows[0] == ["id", "label"] and len(rows) == 1 + 100
    assert {p.name for p in (repo / "submissions").iterdir()} == {"logreg.csv", "mlp.csv", "ensemble.csv"}
    board = list(csv.DictReader((repo / "reports" / "leaderboard.csv").open()))
    assert {r["model"] for r in board} >= {"logreg", "mlp", "ensemble:stacking*", "ensemble:uniform"}
    assert (repo / "reports" / "figures" / "confusion_matrix.png").is_file()
    assert stages_to_run(repo) == set()
    out = run("dvc repro", repo)
    assert "Running stage" not in out and "up to date" in out


def test_one_entry_reruns_one_stage_and_train_reruns_all(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    try:
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, "archs": {"logreg": {}, "mlp": {"epochs": 3}}}))
        # the ensemble and report read the list of archs; no other training stage reruns
        assert stages_to_run(repo) == {"train@mlp", "ensemble", "report"}
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, "train": {**params["train"], "bs": 16}}))
        assert stages_to_run(repo) == {"train@logreg", "train@mlp"}
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, "ensemble": {"method": "uniform"}}))
        assert stages_to_run(repo) == {"ensemble"}  # re-weighting never retrains
    finally:
        run("git checkout params.yaml", repo)


def test_metrics_and_plots_are_declared(repo):
    shown = json.loads(run("dvc metrics show --json", repo))
    files = next(iter(shown.values()))["data"]
    assert {"metrics/logreg.json", "metrics/mlp.json", "ensemble/metrics.json"} <= set(files)
    plots = run("dvc plots show --json", repo)
    assert "dvclive/mlp/plots/metrics" in plots and "lr_find" in plots and "reports/figures/top_losses.png" in plots


def test_exp_run_set_param(repo):
    run("dvc exp run -S archs.mlp.epochs=1", repo)
    m = json.loads((repo / "metrics" / "mlp.json").read_text())
    assert m["phases"] == [[8, 1]]
    run("git checkout -- . && git clean -fdq && dvc checkout -q", repo)


def test_new_timm_entry_needs_no_code(tmp_path):
    """Adding `convnext_atto: {}` under archs yields train@convnext_atto, which trains."""
    params = {**TINY, "train": {**TINY["train"], "phases": [[32, 1]], "train_limit": 64}, "archs": {"logreg": {}}}
    repo = make_repo(tmp_path, params)
    run("dvc repro", repo)
    params["archs"]["convnext_atto"] = {}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_to_run(repo) == {"train@convnext_atto", "ensemble", "report"}
    out = run("dvc repro", repo)
    assert "Running stage 'train@convnext_atto'" in out and "Running stage 'train@logreg'" not in out
    assert "convnext_atto" in json.loads((repo / "ensemble" / "metrics.json").read_text())["models"]
    assert (repo / "submissions" / "convnext_atto.csv").is_file()
    m = json.loads((repo / "metrics" / "convnext_atto.json").read_text())
    assert m["source"] == "timm" and m["arch"] == "convnext_atto"
