"""The real `dvc repro` on a tiny profile in a temporary git repository."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ENV, TINY, has_row, make_repo, predict_cli, run

from pipeline.artifacts import ensemble_metrics_file, metrics_file, model_dir

pytestmark = pytest.mark.slow  # real `dvc repro` / torchrun runs: `make test` runs them, `make quick` does not


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
        assert (model_dir(repo, key) / "model.safetensors").is_file()
        assert (repo / "preds" / key / "valid.npy").is_file()
        m = json.loads((metrics_file(repo, key)).read_text())
        assert m["lr"] == 0.01 and not m["lr_found"]
    assert json.loads((metrics_file(repo, "mlp")).read_text())["valid"]["accuracy"] > 0.5  # learned; chance 0.1
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
        # the ensemble and report read the list of archs, plan and race every entry (no training there); no other
        # training stage reruns
        assert stages_to_run(repo) == {"plan", "train@mlp", "race", "ensemble", "report"}
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, "train": {**params["train"], "bs": 16}}))
        assert stages_to_run(repo) == {"plan", "train@logreg", "train@mlp", "race"}
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, "ensemble": {"method": "uniform"}}))
        assert stages_to_run(repo) == {"ensemble"}  # re-weighting never retrains
    finally:
        run("git checkout params.yaml", repo)


def test_variants_are_stages_of_their_own_that_follow_their_entry(tmp_path):
    """A `variants` entry is one more model of an `archs` entry: its own stage, outputs and seed; rerun when the
    entry or the variant changes, alone when only the variant does; grouped with its entry in the report."""
    repo = make_repo(tmp_path, {**TINY, "variants": {"mlp-s1": {"of": "mlp", "seed": 1}}})
    run("dvc repro", repo)
    run("git add -A && git commit -qm run", repo)
    a, b = (json.loads((model_dir(repo, k) / "spec.json").read_text()) for k in ("mlp", "mlp-s1"))
    assert (a["seed"], b["seed"]) == (0, 1) and a["train"]["epochs"] == b["train"]["epochs"] == 2
    assert (repo / "preds" / "mlp-s1" / "test.npy").is_file() and (repo / "submissions" / "mlp-s1.csv").is_file()
    assert has_row((repo / "reports" / "leaderboard.md").read_text(), "mlp", "2")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "archs": {"logreg": {}, "mlp": {"epochs": 3}}}))
    assert stages_to_run(repo) == {"plan", "train@mlp", "variant@mlp-s1", "race", "ensemble", "report"}
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "variants": {"mlp-s1": {"of": "mlp", "seed": 2}}}))
    assert stages_to_run(repo) == {"plan", "variant@mlp-s1", "race", "ensemble", "report"}


def test_kfold_and_refit_entries_under_dvc_repro(tmp_path):
    """`folds` and `refit` run as ordinary stages: the ensembler fits on the out-of-fold rows (every member has
    them), pipeline.commands.predict rebuilds the fold average and the refit model exactly, and nothing reruns after.
    With `average` and `snapshots` too: mlp's EMA fold models and its snapshot member mlp@e1 (its fold models'
    first-epoch weights) are written inside train@mlp's outputs, blended and rebuilt like any member."""
    import numpy as np

    from pipeline.commands import predict

    archs = {"logreg": {"folds": 2, "refit": True}, "mlp": {"epochs": 2, "folds": 2, "average": "ema", "snapshots": 2}}
    # calibrate: the members' temperatures apply to their out-of-fold rows too, and predict applies them all
    repo = make_repo(tmp_path, {**TINY, "archs": archs, "ensemble": {"calibrate": "temperature", "margin": 0.2}})
    run("dvc repro", repo)
    run("git add -A && git commit -qm run", repo)
    assert (repo / "models/mlp/fold1/model.safetensors").is_file() and (repo / "preds/mlp/oof.npy").is_file()
    m = json.loads((repo / "ensemble/metrics.json").read_text())
    n_train = len(np.load(repo / "data/prepared/train_y.npy"))
    assert m["fitted_on"] == f"out-of-fold predictions on {n_train} training rows (valid held out)"
    assert m["temperature"] > 0 and all(m["models"][n]["temperature"] > 0 for n in [*archs, "mlp@e1"])
    assert (repo / "models/mlp/snapshots/e1/fold1/model.safetensors").is_file() and m["models"]["mlp@e1"][
        "group"
    ] == "mlp"
    assert "mlp@e1" in m["strategies"]["stacking"]["members"]
    assert json.loads((repo / "metrics/mlp.json").read_text())["average"]["kind"] == "ema"
    x = np.load(repo / "data/prepared/test_x.npy")
    ens = predict.load_ensemble(repo)
    np.testing.assert_allclose(ens.predict_arrays(x), np.load(repo / "ensemble/preds/test.npy"), atol=1e-4)
    board = (repo / "reports/leaderboard.md").read_text()
    assert has_row(board, "mlp", "2") and has_row(board.split("Refit entries")[1], "logreg")
    assert has_row(board, "mlp@e1")
    assert stages_to_run(repo) == set()


