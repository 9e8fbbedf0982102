"""Imbalanced classes: balanced accuracy and macro-F1 against scikit-learn, `metric: auto`, the remedies (class
weights, balanced sampling, logit adjustment) and the ensemble stage judged by the run's metric."""

import json

import numpy as np
import pytest
import torch
from conftest import has_row, member_metrics, noisy, onehot, synth, write_run
from sklearn.metrics import balanced_accuracy_score, classification_report, f1_score

from ensembles import ensemble as E
from ensembles.calibrate import adjust_logits, fit_tau, log_prior
from ensembles.evaluate import per_class
from pipeline.artifacts import ensemble_model_file, metrics_file
from pipeline.errors import PipelineError
from pipeline.inspect import scores
from pipeline.params import make_spec, metric_param, resolve_remedies

HAND = [  # (labels, predictions, classes): a class never predicted, a predicted class with no rows, one row a class
    ([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 1], 3),
    ([0, 1, 2, 3], [0, 0, 0, 3], 4),
    ([0, 0, 0, 0, 1], [0, 0, 0, 0, 2], 3),
    ([1, 1, 2, 2, 2, 0], [1, 2, 2, 2, 0, 0], 3),
]


@pytest.mark.parametrize("y, pred, k", HAND)
def test_balanced_accuracy_and_macro_f1_equal_scikit_learns(y, pred, k):
    y, pred = np.array(y), np.array(pred)
    assert scores.balanced_accuracy(y, pred, k) == pytest.approx(balanced_accuracy_score(y, pred))
    assert scores.macro_f1(y, pred, k) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    rep = scores.class_report(y, pred, k)
    sk = classification_report(y, pred, labels=list(range(k)), output_dict=True, zero_division=0)
    for c in range(k):
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert rep[ours][c] == pytest.approx(sk[str(c)][theirs], abs=1e-6)
        assert rep["support"][c] == sk[str(c)]["support"]


