"""The ensembler on hand-made probabilities: selection, each strategy's arithmetic, submissions, the test split."""

import csv
import json

import numpy as np
import pytest
from conftest import C, noisy, onehot, write_run

from ensembles import ensemble as E
from ensembles import select as S
from ensembles import weights as W
from ensembles.submission import submission_rows
from pipeline.artifacts import ensemble_metrics_file, ensemble_model_file
from pipeline.errors import PipelineError


# ------------------------------------------------------------------------------------------------ selection
@pytest.mark.parametrize(
    "arch,source,fam",
    [
        ("vgg19_bn", "timm", "VGG"),
        ("torchvision.vgg19_bn", "torchvision", "VGG"),
        ("resnet34", "timm", "ResNet"),
        ("torchvision.resnet34", "torchvision", "ResNet"),
        ("densenet121", "timm", "DenseNet"),
        ("efficientnet_b0", "timm", "EfficientNet"),
        ("tf_efficientnet_lite0", "timm", "EfficientNet"),
        ("resnet9", "local", "scratch"),
        ("cnn4", "local", "scratch"),
        ("convit_tiny", "timm", "convit"),
    ],
)
def test_family(arch, source, fam):
    assert S.family(arch, source) == fam


FAM = {"a": "ResNet", "b": "ResNet", "c": "VGG", "d": "scratch", "e": "scratch"}
ACC = {"a": 0.90, "b": 0.80, "c": 0.50, "d": 0.95, "e": 0.70}


def test_threshold_selects_at_or_above_in_accuracy_order():
    assert S.select(ACC, FAM, 0.9, per_family=False) == ["d", "a"]
    assert S.select(ACC, FAM, 0.0, per_family=False) == ["d", "a", "b", "e", "c"]


def test_per_family_adds_the_best_of_each_family_only():
    assert S.select(ACC, FAM, 0.9, per_family=True) == ["d", "a", "c"]  # VGG's only model joins; b and e do not


def test_margin_keeps_only_the_models_near_the_best_whatever_their_family():
    assert S.select(ACC, FAM, 0.0, per_family=True, rule="margin", margin=0.05) == ["d", "a"]
    assert S.select(ACC, FAM, 0.0, per_family=True, rule="margin", margin=0.0) == ["d"]
    assert S.select(ACC, FAM, 0.0, per_family=True, rule="margin", margin=1.0) == ["d", "a", "b", "e", "c"]


@pytest.mark.bad_input
def test_nothing_selected_warns_and_takes_the_best_or_fails():
    with pytest.warns(UserWarning, match=r"no model reaches .* 0.99 .*using d alone"):
        assert S.select(ACC, FAM, 0.99, per_family=False) == ["d"]
    with pytest.raises(PipelineError, match="threshold 0.99"):
        S.select(ACC, FAM, 0.99, per_family=False, on_empty="fail")


# ------------------------------------------------------------------------------------------------ weights
def test_accuracy_weights_are_proportional_to_accuracy():
    w = W.accuracy_weights([0.9, 0.6, 0.3])
    np.testing.assert_allclose(w, [0.5, 1 / 3, 1 / 6])
    P = np.stack([onehot([0, 1]), onehot([1, 1]), onehot([2, 2])])
    np.testing.assert_allclose(W.blend(P, w), 0.5 * P[0] + P[1] / 3 + P[2] / 6)