def test_metrics_and_plots_are_declared(repo):
    """One small DVC metric, summary.json: `dvc metrics show` and `dvc exp show` stay readable; the detailed files
    are committed outputs, not metrics."""
    shown = json.loads(run("dvc metrics show --json", repo))
    files = next(iter(shown.values()))["data"]
    assert set(files) == {"summary.json"}
    s = files["summary.json"]["data"]  # DVC's view: scalars (the intervals, lists, are in the file)
    assert s["metric"] == "accuracy" and set(s["models"]) == {"logreg", "mlp"}
    assert set(s["models"]["mlp"]) == {"valid", "test", "train_s"}
    on_disk = json.loads((repo / "summary.json").read_text())["submission"]["test"]
    assert on_disk["ci95"][0] <= on_disk["score"] == s["submission"]["test"]["score"] <= on_disk["ci95"][1]

    def leaves(d, prefix=""):  # `dvc exp show` makes a column of each
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]

    assert len(list(leaves(s))) <= 30
    head = run("dvc exp show --csv", repo).splitlines()[0].split(",")
    assert "summary.json:metric" in head and not any(c.startswith(("strategies.", "comparisons")) for c in head)
    assert (repo / "metrics" / "mlp.json").is_file() and (repo / "ensemble" / "metrics.json").is_file()
    plots = run("dvc plots show --json", repo)
    assert "dvclive/mlp/plots/metrics" in plots and "lr_find" in plots and "reports/figures/top_losses.png" in plots


def test_exp_run_set_param(repo):
    run("dvc exp run -S archs.mlp.epochs=1", repo)
    m = json.loads((metrics_file(repo, "mlp")).read_text())
    assert m["phases"] == [[8, 1]]
    run("git checkout -- . && git clean -fdq && dvc checkout -q", repo)


def test_new_timm_entry_needs_no_code(tmp_path):
    """Adding `convnext_atto: {}` under archs yields train@convnext_atto, which trains."""
    params = {**TINY, "train": {**TINY["train"], "phases": [[32, 1]], "train_limit": 64}, "archs": {"logreg": {}}}
    repo = make_repo(tmp_path, params)
    run("dvc repro", repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())  # as make_repo completed it
    params["archs"]["convnext_atto"] = {}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_to_run(repo) == {"plan", "train@convnext_atto", "race", "ensemble", "report"}
    out = run("dvc repro", repo)
    assert "Running stage 'train@convnext_atto'" in out and "Running stage 'train@logreg'" not in out
    assert "convnext_atto" in json.loads((ensemble_metrics_file(repo)).read_text())["models"]
    assert (repo / "submissions" / "convnext_atto.csv").is_file()
    m = json.loads((metrics_file(repo, "convnext_atto")).read_text())
    assert m["source"] == "timm" and m["arch"] == "convnext_atto"


def test_predict_rebuilds_models_and_the_ensemble_exactly(repo, tmp_path):
    import numpy as np
    from PIL import Image

    from pipeline.commands import predict

    x = np.load(repo / "data" / "prepared" / "test_x.npy")
    for key in ("logreg", "mlp"):
        m = predict.load_model(key, repo)
        np.testing.assert_allclose(m.predict_arrays(x), np.load(repo / "preds" / key / "test.npy"), atol=1e-5)
    ens = predict.load_ensemble(repo)
    assert ens.spec.method == "stacking" and ens.spec.stacker
    np.testing.assert_allclose(ens.predict_arrays(x), np.load(repo / "ensemble" / "preds" / "test.npy"), atol=1e-4)

    # files in: the same image as a gray PNG, as a big RGB JPEG in a sub-folder, and a broken file
    Image.fromarray(x[0, ..., 0]).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(x[1, ..., 0]).convert("RGB").resize((64, 64), Image.NEAREST).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "preds.csv"
    r = predict_cli(str(tmp_path), "--model", "ensemble", "--top-k", "3", "--out", str(out), "--root", str(repo))
    assert r.returncode == 0, r.stderr
    assert "broken.png" in r.stderr and "2 images predicted" in r.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["file", "label_1", "prob_1", "label_2", "prob_2", "label_3", "prob_3"]
    assert [Path(r[0]).name for r in rows[1:]] == ["a.png", "b.jpg"]
    probs = ens.predict_arrays(x[:1])[0]
    classes = ens.classes
    assert rows[1][1] == classes[int(probs.argmax())] and abs(float(rows[1][2]) - probs.max()) < 1e-5
    assert float(rows[1][2]) >= float(rows[1][4]) >= float(rows[1][6])