def test_score_has_every_metric_with_intervals_around_it():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [300, 60, 10])
    p = noisy(y, 0.8, rng)[:, :3]
    p /= p.sum(1, keepdims=True)
    s = scores.score(p, y)
    pred = p.argmax(1)
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert s["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    for k in ("balanced", "macro_f1"):
        lo, hi = s[f"{k}_ci95"]
        value = s["balanced_accuracy" if k == "balanced" else k]
        assert lo <= value <= hi and hi - lo > 0.02  # 10 rows of class 2: a wide interval
    recalls = [balanced_accuracy_score(y[y == c], pred[y == c]) for c in range(3)]
    assert s["worst_recall"] == pytest.approx(min(recalls)) and s["worst_class"] == int(np.argmin(recalls))


def test_the_stratified_bootstrap_keeps_class_counts_and_matches_the_analytic_spread():
    """Balanced accuracy's resampled sd is the binomial one, sqrt(Σ r(1−r)/n_c) / K, when the classes are resampled
    within themselves."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], [2000, 50])
    pred = np.where(rng.random(len(y)) < np.where(y == 0, 0.9, 0.6), y, 1 - y)
    tp, col, support = scores.resampled_counts(y, [pred], 2, resamples=4000)
    assert support.tolist() == [2000, 50]
    ba = scores.metric_of_counts("balanced_accuracy", tp[0], col[0], support)
    r = scores.recalls(y, pred, 2)
    assert ba.std() == pytest.approx(np.sqrt((r * (1 - r) / support).sum()) / 2, rel=0.1)


def test_a_paired_comparison_in_balanced_accuracy():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], [500, 50, 20])
    a = onehot(np.where(rng.random(len(y)) < 0.85, y, 0), n=3)
    same = scores.compare(a, a, y, metric="balanced_accuracy")
    assert same["diff"] == 0 and same["p"] == 1.0 and not same["resolved"]
    majority = onehot(np.zeros_like(y), n=3)  # 88 % top-1, 1/3 balanced
    c = scores.compare(a, majority, y, metric="balanced_accuracy")
    assert c["metric"] == "balanced_accuracy" and c["resolved"] and c["ci95"][0] > 0.3
    assert c["diff"] == pytest.approx(balanced_accuracy_score(y, a.argmax(1)) - 1 / 3)


def test_auto_picks_accuracy_within_the_stated_ratio_else_balanced_accuracy():
    r = scores.BALANCED_RATIO
    assert scores.resolve_metric("auto", {"a": 100, "b": int(100 * r)})[0] == "accuracy"
    assert scores.resolve_metric("auto", {"a": 100, "b": int(100 * r) + 1})[0] == "balanced_accuracy"
    assert scores.resolve_metric("auto", {"a": 5400, "b": 5400})[0] == "accuracy"  # Fashion-MNIST's split
    assert scores.resolve_metric("auto", {"a": 1, "b": 0})[0] == "balanced_accuracy"
    metric, why = scores.resolve_metric("auto", {"a": 1500, "b": 25})
    assert metric == "balanced_accuracy" and "60:1" in why
    assert scores.resolve_metric("macro_f1", {"a": 10, "b": 10}) == ("macro_f1", "set in params.yaml (`metric`)")
    line = scores.imbalance_line({"a": 1500, "b": 25}, "balanced_accuracy")
    assert line == "classes range 1,500 → 25 training images (60:1): the benchmark's metric is balanced accuracy"


def test_remedy_params_errors_name_the_key():
    with pytest.raises(PipelineError, match=r"`metric` = 'top5'"):
        metric_param({"metric": "top5"})
    assert metric_param({}) == "auto"
    with pytest.raises(PipelineError, match=r"`archs.fast.loss_weights` = 'inverse'"):
        make_spec({"loss_weights": "inverse"}, "archs.fast")
    with pytest.raises(PipelineError, match=r"`archs.fast.sampler` = 'weighted'"):
        make_spec({"sampler": "weighted"}, "archs.fast")
    with pytest.raises(PipelineError, match=r"`ensemble.adjust` = 'prior'"):
        from ensembles.strategies import ensemble_params

        ensemble_params({"ensemble": {"adjust": "prior"}})


def test_logit_adjustment_with_tau_zero_is_the_identity_and_tau_one_removes_the_prior():
    rng = np.random.default_rng(3)
    P = rng.dirichlet(np.ones(4), 50)
    prior = log_prior([800, 100, 50, 50])
    assert adjust_logits(P, prior, 0.0) is P
    Q = adjust_logits(P, prior, 1.0)
    expect = P / np.exp(prior)
    np.testing.assert_allclose(Q, expect / expect.sum(1, keepdims=True))


def test_tau_is_chosen_on_validation_by_the_metric():
    """A model that learnt the 9:1 prior on top of weak evidence: τ near 1 undoes it, and balanced accuracy finds
    it; accuracy (which the prior serves) keeps τ = 0."""
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], [900, 100])
    evidence = np.clip(np.where(y[:, None] == np.arange(2), 0.55, 0.45) + rng.normal(0, 0.15, (len(y), 2)), 0.01, 1)
    prior = log_prior([900, 100])
    P = np.exp(np.log(evidence) + prior)
    P /= P.sum(1, keepdims=True)
    assert fit_tau(P, y, prior, "balanced_accuracy") >= 0.75
    assert fit_tau(P, y, prior, "accuracy") == 0.0


def test_sampler_auto_follows_the_class_counts_not_the_metric(capsys):
    """Balanced classes never draw with replacement, whatever `metric` (macro-F1 on balanced data left a third of
    the rows unseen each epoch); imbalanced ones do, unless loss weights correct them; both set is warned."""
    spec = make_spec({})
    assert resolve_remedies(spec, {"a": 50, "b": 48}).sampler == "shuffle"
    assert resolve_remedies(spec, {"a": 400, "b": 10}).sampler == "balanced"
    assert resolve_remedies(spec, {"a": 10, "b": 0}).sampler == "balanced"
    assert resolve_remedies(spec, {}).sampler == "shuffle"  # no counts (an older prepare)
    assert capsys.readouterr().err == ""
    both = make_spec({"sampler": "balanced", "loss_weights": "balanced"})
    assert resolve_remedies(both, {"a": 400, "b": 10}).sampler == "balanced"  # as asked, but said
    assert "corrects the class prior twice" in capsys.readouterr().err


def test_adjust_auto_counts_models_with_one_remedy_as_prior_free():
    from ensembles.candidates import Candidates, balanced

    def cands(**info):
        return Candidates(list(info), None, None, info={k: member_metrics(**v) for k, v in info.items()}, oof={})

    assert balanced(cands(a={"sampler": "balanced", "loss_weights": "none"}))
    assert balanced(cands(a={"sampler": "shuffle", "loss_weights": "balanced"}))  # weighted: prior-free too
    assert not balanced(cands(a={"sampler": "balanced", "loss_weights": "balanced"}))  # over-corrected
    assert not balanced(cands(a={"sampler": "shuffle", "loss_weights": "none"}))
    assert not balanced(cands(a={"sampler": "balanced"}, b={"sampler": "shuffle"}))


def test_balanced_class_weights_and_sampler():
    from pipeline.learn.recipe import build_learner

    arrays, meta = synth(n=60, k=3)
    arrays["train_y"] = np.repeat([0, 1, 2], [40, 15, 5])
    meta.counts_per_class = {"train": {"c0": 40, "c1": 15, "c2": 5}}
    counts = meta.counts_per_class["train"]
    spec = make_spec({"epochs": 1, "bs": 10, "lr": 0.01, "arch": "logreg"})
    assert spec.sampler == "auto" and resolve_remedies(spec, counts).sampler == "balanced"  # 8:1
    learn, setup = build_learner("logreg", spec, arrays, meta, 0, torch.device("cpu"))
    assert setup.sampler == "balanced"  # what metrics/<key>.json records, and the ensemble's adjust: auto reads
    assert learn.loss_func.func.weight is None
    drawn = np.concatenate([learn.dls.train.get_idxs() for _ in range(50)])
    shares = np.bincount(arrays["train_y"][drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(shares, 1 / 3, atol=0.05)  # sampler auto on 8:1 data; shuffled, class 2 is 1/12
    # loss_weights corrects the prior already: `auto` draws shuffled, one correction, not two
    weighted = make_spec({"epochs": 1, "bs": 10, "lr": 0.01, "arch": "logreg", "loss_weights": "balanced"})
    assert resolve_remedies(weighted, counts).sampler == "shuffle"
    learn, setup = build_learner("logreg", weighted, arrays, meta, 0, torch.device("cpu"))
    assert setup.sampler == "shuffle"
    np.testing.assert_allclose(learn.loss_func.func.weight.numpy(), 60 / (3 * np.array([40, 15, 5])), rtol=1e-6)
    off = make_spec({"epochs": 1, "bs": 10, "lr": 0.01, "arch": "logreg", "sampler": "shuffle"})
    learn, setup = build_learner("logreg", off, arrays, meta, 0, torch.device("cpu"))
    assert learn.loss_func.func.weight is None and setup.sampler == "shuffle"
    drawn = np.concatenate([learn.dls.train.get_idxs() for _ in range(5)])
    assert sorted(drawn[:60]) == list(range(60))  # a plain shuffle: each row once an epoch


# ------------------------------------------------------------------------------------------------ the stage
@pytest.fixture
def skewed(tmp_path):
    """Three models on 4 classes trained 1000:10, validated and tested on imbalanced and balanced rows."""
    rng = np.random.default_rng(5)
    vy = np.repeat(np.arange(4), [200, 100, 20, 10])
    ty = np.repeat(np.arange(4), 60)
    prior = np.log(np.array([1000, 300, 40, 10]) / 1350)

    def biased(y, acc):
        p = noisy(y, acc, rng)
        p = p * np.exp(prior)
        return p / p.sum(1, keepdims=True)

    models = {
        "resnet34": ("resnet34", "timm", biased(vy, 0.9), biased(ty, 0.9)),
        "cnn4": ("cnn4", "local", biased(vy, 0.85), biased(ty, 0.85)),
        "vgg19_bn": ("torchvision.vgg19_bn", "torchvision", biased(vy, 0.8), biased(ty, 0.8)),
    }
    return tmp_path, models, vy, ty


def with_counts(root, counts):
    f = root / "data" / "prepared" / "meta.json"
    meta = json.loads(f.read_text())
    meta["counts_per_class"] = {"train": dict(zip(meta["classes"], counts))}
    f.write_text(json.dumps(meta))


def served_by_predict(root, models, members):
    """What pipeline.learn.trained.Ensemble (pipeline.commands.predict) returns on the test rows, each member replaced by a stub
    that returns its test predictions: the blend, its temperatures and the logit adjustment of ensemble/model.json."""
    from types import SimpleNamespace

    from pipeline.artifacts import load_ensemble_model
    from pipeline.learn.trained import Ensemble

    ens = Ensemble.__new__(Ensemble)
    ens.spec = load_ensemble_model(ensemble_model_file(root))
    ens.classes = ens.spec.classes
    ens.members = [SimpleNamespace(name=n, predict_arrays=lambda x, bs, p=models[n][3]: p) for n in members]
    return ens.predict_arrays(np.zeros((1, 8, 8, 1), np.uint8))


def test_the_stage_is_judged_by_balanced_accuracy_and_adjusts_logits(skewed):
    root, models, vy, ty = skewed
    params = write_run(root, models, vy, ty) | {"ensemble": {"select": "threshold", "threshold": 0.0}}
    with_counts(root, [1000, 300, 40, 10])
    for n in models:  # members trained with balanced sampling learnt no prior to take off: no adjustment
        f = metrics_file(root, n)
        f.write_text(json.dumps(json.loads(f.read_text()) | {"sampler": "balanced"}))
    assert E.run(params, root).tau is None
    write_run(root / "shuffled", models, vy, ty)  # members that learnt the training prior (sampler: shuffle)
    root = root / "shuffled"
    with_counts(root, [1000, 300, 40, 10])
    m = E.run(params, root)
    assert m.metric == "balanced_accuracy" and "imbalanced" in m.metric_why
    bal = {n: m.models[n].valid.balanced_accuracy for n in m.members}
    np.testing.assert_allclose(list(m.weights.values()), np.array(list(bal.values())) / sum(bal.values()), atol=1e-6)
    assert m.tau and m.tau > 0
    model = json.loads((ensemble_model_file(root)).read_text())
    assert model["tau"] == m.tau and len(model["log_prior"]) == 4
    served = served_by_predict(root, models, m.members)
    np.testing.assert_allclose(served, np.load(root / "ensemble" / "preds" / "test.npy"), atol=1e-6)
    off = E.run(params | {"ensemble": {"select": "threshold", "threshold": 0.0, "adjust": "none"}}, root)
    assert m.test.balanced_accuracy > off.test.balanced_accuracy
    c = m.comparison(m.best_member)
    assert c.test.metric == "balanced_accuracy"
    assert m.per_class.test.ensemble_report["support"] == [60] * 4


def test_shuffled_test_labels_change_no_tau_weight_or_member(skewed, tmp_path_factory):
    root, models, vy, ty = skewed
    cfg = {"ensemble": {"select": "margin", "method": "best"}}
    a_params = write_run(root, models, vy, ty) | cfg
    with_counts(root, [1000, 300, 40, 10])
    a = E.run(a_params, root)
    other = tmp_path_factory.mktemp("shuffled")
    b_params = write_run(other, models, vy, np.random.default_rng(9).permutation(ty)) | cfg
    with_counts(other, [1000, 300, 40, 10])
    b = E.run(b_params, other)
    assert a.test != b.test
    assert a.tau and (a.tau, a.members, a.weights, a.chosen) == (b.tau, b.members, b.weights, b.chosen)
    for k in a.strategies:
        assert a.strategies[k].tau == b.strategies[k].tau and a.strategies[k].weights == b.strategies[k].weights


def test_balanced_data_keeps_accuracy_and_no_adjustment(skewed):
    root, models, vy, ty = skewed
    params = write_run(root, models, vy, ty) | {"ensemble": {"select": "threshold", "threshold": 0.0}}
    with_counts(root, [500, 500, 500, 480])
    m = E.run(params, root)
    assert m.metric == "accuracy" and m.tau is None
    accs = [m.models[n].valid.accuracy for n in m.members]
    np.testing.assert_allclose(list(m.weights.values()), np.array(accs) / sum(accs), atol=1e-6)


def test_the_report_orders_by_the_run_s_metric_and_names_classes_never_predicted(skewed):
    from pipeline.artifacts import load_member_metrics
    from pipeline.inspect import leaderboard as LB
    from pipeline.inspect import verdicts as V

    root, models, vy, ty = skewed
    # a fourth model that never predicts the two small classes
    major = np.where(np.isin(vy, [0, 1]), vy, 0), np.where(np.isin(ty, [0, 1]), ty, 0)
    models["lazy"] = ("cnn4", "local", onehot(major[0], n=4), onehot(major[1], n=4))
    params = write_run(root, models, vy, ty) | {"ensemble": {"select": "threshold", "threshold": 0.0}}
    with_counts(root, [1000, 300, 40, 10])
    ens = E.run(params, root)
    metrics = {n: load_member_metrics(metrics_file(root, n), n) for n in models}
    rows = [r for r in LB.leaderboard(metrics, ens) if not r["model"].startswith("ensemble")]
    bal = [r["bal_acc"] for r in rows]
    assert bal == sorted(bal, reverse=True)  # by balanced accuracy, not by top-1
    by = {r["model"]: r for r in rows}
    assert by["lazy"]["worst_recall"] == 0 and by["lazy"]["bal_acc"] == 50
    assert LB.metric_line(ens).startswith("Metric: **balanced accuracy** (auto: the training classes are imbalanced")
    classes = [f"class{i}" for i in range(4)]
    md = V.markdown_class_report(ens, classes)
    assert has_row(md, "class", "rows", "submission P / R / F1") and "Per class on test" in md
    lazy = per_class(models["lazy"][3], models["lazy"][3], ty, 4)
    assert lazy.ensemble_report["recall"][2:] == [0.0, 0.0]


def test_the_compare_command_judges_by_the_run_s_metric(skewed, monkeypatch, capsys):
    from pipeline.commands import compare as K

    root, models, vy, ty = skewed
    write_run(root, models, vy, ty)
    with_counts(root, [1000, 300, 40, 10])
    monkeypatch.chdir(root)
    assert K.run_metric("auto", root) == "balanced_accuracy"  # no params.yaml: `metric: auto` on 100:1 classes
    assert K.main(["resnet34", "cnn4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("valid (330 rows), balanced accuracy: resnet34") and "class-stratified" in out
    res = K.run("resnet34", "cnn4", root, metric="balanced_accuracy")
    r = res["test"]
    assert r["a_vs_b"]["metric"] == "balanced_accuracy"
    assert r["a_vs_b"]["diff"] == pytest.approx(r["resnet34"]["balanced_accuracy"] - r["cnn4"]["balanced_accuracy"])


@pytest.mark.parametrize("calibrate", ["none", "temperature"])
def test_a_rows_scored_probabilities_never_depend_on_its_own_label(calibrate):
    """τ and the blend's temperature are fitted inside the cross-fitting: flipping one validation row's label
    changes nothing about how that row is scored. (Fitted on every row and scored there, one knife-edge row's
    label moved τ from 0 to 0.25 and flipped its own prediction: adjusted strategies won in-sample.) The test
    probabilities still come from τ and the temperature fitted on every validation row."""
    from ensembles.strategies import EnsembleParams, run_strategies

    prior = log_prior([900, 100])
    z = np.r_[np.full(10, -5.0), np.full(10, 5.0), -0.3]
    p1 = 1 / (1 + np.exp(-z))
    P = np.c_[1 - p1, p1][None]
    scored, records = {}, {}
    for label in (0, 1):
        y = np.r_[np.zeros(10), np.ones(10), label].astype(np.int64)
        cfg = EnsembleParams(
            strategies=["uniform"], metric="balanced_accuracy", log_prior=prior, calibrate=calibrate, folds=5
        )
        out = run_strategies(P, y, P, y, ["m"], cfg, 0)["uniform"]
        scored[label], records[label] = out.valid_probs[-1], out.record
        assert "cross-fitted" in out.record.valid_scored and "τ" in out.record.valid_scored
    np.testing.assert_allclose(scored[0], scored[1])
    assert records[0].tau != records[1].tau  # the final fit does use every row, as test predictions should