def complementary(n=40, seed=0):
    """Two members, each right (confidently) on one half of the rows and wrong on the other."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    wrong = (y + 1) % C
    half = np.arange(n) < n // 2
    p1 = onehot(np.where(half, y, wrong), conf=0.7)
    p2 = onehot(np.where(half, wrong, y), conf=0.7)
    return np.stack([p1, p2]), y


def test_greedy_is_forward_selection_with_replacement():
    P, y = complementary()
    # alone each member has the same loss; together they are better, so picks alternate
    np.testing.assert_allclose(W.greedy_weights(P, y, iters=10), [0.5, 0.5])
    good = onehot(y, conf=0.8)
    P3 = np.stack([good, P[0], np.full_like(good, 1 / C)])
    w = W.greedy_weights(P3, y, iters=20)
    assert w[0] == w.max() and w[2] == 0 and np.isclose(w.sum(), 1)


def test_fitted_weights_minimise_log_loss_on_the_simplex():
    rng = np.random.default_rng(1)
    y = rng.integers(0, C, 200)
    p1 = onehot(np.where(rng.random(200) < 0.8, y, (y + 1) % C), conf=0.6)
    p2 = onehot(np.where(rng.random(200) < 0.6, y, (y + 2) % C), conf=0.9)
    P = np.stack([p1, p2])
    w = W.fitted_weights(P, y)
    grid = np.linspace(0, 1, 2001)
    best = grid[np.argmin([W.log_loss(W.blend(P, [g, 1 - g]), y) for g in grid])]
    assert w.min() >= 0 and np.isclose(w.sum(), 1) and abs(w[0] - best) < 2e-3
    noise = np.stack([p1, rng.dirichlet(np.ones(C), 200)])  # a useless member gets (almost) nothing
    assert W.fitted_weights(noise, y)[1] < 0.05


def test_stacking_learns_a_relabelling_that_averaging_cannot():
    rng = np.random.default_rng(2)
    y = rng.integers(0, C, 400)
    shifted = onehot((y + 1) % C, conf=0.9)  # always confidently one class off
    P = np.stack([shifted])
    assert W.accuracy(shifted, y) == 0

    def fit(Ptr, ytr):
        model = W.fit_stacker(Ptr, ytr, C=1.0)
        return lambda Q: W.stacker_proba(model, Q, C)

    assert W.accuracy(W.crossfit(P, y, fit, folds=5, seed=0), y) == 1.0


def test_crossfit_never_scores_rows_it_was_fitted_on():
    rng = np.random.default_rng(3)
    y = rng.integers(0, C, 100)
    P = rng.dirichlet(np.ones(C), (1, 100))

    def memorise(Ptr, ytr):  # perfect on the rows it saw, uniform elsewhere
        seen = {row.tobytes(): t for row, t in zip(Ptr[0], ytr)}
        return lambda Q: np.array(
            [onehot([seen[r.tobytes()]])[0] if r.tobytes() in seen else np.full(C, 1 / C) for r in Q[0]]
        )

    assert W.accuracy(memorise(P, y)(P), y) == 1.0
    oof = W.crossfit(P, y, memorise, folds=5, seed=0)
    np.testing.assert_allclose(oof, 1 / C)


# ------------------------------------------------------------------------------------------------ the stage
@pytest.fixture
def three(tmp_path):
    rng = np.random.default_rng(4)
    vy, ty = rng.integers(0, C, 300), rng.integers(0, C, 200)
    models = {
        "resnet34": ("resnet34", "timm", noisy(vy, 0.9, rng), noisy(ty, 0.9, rng)),
        "vgg19_bn": ("torchvision.vgg19_bn", "torchvision", noisy(vy, 0.6, rng), noisy(ty, 0.6, rng)),
        "cnn4": ("cnn4", "local", noisy(vy, 0.8, rng), noisy(ty, 0.8, rng)),
    }
    return tmp_path, models, vy, ty


def test_stage_writes_submissions_and_every_strategy(three):
    root, models, vy, ty = three
    params = write_run(root, models, vy, ty) | {
        "ensemble": {"select": "threshold", "threshold": 0.7, "per_family": False}
    }
    m = E.run(params, root)
    assert m.members == ["resnet34", "cnn4"] and m.chosen == "accuracy"
    accs = [m.models[n].valid.accuracy for n in m.members]
    np.testing.assert_allclose(list(m.weights.values()), np.array(accs) / sum(accs), atol=1e-6)
    assert set(m.strategies) == {"accuracy", "uniform", "greedy", "logloss", "stacking"}
    for s in m.strategies.values():
        assert s.members == m.members and 0 <= s.test.accuracy <= 1
    assert m.models["vgg19_bn"].weight == 0.0 and m.models["vgg19_bn"].family == "VGG"
    for name in [*models, "ensemble"]:
        rows = list(csv.reader((root / "submissions" / f"{name}.csv").open()))
        assert rows[0] == ["id", "label"] and len(rows) == 1 + len(ty)
        assert {r[1] for r in rows[1:]} <= {f"class{i}" for i in range(C)}
    blended = np.load(root / "ensemble" / "preds" / "test.npy")
    assert W.accuracy(blended, ty) == pytest.approx(m.test.accuracy)
    on_disk = json.loads((ensemble_metrics_file(root)).read_text())
    assert on_disk == m.to_json()


def test_test_labels_change_no_weight(three, tmp_path_factory):
    root, models, vy, ty = three
    cfg = {"ensemble": {"select": "threshold", "threshold": 0.0, "method": "best"}}
    a = E.run(write_run(root, models, vy, ty) | cfg, root)
    other = tmp_path_factory.mktemp("shuffled")
    b = E.run(write_run(other, models, vy, np.random.default_rng(9).permutation(ty)) | cfg, other)
    assert a.test != b.test  # the shuffle did change the test scores ...
    for k in a.strategies:  # ... and nothing else
        assert a.strategies[k].weights == b.strategies[k].weights
        assert a.strategies[k].valid == b.strategies[k].valid
    assert a.chosen == b.chosen and a.members == b.members
    assert (root / "submissions" / "ensemble.csv").read_text() == (other / "submissions" / "ensemble.csv").read_text()


def test_default_selection_gain_and_accuracy_by_number_of_members(three):
    """The default rule leaves out the models far behind the best; the gain and the k-best curve are reported
    against the best model by validation accuracy."""
    root, models, vy, ty = three
    m = E.run(write_run(root, models, vy, ty), root)
    assert m.members == ["resnet34"]  # cnn4 (~0.8) and vgg19_bn (~0.6) are not within 1 point of ~0.9
    assert m.best_model == "resnet34"
    assert m.gain["test"] == pytest.approx(m.test.accuracy - m.models["resnet34"].test.accuracy)
    assert m.gain["valid"] == pytest.approx(0.0)
    assert [r.added for r in m.by_size] == ["resnet34", "cnn4", "vgg19_bn"]
    assert m.by_size[0].test == pytest.approx(m.models["resnet34"].test.accuracy)
    acc = [W.accuracy(models[n][2], vy) for n in ("resnet34", "cnn4", "vgg19_bn")]
    all3 = W.blend(np.stack([models[n][3] for n in ("resnet34", "cnn4", "vgg19_bn")]), np.array(acc) / sum(acc))
    assert m.by_size[2].test == pytest.approx(W.accuracy(all3, ty))


def test_the_best_model_is_chosen_on_validation_not_test(tmp_path):
    rng = np.random.default_rng(7)
    vy, ty = rng.integers(0, C, 300), rng.integers(0, C, 300)
    models = {
        "a": ("resnet34", "timm", noisy(vy, 0.9, rng), noisy(ty, 0.6, rng)),  # best on valid, worse on test
        "b": ("cnn4", "local", noisy(vy, 0.8, rng), noisy(ty, 0.95, rng)),
    }
    m = E.run(write_run(tmp_path, models, vy, ty), tmp_path)
    assert m.best_model == "a" and m.members == ["a"]


def test_best_picks_the_highest_validation_accuracy(three):
    root, models, vy, ty = three
    m = E.run(write_run(root, models, vy, ty) | {"ensemble": {"method": "best"}}, root)
    best = max(m.strategies.values(), key=lambda s: (s.valid.accuracy, -s.valid.loss))
    assert m.strategies[m.chosen] == best


def test_one_member(three):
    root, models, vy, ty = three
    m = E.run(
        write_run(root, models, vy, ty) | {"ensemble": {"select": "threshold", "threshold": 0.85, "per_family": False}},
        root,
    )
    assert m.members == ["resnet34"]
    for k in ("accuracy", "uniform", "greedy", "logloss"):
        assert m.strategies[k].weights == {"resnet34": 1.0}
    sub = (root / "submissions" / "ensemble.csv").read_text()
    assert sub == (root / "submissions" / "resnet34.csv").read_text()


def test_sample_submission_header_and_order_are_followed(tmp_path):
    rng = np.random.default_rng(5)
    vy, ty = rng.integers(0, C, 40), rng.integers(0, C, 7)
    ids = ["img_7.png", "img_3.png", "img_10.png", "a.png", "b.png", "c.png", "d.png"]  # sampleSubmission order
    params = write_run(
        tmp_path,
        {"cnn4": ("cnn4", "local", onehot(vy), onehot(ty))},
        vy,
        ty,
        ids=ids,
        header=("ImageId", "Category"),
        classes=["cat", "dog", "fox", "owl"],
    )
    E.run(params, tmp_path)
    rows = list(csv.reader((tmp_path / "submissions" / "ensemble.csv").open()))
    assert rows[0] == ["ImageId", "Category"] and [r[0] for r in rows[1:]] == ids
    assert [r[1] for r in rows[1:]] == [["cat", "dog", "fox", "owl"][k] for k in ty]


def test_probability_columns_when_the_sample_has_one_per_class():
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    rows = submission_rows(probs, ["x", "y"], ["a", "b", "c"], ["id", "c", "a", "b"])
    assert rows == [
        ["id", "c", "a", "b"],
        ["x", "0.700000", "0.100000", "0.200000"],
        ["y", "0.250000", "0.500000", "0.250000"],
    ]


@pytest.mark.bad_input
def test_stale_predictions_name_the_model_and_write_nothing(three):
    root, models, vy, ty = three
    arch, src, pv, pt = models["cnn4"]
    models = {**models, "cnn4": (arch, src, pv[:-5], pt)}  # trained on other data
    params = write_run(root, models, vy, ty)
    with pytest.raises(PipelineError, match=r"preds/cnn4/valid.npy: shape \(295, 4\).*300 valid rows.*train@cnn4"):
        E.run(params, root)
    assert not (root / "submissions").exists() and not (root / "ensemble").exists()


@pytest.mark.bad_input
def test_class_mismatch_and_missing_predictions(three):
    root, models, vy, ty = three
    arch, src, pv, pt = models["vgg19_bn"]
    params = write_run(root, {**models, "vgg19_bn": (arch, src, pv, np.hstack([pt, pt])[:, :5] / 2)}, vy, ty)
    with pytest.raises(PipelineError, match=r"preds/vgg19_bn/test.npy: shape \(200, 5\).*4 classes"):
        E.run(params, root)
    params["archs"] = {"resnet34": {}, "densenet121": {}}
    with pytest.raises(PipelineError, match=r"preds/densenet121/valid.npy: missing.*train@densenet121"):
        E.run(params, root)


@pytest.mark.bad_input
def test_bad_ensemble_params_are_named(three):
    root, models, vy, ty = three
    params = write_run(root, models, vy, ty)
    with pytest.raises(PipelineError, match=r"ensemble.method. = 'vote'"):
        E.run(params | {"ensemble": {"method": "vote"}}, root)
    with pytest.raises(PipelineError, match=r"ensemble.threshold. = 1.5"):
        E.run(params | {"ensemble": {"threshold": 1.5}}, root)


def test_saved_stacker_reproduces_the_fitted_one_without_pickle():
    rng = np.random.default_rng(6)
    y = rng.integers(0, C, 200)
    P = np.stack([noisy(y, 0.8, rng), noisy(y, 0.6, rng)])
    model = W.fit_stacker(P, y)
    d = json.loads(json.dumps(W.stacker_to_dict(model)))
    np.testing.assert_allclose(W.stacker_apply(d, P, C), W.stacker_proba(model, P, C), atol=1e-9)


def test_probability_columns_of_classes_left_out_are_zero():
    """A sampleSubmission with a column per class, on a run of a class subset (`data.classes`)."""
    probs = np.array([[0.25, 0.75], [0.6, 0.4]])
    rows = submission_rows(probs, ["a", "b"], ["cat", "frog"], ["id", "bird", "cat", "frog"])
    assert rows == [
        ["id", "bird", "cat", "frog"],
        ["a", "0.000000", "0.250000", "0.750000"],
        ["b", "0.000000", "0.600000", "0.400000"],
    ]


# ------------------------------------------------------------------------------------------------ many classes
def many_class_run(tmp_path, n_classes=200, rows=2000, members=2):
    from conftest import write_run

    rng = np.random.default_rng(0)
    vy, ty = rng.integers(0, n_classes, rows), rng.integers(0, n_classes, rows // 2)

    def noisy(y, acc):
        p = rng.dirichlet(np.full(n_classes, 0.3), len(y)) * 0.3
        hit = np.where(rng.random(len(y)) < acc, y, rng.integers(0, n_classes, len(y)))
        p[np.arange(len(y)), hit] += 0.7
        return p / p.sum(1, keepdims=True)

    classes = [f"n{i:08d}" for i in range(n_classes)]
    models = {
        f"m{i}": ("resnet34", "timm", noisy(vy, 0.6 + 0.05 * i), noisy(ty, 0.6 + 0.05 * i)) for i in range(members)
    }
    params = write_run(tmp_path, models, vy, ty, classes=classes)
    return params, vy, ty, models


def test_stacking_takes_the_tied_form_at_200_classes(tmp_path):
    from ensembles import ensemble as E
    from ensembles import weights as W

    params, vy, ty, models = many_class_run(tmp_path)
    params["ensemble"] = {"select": "threshold", "threshold": 0.0, "method": "stacking"}
    m = E.run(params, tmp_path)
    s = m.strategies["stacking"]
    assert s.form == "tied" and s.valid_scored.startswith("cross-fitted")
    best_member = max(W.accuracy(v[2], vy) for v in models.values())
    assert s.valid.accuracy > best_member - 0.02  # a sensible blend, not a broken fit
    import json

    saved = json.loads((ensemble_model_file(tmp_path)).read_text())
    P = np.stack([models[n][3] for n in saved["members"]])
    np.testing.assert_allclose(
        W.stacker_apply(saved["stacker"], P, 200), np.load(tmp_path / "ensemble" / "preds" / "test.npy"), atol=1e-5
    )


def test_strategies_are_choosable_and_method_must_be_among_them(tmp_path):
    from ensembles import ensemble as E
    from pipeline.errors import PipelineError

    params, *_ = many_class_run(tmp_path, n_classes=20, rows=400)
    params["ensemble"] = {"select": "threshold", "threshold": 0.0, "strategies": ["accuracy", "greedy"]}
    m = E.run(params, tmp_path)
    assert list(m.strategies) == ["accuracy", "greedy"]
    params["ensemble"]["method"] = "stacking"
    with pytest.raises(PipelineError, match=r"ensemble.method` = 'stacking' is not among `ensemble.strategies"):
        E.run(params, tmp_path)


def test_one_member_says_why_nothing_is_cross_fitted(tmp_path):
    from ensembles import ensemble as E

    params, *_ = many_class_run(tmp_path, n_classes=20, rows=400, members=1)
    params["ensemble"] = {"select": "threshold", "threshold": 0.0}
    m = E.run(params, tmp_path)
    assert m.strategies["greedy"].valid_scored == "direct: one member, nothing to fit"
    assert "validation rows" not in m.strategies["logloss"].valid_scored


def test_stacker_form_counts_weights_not_features():
    """members × classes × classes weights decide the form: 1 member at 200 classes (40 000) is tied, 25 at 10
    classes (2 500) full; the renamed key's old name gets the new one suggested."""
    from ensembles.strategies import ensemble_params, stacking_form
    from pipeline.errors import PipelineError

    cfg = ensemble_params({})
    assert stacking_form(1, 200, cfg) == "tied" and stacking_form(25, 10, cfg) == "full"
    assert stacking_form(26, 10, cfg) == "tied" and stacking_form(3, 10, cfg) == "full"
    with pytest.raises(PipelineError, match="did you mean stack_max_weights"):
        ensemble_params({"ensemble": {"stack_max_features": 256}})