@pytest.mark.bad_input
def test_predict_unknown_model_is_a_clear_error(repo):
    r = predict_cli(str(repo / "params.yaml"), "--model", "nope", "--root", str(repo))
    assert r.returncode == 1 and "models/nope/spec.json: missing" in r.stderr


def test_lock_check_names_a_stale_entry_on_a_clone_without_outputs(repo, tmp_path):
    """`python -m pipeline.commands.lock` (CI, after the tests): quiet on a clean clone, whose outputs sit in
    DVC's cache and are absent; names a changed code file, a changed param and a removed stage's lock entry."""
    lock = [sys.executable, "-m", "pipeline.commands.lock", "--root"]
    clone = tmp_path / "clone"
    run(f"git clone -q {repo} {clone}", tmp_path)
    assert not (clone / "models" / "logreg").exists()  # a clone has no outputs
    ok = subprocess.run([*lock, str(clone)], env=ENV, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with (clone / "pipeline" / "learn" / "member.py").open("a") as f:
        f.write("# changed\n")
    params = yaml.safe_load((clone / "params.yaml").read_text())
    (clone / "params.yaml").write_text(yaml.safe_dump({**params, "seed": params["seed"] + 1}))
    locked = yaml.safe_load((clone / "dvc.lock").read_text())
    locked["stages"]["train@gone"] = locked["stages"]["train@mlp"]
    (clone / "dvc.lock").write_text(yaml.safe_dump(locked, sort_keys=False))
    (clone / "metrics" / "logreg.json").write_text("{}\n")  # a committed output (cache: false) out of step
    bad = subprocess.run([*lock, str(clone)], env=ENV, capture_output=True, text=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "ensemble: metrics modified" in bad.stdout
    assert "train@mlp: pipeline/learn/member.py modified" in bad.stdout
    assert "prepare: param seed modified (params.yaml)" in bad.stdout
    assert "train@gone: in dvc.lock, not in dvc.yaml" in bad.stdout
    assert "data/prepared" not in bad.stdout and "deleted" not in bad.stdout


def test_push_pull_round_trip_through_a_local_remote(repo, tmp_path):
    outs = [
        "data/prepared",
        "models/logreg",
        "models/mlp",
        "preds/logreg",
        "preds/mlp",
        "submissions",
        "ensemble/preds",
        "ensemble/model.json",
        "reports",
    ]  # every cached output in dvc.lock

    def snapshot():
        files = {}
        for o in outs:
            p = repo / o
            for f in [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file() and q.name != ".gitignore"):
                files[str(f.relative_to(repo))] = f.read_bytes()
        return files

    before = snapshot()
    assert len(before) > 10
    run(f"dvc remote add --local -d store {tmp_path / 'store'} && dvc push", repo)
    for o in outs:
        p = repo / o
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    run("dvc pull", repo)
    assert snapshot() == before
    assert stages_to_run(repo) == set()


def test_queued_experiments_run_in_parallel_and_show_up(repo):
    """`dvc exp run --queue` twice, `dvc queue start --jobs 2`, results in `dvc exp show` (on the module's
    reproduced repo, its state so far committed as the baseline)."""
    import time

    run("dvc repro && git add -A && git commit -qm baseline --allow-empty", repo)
    run("dvc exp run --queue -n mlp-1ep -S archs.mlp.epochs=1", repo)
    run("dvc exp run --queue -n mlp-3ep -S archs.mlp.epochs=3", repo)
    # the workers are daemons that keep stdout open: do not wait on their pipes
    subprocess.run(
        "dvc queue start --jobs 2",
        shell=True,
        cwd=repo,
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run("dvc queue status", repo)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2, status
    shown = json.loads(run("dvc exp show --json", repo))
    exps = {e["name"]: e for base in shown for e in (base.get("experiments") or [])}  # under their baseline commit
    assert {"mlp-1ep", "mlp-3ep"} <= set(exps), [b["rev"] for b in shown]
    for name, epochs in (("mlp-1ep", 1), ("mlp-3ep", 3)):
        data = exps[name]["revs"][0]["data"]
        assert data["params"]["params.yaml"]["data"]["archs"]["mlp"]["epochs"] == epochs
        assert set(data["metrics"]) == {"summary.json"} and "mlp" in data["metrics"]["summary.json"]["data"]["models"]
    # the sweep's table: every finished experiment and the baseline, by validation accuracy, with what was swept
    out = run("python -m pipeline.commands.sweep --metric summary.json:models.mlp.valid", repo)
    rows = list(csv.DictReader((repo / "sweep" / "table.csv").open()))
    assert {r["experiment"] for r in rows} >= {"mlp-1ep", "mlp-3ep"} and "archs.mlp.epochs" in rows[0]
    accs = [float(r["summary.json:models.mlp.valid"]) for r in rows]
    assert accs == sorted(accs, reverse=True) and "swept: archs.mlp.epochs" in out
    assert (repo / "sweep" / "accuracy_vs_params.png").is_file()


def test_equal_compute_and_time_budget_benches_in_their_smallest_mode(repo, tmp_path):
    """bench.equal_compute trains the best member with the members' whole budget and compares it, paired, with the
    submission; the report shows it; bench.time_budget trains an entry to a budget and says how close it came."""
    from bench import equal_compute, time_budget
    from pipeline.artifacts import load_equal_compute
    from pipeline.inspect import verdicts as V
    from pipeline.records import EnsembleMetrics

    r = equal_compute.run(repo, tmp_path / "results", scale=0.5)
    ens = json.loads((repo / "ensemble/metrics.json").read_text())
    assert r["recipe"] == ens["best_member"] and r["ensemble_test"] == ens["test"]["accuracy"]
    assert r["budget_s"] == pytest.approx(
        0.5
        * sum(
            json.loads((repo / f"metrics/{n}.json").read_text())["train_s"] for n, w in ens["weights"].items() if w > 0
        ),
        abs=0.1,
    )
    c = r["comparison"]["test"]
    assert c["n"] == 100 and c["diff"] == pytest.approx(r["ensemble_test"] - r["single_test"])
    assert has_row((tmp_path / "results/equal_compute.md").read_text(), "test")
    (tmp_path / "bench/results").mkdir(parents=True)
    shutil.copy(tmp_path / "results/equal_compute.json", tmp_path / "bench/results/equal_compute.json")
    record = EnsembleMetrics.from_json(ens, strict=True)
    measured = load_equal_compute(tmp_path / "bench/results/equal_compute.json")
    words = V.markdown_equal_compute(record, measured)
    assert words.startswith(f"\nEqual compute (bench/results/equal_compute.json): {r['recipe']} trained")
    other = EnsembleMetrics.from_json({**ens, "test": {"accuracy": 0.0}})
    assert "another run" in V.markdown_equal_compute(other, measured)
    assert "not measured for this run" in V.markdown_equal_compute(record, None)

    t = time_budget.run(repo, tmp_path / "results", ["mlp"], budget=1.5)
    row = t["entries"]["mlp"]
    assert (
        row["asked_s"] == 1.5 and row["train_s"] > 0 and row["ratio"] == pytest.approx(row["train_s"] / 1.5, abs=1e-3)
    )
    assert has_row((tmp_path / "results/time_budget.md").read_text(), "mlp", "1.5")


def test_default_run_bench_reruns_every_stage_and_records_each(repo, tmp_path):
    """`python -m bench.default_run` in its smallest mode: the tiny repo's `dvc repro --force`, timed per stage."""
    from bench import default_run

    before = (repo / "preds/mlp/test.npy").read_bytes()
    default_run.main(["--root", str(repo), "--out", str(tmp_path)])
    r = json.loads((tmp_path / "default_run.json").read_text())
    assert set(r["stages"]) == {"prepare", "plan", "train@logreg", "train@mlp", "race", "ensemble", "report"}
    assert all(s["wall_s"] > 0 and s["peak_rss_mib"] > 10 for s in r["stages"].values())
    assert r["stages"]["train@mlp"]["valid_acc"] > 0.5 and has_row(
        (tmp_path / "default_run.md").read_text(), "train@mlp"
    )
    assert (repo / "preds/mlp/test.npy").read_bytes() == before  # a forced rerun reproduces the outputs
    run("git checkout -- . && git clean -fdq", repo)
