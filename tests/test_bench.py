"""Every bench/ script runs, in its smallest mode, so none breaks unseen. (Their figures are benchmarks: what
these tests check is that each runs end to end and writes its results.)"""

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, has_row

from pipeline import prepare

pytestmark = pytest.mark.slow  # each trains for seconds to a minute

ROOT = Path(__file__).resolve().parents[1]
FAST = {"arch": "resnet9", "epochs": 1, "lr": 0.005, "size": 16, "model_kwargs": {"widths": [8, 16, 16, 16]}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with params.yaml (digits; logreg, mlp, a small `fast`) and data/prepared."""
    root = tmp_path_factory.mktemp("bench")
    params = {**TINY, "archs": {"logreg": {}, "mlp": {"epochs": 1}, "fast": FAST}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepare.run(str(root / "params.yaml"), root / "data" / "prepared")
    return root


def paths(project, tmp_path):
    return ["--root", str(project), "--out", str(tmp_path)]


def test_lr_sweep(project, tmp_path):
    from bench import lr_sweep

    lr_sweep.main(["mlp", "--lrs", "auto", "1e-2", "--train-limit", "200", "--epochs", "1", *paths(project, tmp_path)])
    rows = json.loads((tmp_path / "lr_sweep_mlp.json").read_text())["rows"]
    assert [r["lr_param"] for r in rows] == ["auto", "1e-2"] and rows[1]["lr"] == 0.01


def test_fast_recipe(project, tmp_path, capsys):
    from bench import fast_recipe

    fast_recipe.main(["--recipe", "fast", "--epochs", "1", "--matmul-s", "0.05", *paths(project, tmp_path)])
    (out,) = tmp_path.glob("fast_recipe_fast_16px1ep-bs32.json")
    r = json.loads(out.read_text())
    assert r["spec"]["arch"] == "resnet9" and r["achieved_train_flop_s"] > 0 and 0 <= r["test_acc"] <= 1
    assert r["precision"] == "fp32"  # `auto` on a CPU
    args = ["--recipe", "fast", "--epochs", "1", "--matmul-s", "0.05", "--precision", "bf16"]
    fast_recipe.main([*args, *paths(project, tmp_path)])
    (out,) = tmp_path.glob("fast_recipe_fast_16px1ep-bs32-bf16.json")
    assert json.loads(out.read_text())["precision"] == "bf16"
    from pipeline.params import TRAIN_SCHEMA

    with pytest.raises(SystemExit):  # the entry's choices, `native` (the default entry's) among them
        fast_recipe.main(["--help"])
    assert "{" + ",".join(TRAIN_SCHEMA["precision"][1].choices) + "}" in capsys.readouterr().out


def test_members(project, tmp_path):
    from bench import members

    members.main(["logreg", "mlp-b=mlp:bs=16", "--tag", "t", *paths(project, tmp_path)])
    r = json.loads((tmp_path / "members_t.json").read_text())
    assert set(r["models"]) == {"logreg", "mlp-b"} and [k["k"] for k in r["top_k"]] == [1, 2]


def test_kfold(tmp_path):
    from bench import kfold

    kfold.main(["--small", "--folds", "2", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "kfold_digits.json").read_text())
    assert set(r["entries"]) == {"logreg", "mlp", "fast"} and r["entries"]["mlp"]["folds"]["k"] == 2
    assert (tmp_path / "kfold_digits.png").read_bytes()[:4] == b"\x89PNG"


def test_levers(tmp_path):
    from bench import levers

    levers.main(
        ["--batches", "2", "--rounds", "1", "--bs", "16", "--eval-images", "32", "--skip-compile"]
        + ["--out", str(tmp_path)]
    )
    r = json.loads((tmp_path / "levers.json").read_text())
    assert {row["lever"] for row in r["rows"]} >= {"memory format", "precision", "threads"}
    med = statistics.median  # each ratio is the variant's median speed over the baseline's, from the samples kept
    assert all(
        row["ratio"] == pytest.approx(med(row["variant_img_s"]) / med(row["baseline_img_s"])) for row in r["rows"]
    )
    assert all(len(row["baseline_img_s"]) == 1 and min(row["baseline_img_s"]) > 0 for row in r["rows"])


def test_overhead(tmp_path):
    from bench import overhead

    overhead.main(["--images", "64", "--rounds", "1", "--bs", "16", "--archs", "fast:28", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "overhead.json").read_text())
    f = r["results"]["fast:28"]
    med = statistics.median
    assert len(f["pipeline_img_s"]) == len(f["bare_img_s"]) == 1 and min(f["bare_img_s"]) > 0
    assert f["ratio"] == pytest.approx(med(f["pipeline_img_s"]) / med(f["bare_img_s"]))


def test_gpu_bare_loop_ratio_times_training_alone_at_the_pipelines_precision(project, monkeypatch):
    """bench.gpu's pipeline ÷ bare-loop ratio (issue 34): it timed the pipeline's training plus validation against
    the bare loop's training, and the bare loop always ran bf16 (emulated on fp16 GPUs). Here on the CPU, forced
    bf16: both loops run it, and the pipeline's validation is outside its timer."""
    from bench import gpu, overhead

    seen, timed, stops = [], [], []
    real, real_stop = overhead.bare_epoch, overhead.TrainTimer.after_train
    monkeypatch.setattr(overhead, "bare_epoch", lambda *a, **k: seen.append(a[5]) or real(*a, **k))
    monkeypatch.setattr(overhead.TrainTimer, "after_train", lambda self: stops.append(1) or real_stop(self))
    monkeypatch.setattr(overhead.TrainTimer, "after_validate", lambda self: timed.append(len(stops)), raising=False)
    small = {**FAST, "precision": "bf16", "bs": 32}
    r = gpu.bare_loop_ratio(epochs=1, bs=32, root=project, device="cpu", arch=small)
    assert r["precision"] == "bf16" and seen == [torch.bfloat16, torch.bfloat16]
    assert timed == [1, 2]  # each fit's validation pass came after that fit's training timer had stopped
    assert r["ratio"] == pytest.approx(r["pipeline_img_per_s"] / r["bare_img_per_s"], rel=0.01)


def test_pretrained_vs_scratch(tmp_path):
    from bench import pretrained_vs_scratch as pvs

    pvs.main(
        ["--train", "120", "--test", "50", "--epochs", "2", "--size", "32", "--seeds", "0", "--out", str(tmp_path)]
    )
    r = json.loads((tmp_path / "pretrained_vs_scratch.json").read_text())
    assert set(r["summary"]) == {"pretrained", "scratch"} and r["summary"]["scratch"]["n"] == 1


def test_imbalance(tmp_path):
    """The smallest mode: 3 classes of digits at 50:1, one epoch of logreg, every setting; a row each."""
    from bench import imbalance

    assert imbalance.main(["--small", "--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 0
    r = json.loads((tmp_path / "imbalance_small.json").read_text())
    assert [s["setting"] for s in r["settings"]] == list(imbalance.SETTINGS) and r["ratio"] == 50
    by = {s["setting"]: s for s in r["settings"]}
    assert by["off, metric accuracy"]["metric"] == "accuracy" and by["default"]["metric"] == "balanced_accuracy"
    assert by["adjust"]["tau"] >= 0 and by["off"]["tau"] == 0
    for s in r["settings"]:
        lo, hi = s["test_balanced_ci95"]
        assert lo <= s["test_balanced"] <= hi
    assert has_row((tmp_path / "imbalance_small.md").read_text(), "default", "balanced_accuracy")
    # every remedy against none on the same test rows, with its paired interval
    assert set(r["vs_off"]) == {"adjust", "loss_weights", "sampler", "default"}
    d = r["vs_off"]["default"]
    assert d["ci95"][0] <= d["diff"] <= d["ci95"][1] and 0 < d["p"] <= 1


def test_imbalance_models_come_from_params_yaml(tmp_path):
    """Its default models are params.yaml's local-network entries; a name params.yaml lacks is an error, not a
    silent drop (the bench once listed fast-32 and fast-noflip after the entries had gone)."""
    import yaml

    from bench import imbalance
    from pipeline.errors import PipelineError

    p = yaml.safe_load((imbalance.ROOT / "params.yaml").read_text())
    archs = imbalance.default_archs(p)
    assert archs and set(archs) <= set(p["archs"]) | set(p.get("variants") or {})
    assert "resnet34" not in archs and "fast" in archs
    params, kept = imbalance.project_params(tmp_path, None, small=False)
    assert kept == archs and set(params["archs"]) == set(archs)
    with pytest.raises(PipelineError, match="no archs or variants entry fast-noflip .*it has logreg"):
        imbalance.main(["--archs", "fast", "fast-noflip", "--out", str(tmp_path), "--work", str(tmp_path / "w")])


def test_pythons_check(tmp_path):
    """The smallest mode: `make python` with this Python (supported) and a missing one (refused, saying what to
    install); nothing installed."""
    import sys

    from bench import pythons

    assert pythons.main(["--check", "--pythons", sys.executable, "--out", str(tmp_path)]) == 0
    assert pythons.main(["--check", "--pythons", sys.executable, "no-such-python3", "--out", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "pythons_check.json").read_text())["rows"]
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (
        rows[0]["check_rc"] == 0
        and rows[0]["resolved"].startswith(f"Python {v}: ")
        and f"venv-py{v}-" in rows[0]["resolved"]
    )
    assert rows[1]["check_rc"] != 0 and "Install one" in rows[1]["resolved"]


def test_torches_check(tmp_path):
    """bench.torches' smallest mode: this interpreter as a machine's own Python, `make python TORCH=system`."""
    from bench import torches

    assert torches.main(["--check", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "torches_check.json").read_text())
    (row,) = r["rows"]
    assert row["rc"] == 0 and "-system-torch" in row["resolved"] and "(TORCH=system)" in row["resolved"]
    assert "| this interpreter's |" in (tmp_path / "torches_check.md").read_text()


def test_study_small(tmp_path, monkeypatch):
    """The seeds' study in its CPU mode: EfficientNet-Lite0's offline weights fine-tuned (a frozen epoch, two sizes)
    beside logreg, through `dvc repro`, ensembled; and the GPU preset's shape."""
    from bench import study

    monkeypatch.setattr(study, "CACHE", tmp_path / "cache")
    assert study.main(["--small", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "study_fashion-mnist-small.json").read_text())
    assert set(r["models"]) == {"efficientnet_lite0", "logreg"} and r["ensemble"]["test"] is not None
    assert r["models"]["efficientnet_lite0"]["valid"] > 0.3  # fine-tuned from real weights on 240 images
    spec = json.loads(
        (
            tmp_path / "cache" / "fashion-mnist-small" / "repo" / "models" / "efficientnet_lite0" / "spec.json"
        ).read_text()
    )
    assert spec["train"]["freeze_epochs"] == 1 and spec["train"]["phases"] == [[48, 2], [64, 1]] and spec["pretrained"]
    p = study.preset("cifar10", "/data/cifar10")
    tuned = [k for k, v in p["archs"].items() if v.get("pretrained") is True]
    assert tuned == ["vgg19_bn", "resnet34", "densenet121", "efficientnet_b0"]
    assert all(p["archs"][k]["phases"][0][0] >= 128 and p["archs"][k]["freeze_epochs"] for k in tuned)


def test_every_bench_script_has_a_smoke_test():
    here = Path(__file__).parent
    tested = "".join(p.read_text() for p in here.glob("test_*.py"))
    scripts = [p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "machine")]
    untested = [s for s in scripts if f"bench import {s}" not in tested and f"bench.{s}" not in tested]
    assert not untested, f"bench scripts with no test running them: {untested}"


@pytest.mark.slow
def test_bench_scale_smallest_mode_runs(tmp_path):
    """`python -m bench.scale --small`: both layouts written and run through `dvc repro` under the measuring
    wrapper (the photo folder to `prepare` only, to keep the suite short), every stage's wall time and peak memory
    recorded in the results files."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for extra in (["--sets", "tiny"], ["--sets", "photos", "--target", "prepare"]):
        cmd = [sys.executable, "-m", "bench.scale", "--small", "--out", str(tmp_path), *extra]
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    tiny = json.loads((tmp_path / "scale_tiny_small.json").read_text())
    assert set(tiny["stages"]) == {"prepare", "plan", "train@logreg", "train@fast", "race", "ensemble", "report"}
    assert tiny["classes"] == 20 and tiny["ensemble"]["chosen"] in tiny["ensemble"]["strategies"]
    photos = json.loads((tmp_path / "scale_photos_small.json").read_text())
    assert set(photos["stages"]) == {"prepare"} and photos["image_shape"] == [64, 64, 3]
    for res in (tiny, photos):
        for s in res["stages"].values():
            assert s["wall_s"] > 0 and s["peak_rss_gib"] > 0.01
        assert res["stages"]["prepare"]["img_per_s"] > 0 and res["dvc_repro_s"] > 0
    assert has_row((tmp_path / "scale_photos_small.md").read_text(), "prepare")


def test_free_accuracy(project, tmp_path):
    """One short run with EMA, SWA and snapshots tracked, a two-member blend, the long run: every arm scored and
    every pair compared on both splits."""
    from bench import free_accuracy

    args = ["--recipe", "fast", "--base", "epochs=1", "--members", "fast", "mlp-b=mlp:bs=16", "--snapshots", "2"]
    args += ["--scale", "0.5"]
    free_accuracy.main([*args, *paths(project, tmp_path)])
    r = json.loads((tmp_path / "free_accuracy.json").read_text())
    arms = ["final", "ema", "swa", "snapshots2", "blend2", "long-final", "long-ema", "long-swa", "long-snapshots2"]
    assert (
        r["metric"] == "accuracy"
        and list(r["scores"]) == arms
        and all(0 <= a["test"] <= 1 for a in r["scores"].values())
    )
    assert len(r["pairs"]) == len(arms) * (len(arms) - 1) // 2 and set(r["pairs"]["final vs ema"]) == {"valid", "test"}
    assert r["runs"]["long"]["time_budget"]["asked_s"] == pytest.approx(r["runs"]["budget_s"], abs=0.05)
    assert has_row((tmp_path / "free_accuracy.md").read_text(), "final vs ema")


def test_diagnose(tmp_path):
    """The smallest mode: a Kaggle-layout folder of 120 digits, resnet34 for one step: the report flags it as having
    learned nothing, names its steps, and the report stage's log stays short."""
    from bench import diagnose

    assert diagnose.main(["--small", "--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 0
    r = json.loads((tmp_path / "diagnose_small.json").read_text())
    r34 = r["models"]["resnet34"]
    assert r34["flag"] == "learned nothing" and r34["steps"] == 1 and "after 1 optimizer step (" in r34["words"]
    assert r34["valid_ci95"][0] <= r["chance"] and r["log_lines"] <= 25 and "flag: resnet34 learned nothing" in r["log"]
    assert has_row((tmp_path / "diagnose_small.md").read_text(), "resnet34")


def test_budget_small(tmp_path):
    """The smallest mode: digits, the hand-tuned run, `budget:` and `race:` at its seconds and the race with one
    timm line added, each by `dvc repro`: the added entry reaches the race table, the seconds are accounted."""
    from bench import budget

    assert budget.main(["--small", "--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 0
    r = json.loads((tmp_path / "budget_small.json").read_text())
    assert set(r["runs"]) == {"hand", "budget", "race", "race+model"}
    assert "resnet18" in r["runs"]["race+model"]["race"]["rungs"][0]["runs"]
    assert "train@resnet18" in r["stages_run"]["race+model"] and "train@logreg" not in r["stages_run"]["race+model"]
    asked = [m["asked_s"] for m in r["runs"]["budget"]["models"].values()]
    assert asked and sum(asked) == pytest.approx(r["total_s"], rel=0.01)
    assert "| resnet18 |" in (tmp_path / "budget_small.md").read_text()
