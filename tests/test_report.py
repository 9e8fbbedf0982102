"""The report stage: timm-shaped leaderboard and the figures, from hand-made stage outputs."""

import csv
import json
import re

import numpy as np
import pytest
from conftest import C, has_row, member_metrics, noisy, write_run
from safetensors.torch import save_file

from ensembles import ensemble as E
from ensembles import weights as W
from ensembles.strategies import NAMES as STRATEGIES
from pipeline import report as R
from pipeline.artifacts import load_metrics_of, metrics_file
from pipeline.errors import PipelineError
from pipeline.inspect import figures as FIG
from pipeline.inspect import interpret as I
from pipeline.inspect import leaderboard as LB
from pipeline.inspect import verdicts as V
from pipeline.inspect.scores import verdict
from pipeline.learn import archs
from pipeline.records import Comparison, EnsembleMetrics


def test_report_leaderboard_and_figures(tmp_path):
    rng = np.random.default_rng(0)
    vy, ty = rng.integers(0, C, 200), rng.integers(0, C, 100)
    models = {
        "resnet34": ("resnet34", "timm", noisy(vy, 0.9, rng), noisy(ty, 0.9, rng)),
        "cnn4": ("cnn4", "local", noisy(vy, 0.7, rng), noisy(ty, 0.7, rng)),
    }
    params = write_run(tmp_path, models, vy, ty) | {"ensemble": {"select": "threshold", "threshold": 0.0}}
    prep = tmp_path / "data" / "prepared"
    np.save(prep / "test_x.npy", rng.integers(0, 256, (100, 8, 8, 1), dtype=np.uint8))
    np.save(prep / "valid_x.npy", rng.integers(0, 256, (200, 8, 8, 1), dtype=np.uint8))
    for i, n in enumerate(models):
        m = json.loads((metrics_file(tmp_path, n)).read_text())
        m |= {
            "valid": {"accuracy": W.accuracy(models[n][2], vy)},
            "test": {"accuracy": W.accuracy(models[n][3], ty)},
            "param_count": 1_000_000 * (i + 1),
            "train_s": 10.0 * (i + 1),
            "img_per_s": 100.0,
            "lr": 1e-3,
            "lr_found": True,
        }
        (metrics_file(tmp_path, n)).write_text(json.dumps(m))
    live = tmp_path / "dvclive" / "cnn4" / "plots"
    (live / "custom").mkdir(parents=True)
    (live / "custom" / "lr_find.json").write_text(json.dumps([{"lr": 1e-5, "loss": 2.0}, {"lr": 1e-2, "loss": 1.0}]))
    (live / "metrics" / "train").mkdir(parents=True)
    (live / "metrics" / "train" / "loss.tsv").write_text("step\tloss\n0\t1.0\n1\t0.5\n")
    ens = E.run(params, tmp_path)
    # the best model by validation (resnet34 here) as a small untrained CNN: for Grad-CAM and the feature maps
    net, _ = archs.build_model(archs.resolve("cnn_small"), 1, C, 8)
    (tmp_path / "models" / "resnet34").mkdir(parents=True)
    save_file(net.state_dict(), str(tmp_path / "models" / "resnet34" / "model.safetensors"))
    spec = {"key": "resnet34", "arch": "cnn_small", "n_in": 1, "n_out": C, "size": 8, "native_size": 8, "ps": 0.5}
    spec |= {"mean": [0.5], "std": [0.25], "classes": [f"class{i}" for i in range(C)], "model_kwargs": {}}
    spec |= {"tta": False, "channels_last": True, "precision": "fp32", "train": {}}
    (tmp_path / "models" / "resnet34" / "spec.json").write_text(json.dumps(spec))

    rows = R.run(params, tmp_path)
    on_disk = list(csv.DictReader((tmp_path / "reports" / "leaderboard.csv").open()))
    assert list(on_disk[0]) == LB.COLUMNS and len(on_disk) == len(models) + len(STRATEGIES)
    tops = [float(r["top1"]) for r in on_disk]
    assert tops == sorted(tops, reverse=True)
    assert [r["model"] for r in on_disk].count("ensemble:accuracy*") == 1
    by = {r["model"]: r for r in rows}
    # 100 test rows: an interval of ±6 points, so top-1 is a whole number
    assert by["resnet34"]["top1"] == round(100 * ens.models["resnet34"].test.accuracy)
    assert isinstance(by["resnet34"]["top1"], int) and by["resnet34"]["top1"] + by["resnet34"]["top1_err"] == 100
    assert by["resnet34"]["param_count"] == 1.0 and by["resnet34"]["weight"] == round(ens.weights["resnet34"], 4)
    assert by["ensemble:accuracy*"]["train_s"] == 30.0 and by["ensemble:accuracy*"]["param_count"] == 3.0
    md = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert has_row(md, "model", "top1", "top1_ci95", "top1_err") and "Scores on the test split" in md
    # each accuracy carries its 95 % Wilson interval over the split's 100 rows
    lo, hi = (float(v) for v in on_disk[0]["top1_ci95"].split("–"))
    assert lo < float(on_disk[0]["top1"]) < hi and 5 < hi - lo < 25
    # the submission against each member, paired, in words; the verdict on its best member
    best = ens.comparison("resnet34")
    assert has_row(md, "resnet34 (best member, best by validation)", f"{verdict(best.valid)}", f"{verdict(best.test)}")
    assert "\nVerdict: " in md and "McNemar's exact p" in md
    assert "Leave one out: ensemble:accuracy refitted without each member" in md
    assert has_row(md, "without", "valid", "test") and has_row(md.split("Leave one out")[1], "cnn4")
    pc = ens.per_class.test
    if sum(pc.fixes) + sum(pc.breaks):  # the fixes/breaks table where some row changed, else left out
        assert "Per class on test, the submission against its best member (resnet34)" in md
        assert has_row(md, "all", "100", "", "", f"{sum(pc.fixes)}", f"{sum(pc.breaks)}")
    else:
        assert "Per class on test, the submission against" not in md
    assert "Equal compute: not measured for this run; `python -m bench.equal_compute`" in md
    figs = {p.name for p in (tmp_path / "reports" / "figures").iterdir()}
    assert figs == {
        "confusion_matrix.png",
        "top_losses.png",
        "predictions.png",
        "lr_find.png",
        "training_curves.png",
        "accuracy_vs_time.png",
        "accuracy_vs_members.png",
        "reliability.png",
        "gradcam.png",
        "feature_maps.png",
    }
    for f in figs:
        assert (tmp_path / "reports" / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one self-contained page: the verdict first, every figure embedded, nothing fetched from anywhere
    page = (tmp_path / "reports" / "index.html").read_text()
    assert page.index("Submitted ensemble:") < page.index("<h2>Leaderboard</h2>") < page.index("<h2>Figures</h2>")
    assert page.count('src="data:image/png;base64,') == len(figs)
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", page)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # the payloads, which may spell anything
    assert all(u.startswith(("data:", "#")) for u in links) and "http" not in text and "url(" not in text
    assert "Every column (also reports/leaderboard.csv)" in page and "resnet34 (best member" in page
    # the stage's log: a short summary, not the report
    log = (tmp_path / "reports" / "summary.txt").read_text()
    assert len(log.splitlines()) <= 25 and log.startswith("Submitted ensemble:") and "index.html" in log


def test_unlabelled_test_ranks_by_validation():
    models = {
        "a": member_metrics(valid={"accuracy": 0.8}, param_count=10**6, train_s=1.0, img_per_s=5.0),
        "b": member_metrics(valid={"accuracy": 0.9}, param_count=2 * 10**6, train_s=2.0, img_per_s=5.0),
    }
    model = {"family": "scratch", "group": "g", "valid": {"accuracy": 0.8}, "weight": 0.5}
    ens = {
        "method": "uniform",
        "chosen": "uniform",
        "members": ["a", "b"],
        "weights": {"a": 0.5, "b": 0.5},
        "valid": {"accuracy": 0.85},
        "best_model": "b",
        "gain": {"valid": -0.05},
        "models": {"a": model, "b": model | {"valid": {"accuracy": 0.9}}},
        "strategies": {
            "uniform": {"members": ["a", "b"], "weights": {"a": 0.5, "b": 0.5}, "valid": {"accuracy": 0.85}}
        },
    }
    rows = LB.leaderboard(models, EnsembleMetrics.from_json(ens, strict=True))
    assert [r["model"] for r in rows] == ["b", "ensemble:uniform*", "a"] and rows[0]["top1"] == 90.0


def test_groups_report_mean_and_std_of_an_entry_and_its_variants():
    models = {
        n: member_metrics(valid={"accuracy": a}, test={"accuracy": a - 0.01})
        for n, a in [("f", 0.9), ("f2", 0.92), ("m", 0.5)]
    }
    rows = I.groups(models, {"f": "f", "f2": "f", "m": "m"}, labeled=True)
    assert rows == [{"group": "f", "models": 2, "valid": (91.0, 1.414), "test": (90.0, 1.414)}]
    assert has_row(LB.markdown_groups(rows, labeled=True), "f", "2", "91.00 ± 1.41", "90.00 ± 1.41")
    assert "Not told apart" not in LB.markdown_groups(rows, labeled=True)


def test_entries_closer_than_their_spread_are_marked():
    rows = [
        {"group": "f", "models": 3, "valid": (91.0, 1.0), "test": (90.0, 1.0)},
        {"group": "g", "models": 3, "valid": (90.0, 0.2), "test": (89.5, 0.2)},  # 0.5 apart, spread 1.0
        {"group": "h", "models": 3, "valid": (80.0, 0.5), "test": (79.0, 0.5)},
    ]
    assert I.spread_ties(rows, "test") == [("f", "g")]
    assert "Not told apart by their spread (test means differ by less than the larger std): f and g." in (
        LB.markdown_groups(rows, labeled=True)
    )


def exp(name, lr, bs, acc, metric="accuracy"):
    """One experiment as `dvc exp show --json` lists it: its summary.json, scores in the run's metric."""
    summary = {"metric": metric, "submission": {"valid": {"score": acc}, "test": {"score": acc - 0.01}}}
    data = {
        "params": {"params.yaml": {"data": {"seed": 0, "archs": {"fast": {"lr": lr, "bs": bs}}}}},
        "metrics": {"summary.json": {"data": summary}},
    }
    return {"name": name, "revs": [{"rev": "abc1234", "data": data, "error": None}]}


def test_sweep_table_sorts_by_validation_and_keeps_the_swept_params(tmp_path):
    from pipeline.commands import sweep

    base = exp("x", 0.005, 128, 0.90)["revs"][0]
    shown = [
        {"rev": "workspace", "data": base["data"], "experiments": None},
        {
            "rev": "f" * 40,
            "name": "main",
            "data": base["data"],
            "experiments": [exp("a", 0.002, 64, 0.91), exp("b", 0.01, 128, 0.93), {"name": "queued", "revs": [{}]}],
        },
    ]
    rows = sweep.run(shown, sweep.METRIC, tmp_path / "sweep")
    assert [r["experiment"] for r in rows] == ["b", "a", "baseline main"]  # workspace and unfinished left out
    assert set(rows[0]) == {
        "experiment",
        sweep.METRIC,
        "summary.json:submission.test.score",
        "archs.fast.lr",
        "archs.fast.bs",
    }
    assert rows[0]["archs.fast.lr"] == 0.01 and rows[1]["archs.fast.bs"] == 64
    md = (tmp_path / "sweep" / "table.md").read_text()
    assert (
        has_row(md, "b", "93.00", "92.00", "128", "0.01") and "swept: archs.fast.bs, archs.fast.lr" in md
    )  # lr as written
    assert (tmp_path / "sweep" / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(PipelineError, match=r"--metric 'metrics/x.json:valid.accuracy' is in no experiment"):
        sweep.run(shown, "metrics/x.json:valid.accuracy", tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_sweep_sorts_by_the_runs_metric_not_top1(tmp_path):
    """By default the runs are ranked by their submission's validation score in their own metric (summary.json:
    balanced accuracy on an imbalanced data set); runs judged by different metrics need --metric."""
    from pipeline.commands import sweep

    runs = [exp("low", 0.01, 128, 0.70, "balanced_accuracy"), exp("high", 0.002, 128, 0.85, "balanced_accuracy")]
    base = exp("base", 0.001, 128, 0.50, "balanced_accuracy")["revs"][0]["data"]
    shown = [{"rev": "f" * 40, "name": "main", "data": base, "experiments": runs}]
    rows = sweep.run(shown, None, tmp_path / "sweep")
    assert [r["experiment"] for r in rows] == ["high", "low", "baseline main"]
    assert list(rows[0])[1:3] == [sweep.METRIC, "summary.json:submission.test.score"]
    assert f"sorted by `{sweep.METRIC}`" in (tmp_path / "sweep" / "table.md").read_text()
    shown[0]["experiments"] = [*runs, exp("top1-run", 0.005, 128, 0.93)]
    with pytest.raises(PipelineError, match=r"judged by different metrics \(accuracy, balanced_accuracy\)"):
        sweep.run(shown, None, tmp_path / "mixed")
    assert [r["experiment"] for r in sweep.run(shown, sweep.METRIC, tmp_path / "any")][0] == "top1-run"


def test_verdict_words_say_what_the_test_split_resolves():
    def c(b, diff, p):
        paired = {"diff": diff, "ci95": [diff - 0.003, diff + 0.003], "p": p, "a_only": 0, "b_only": 0, "n": 1}
        paired["resolved"] = p < 0.05
        return Comparison.from_json({"a": "ensemble", "b": b, "valid": paired, "test": paired}, strict=True)

    best, other = c("f32", 0.008, 1e-5), c("f", 0.001, 0.5)
    assert (
        V.verdict_words(best, [best]) == "the submission beats each of its 1 members on test, each difference resolved."
    )
    w = V.verdict_words(best, [best, other])
    assert "resolved, but not every member: against f, +0.10 [-0.20, +0.40] points, p = 0.5: not resolved" in w
    assert "does not tell the submission from its best member by validation (f)" in V.verdict_words(other, [other])
    assert "worse than its best member" in V.verdict_words(c("f", -0.01, 1e-4), [])


def test_accuracy_vs_time_merges_equal_points_and_keeps_labels_apart():
    """Strategies that blend the same members to the same score are one point with every name; label heights of
    nearby points are pushed apart to at least the gap, never below their point."""
    rows = [
        {"model": "ensemble:accuracy*", "top1": 93.5, "train_s": 700.0},
        {"model": "ensemble:uniform", "top1": 93.5, "train_s": 700.0},
        {"model": "fast", "top1": 93.4, "train_s": 224.0},
        {"model": "old", "top1": "", "train_s": 1.0},  # metrics that predate the metric: no point
    ]
    points = FIG.point_groups(rows, "accuracy")
    assert points == [(700.0, 93.5, ["ensemble:accuracy*", "ensemble:uniform"]), (224.0, 93.4, ["fast"])]
    ys = [80.0, 80.05, 80.1, 95.0]
    h = FIG.spread_labels(ys, gap=1.0)
    assert all(a >= y for a, y in zip(h, ys)) and h[3] == 95.0
    assert min(abs(a - b) for i, a in enumerate(h) for b in h[i + 1 :]) >= 1.0 - 1e-9


def test_reliability_diagram_marks_the_bins_of_few_rows(tmp_path):
    """Every row lies in one drawn bin; a bin is hollow exactly when it holds fewer than `few` rows."""
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, 300)
    p = rng.dirichlet(np.full(C, 0.3), 300)  # confidences spread over the bins
    most = max(n for _, _, n, _ in FIG.reliability_points(p, y))
    pts = FIG.reliability_points(p, y, few=most)
    assert sum(n for _, _, n, _ in pts) == 300 and all(thin == (n < most) for _, _, n, thin in pts)
    assert len(pts) > 1 and [thin for *_, thin in pts].count(False) >= 1 and any(thin for *_, thin in pts)
    FIG.fig_reliability(tmp_path / "r.png", y, {"m": p}, "test")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_confusion_at_200_classes_is_a_heatmap_with_a_pairs_table(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")

    rng = np.random.default_rng(0)
    y = rng.integers(0, 200, 3000)
    p = np.full((3000, 200), 1e-3)
    pred = np.where(rng.random(3000) < 0.7, y, (y + 1) % 200)
    p[np.arange(3000), pred] = 1
    classes = [f"c{i}" for i in range(200)]
    texts = []
    import matplotlib.axes

    real_text = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, *a, **k: texts.append(a) or real_text(self, *a, **k))
    FIG.fig_confusion(tmp_path / "cm.png", y, {"m": p}, classes, "test")
    assert (tmp_path / "cm.png").stat().st_size > 10_000 and len(texts) == 0  # no number in 40 000 cells
    pairs = I.confused_pairs(y, p, classes, k=5)
    assert len(pairs) == 5 and all(r["predicted"] == classes[(classes.index(r["true"]) + 1) % 200] for r in pairs)
    assert has_row(V.markdown_confused(pairs, "m", "test"), "true", "predicted")
    FIG.fig_confusion(tmp_path / "cm10.png", y % 10, {"m": p[:, :10]}, classes[:10], "test")
    assert len(texts) == 100  # at 10 classes every cell has its count


def test_the_report_says_where_and_in_which_precision_each_model_trained():
    from pipeline.inspect.leaderboard import hardware_line

    same = {"a": member_metrics(), "b": member_metrics()}
    assert hardware_line(same) == "Every model trained on cpu, fp32.\n\n"
    mixed = {
        "fast": member_metrics(precision="bf16", average={"kind": "ema", "updates": 10, "decay": 0.999}),
        "fast@e3": member_metrics(precision="bf16", snapshot_of="fast", snapshot_epoch=3),
        "mlp": member_metrics(),
    }
    assert hardware_line(mixed) == "Trained on cpu, bf16, EMA weights: fast; cpu, fp32: mlp.\n\n"


def test_a_one_model_submission_is_said_in_one_line_and_same_blends_share_a_row(tmp_path):
    """Margin selection keeps one model: the verdict is one line (no +0.00 comparison with itself, no all-zero
    fixes/breaks table, one set of per-class columns), and the strategies that all gave that model the whole
    weight share one leaderboard row."""
    from pipeline.inspect.page import headline

    rng = np.random.default_rng(3)
    vy, ty = rng.integers(0, C, 400), rng.integers(0, C, 300)
    models = {
        "good": ("resnet34", "timm", noisy(vy, 0.95, rng), noisy(ty, 0.95, rng)),
        "weak": ("cnn4", "local", noisy(vy, 0.5, rng), noisy(ty, 0.5, rng)),
    }
    ens = E.run(write_run(tmp_path, models, vy, ty), tmp_path)
    assert [n for n, w in ens.weights.items() if w > 0] == ["good"]
    words = V.gain_line(ens)
    assert words.strip().startswith("The ensemble chose one model, good:") and "+0.00" not in words
    assert V.markdown_per_class(ens, [f"c{i}" for i in range(C)]) == ""
    report = V.markdown_class_report(ens, [f"c{i}" for i in range(C)])
    assert "submission P / R / F1" in report and "good P / R / F1" not in report
    same = LB.same_strategies(ens)
    (group,) = [kinds for kinds in same if ens.chosen in kinds]
    assert group[0] == ens.chosen and {"accuracy", "uniform"} <= set(group)  # the chosen first in its row
    rows = LB.leaderboard(load_metrics_of(tmp_path, list(models)), ens)
    ensemble_rows = [r["model"] for r in rows if r["model"].startswith("ensemble:")]
    assert len(ensemble_rows) == len(same) < len(ens.strategies)
    assert f"ensemble:{ens.chosen}* = " in " ".join(ensemble_rows)
    assert headline(ens).startswith("Submitted one model, good")


def test_the_leaderboard_says_the_budget_it_compares_at():
    """One budget where every run is within 10 % of the others' seconds and images; else the range, named."""
    same = {
        "a": member_metrics(train_s=100.0, images_seen=50_000),
        "b": member_metrics(train_s=105.0, images_seen=52_000),
    }
    assert LB.budget_line(same).startswith("Every model trained at one budget: about 105 s and 52,000 images")
    apart = {**same, "vgg": member_metrics(train_s=45.3, images_seen=1_472)}
    line = LB.budget_line(apart)
    assert "different budgets: 45.3 s (vgg) to 105.0 s (b)" in line and "1,472 (vgg) to 52,000 (b)" in line
    assert LB.budget_line({"a": same["a"]}) == ""
