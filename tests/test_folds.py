"""Stratified K-fold entries (`folds: K`), refit on train + valid (`refit: true`), and the ensembler fitting on
out-of-fold predictions: on the digits project (160 training, 40 validation images) and on hand-made
probabilities."""

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import C, has_row, member_metrics, noisy, write_run

from ensembles import ensemble as E
from ensembles import weights as W
from pipeline import train
from pipeline.commands.predict import Model
from pipeline.errors import PipelineError
from pipeline.inspect import leaderboard as LB
from pipeline.learn import folds


def load(root, *parts):
    return np.load(root.joinpath(*parts))


# ------------------------------------------------------------------------------------------------ folds
def test_folds_train_k_models_whose_held_out_predictions_cover_the_training_split(project):
    root, write = project
    train.run("mlp", write({"mlp": {"folds": 3}}), root)
    train_y, valid_y = load(root, "data/prepared/train_y.npy"), load(root, "data/prepared/valid_y.npy")
    oof, rows = load(root, "preds/mlp/oof.npy"), load(root, "preds/mlp/oof_rows.npy")
    assert rows.tolist() == list(range(len(train_y))) and oof.shape == (len(train_y), 10)
    np.testing.assert_allclose(oof.sum(1), 1, atol=1e-4)  # every training row got a held-out prediction

    m = json.loads((root / "metrics/mlp.json").read_text())
    f = m["folds"]
    assert f["k"] == 3 and len(f["cv_accuracy"]) == len(f["valid_accuracy"]) == 3
    assert f["cv_mean"] == pytest.approx(np.mean(f["cv_accuracy"]))
    assert f["cv_std"] == pytest.approx(np.std(f["cv_accuracy"], ddof=1))
    assert f["oof"]["accuracy"] == pytest.approx(W.accuracy(oof, train_y))
    assert m["train_images"] == len(train_y)

    spec = json.loads((root / "models/mlp/spec.json").read_text())
    assert spec["folds"] == ["fold0", "fold1", "fold2"]
    folds = [Model(root / "models/mlp" / d) for d in spec["folds"]]
    valid_x = load(root, "data/prepared/valid_x.npy")
    each = [fm.predict_arrays(valid_x) for fm in folds]
    assert [W.accuracy(p, valid_y) for p in each] == pytest.approx(f["valid_accuracy"])
    np.testing.assert_allclose(load(root, "preds/mlp/valid.npy"), np.mean(each, 0), atol=1e-6)  # the average
    # pipeline.commands.predict rebuilds the entry as the average of its fold models
    np.testing.assert_allclose(Model(root / "models/mlp").predict_arrays(valid_x), np.mean(each, 0), atol=1e-6)
    (root / "models/mlp/fold1/spec.json").unlink()  # a fold model lost: named, with the entry's stage
    with pytest.raises(PipelineError, match=r"models/mlp/fold1/spec.json: missing; .*dvc repro train@mlp`"):
        Model(root / "models/mlp")


def test_fold_splits_are_stratified_and_disjoint():
    y = np.repeat(np.arange(4), [30, 12, 9, 6])
    splits = folds.fold_splits("x", y, 3, seed=0)
    held = np.concatenate([te for _, te in splits])
    assert sorted(held.tolist()) == list(range(len(y)))  # every row held out exactly once
    for tr, te in splits:
        assert not set(tr) & set(te)
        assert np.abs(np.bincount(y[te], minlength=4) - np.bincount(y, minlength=4) / 3).max() <= 1


def test_folds_with_train_limit_cover_the_subset_only(project):
    root, write = project
    train.run("mlp", write({"mlp": {"folds": 2, "train_limit": 80}}), root)
    rows = load(root, "preds/mlp/oof_rows.npy")
    assert len(rows) == 80 and (np.diff(rows) > 0).all()
    assert json.loads((root / "metrics/mlp.json").read_text())["train_images"] == 80


@pytest.mark.bad_input
def test_more_folds_than_a_class_has_images_is_named_and_writes_nothing(project):
    root, write = project
    with pytest.raises(PipelineError, match=r"mlp: `folds` = 20, but a class has only \d+ training images"):
        train.run("mlp", write({"mlp": {"folds": 20}}), root)
    assert not (root / "models/mlp").exists() and not (root / "preds/mlp").exists()


# ------------------------------------------------------------------------------------------------ refit
def test_refit_predicts_test_with_a_model_trained_on_train_and_valid(project):
    root, write = project
    params = write({"mlp": {}, "mlp-refit": {"arch": "mlp", "refit": True}})
    plain = train.run("mlp", params, root)
    refit = train.run("mlp-refit", params, root)
    n_train, n_valid = len(load(root, "data/prepared/train_y.npy")), len(load(root, "data/prepared/valid_y.npy"))

    m = json.loads((root / "metrics/mlp-refit.json").read_text())
    # validation figures: the validated run, the same as the entry without refit (same seed, same recipe)
    assert m["valid"] == plain.metrics.valid.to_json() and m["test_validated"] == plain.metrics.test.to_json()
    np.testing.assert_array_equal(load(root, "preds/mlp-refit/valid.npy"), load(root, "preds/mlp/valid.npy"))
    # test: the refit model, trained on both splits with the validated lr
    assert m["refit"]["train_images"] == n_train + n_valid and m["train_images"] == n_train
    assert m["refit"]["lr"] == plain.lr and m["test"] != plain.metrics.test.to_json()
    test_x = load(root, "data/prepared/test_x.npy")
    saved = Model(root / "models/mlp-refit")
    assert saved.spec.refit["train_images"] == n_train + n_valid
    np.testing.assert_allclose(saved.predict_arrays(test_x), load(root, "preds/mlp-refit/test.npy"), atol=1e-6)
    assert refit.metrics.test.accuracy == pytest.approx(
        W.accuracy(load(root, "preds/mlp-refit/test.npy"), load(root, "data/prepared/test_y.npy"))
    )


def test_refit_after_folds_and_lr_find(project):
    """folds + refit: CV and validation from the fold models, test from one model refit on everything with the lr
    lr_find gave the first fold."""
    root, write = project
    train.run("mlp", write({"mlp": {"folds": 2, "refit": True, "lr": "auto", "num_it": 10}}), root)
    m = json.loads((root / "metrics/mlp.json").read_text())
    assert m["lr_found"] and m["refit"]["lr"] == m["lr"] and m["folds"]["k"] == 2
    spec = json.loads((root / "models/mlp/spec.json").read_text())
    assert "folds" not in spec and (root / "models/mlp/model.safetensors").is_file()  # the refit model is saved
    assert (root / "preds/mlp/oof.npy").is_file()


# ------------------------------------------------------------------------------------------------ ensemble
def write_oof(root, name, rows, p):
    np.save(root / "preds" / name / "oof_rows.npy", np.asarray(rows))
    np.save(root / "preds" / name / "oof.npy", p.astype(np.float32))


def test_fitted_strategies_fit_on_out_of_fold_rows_when_every_member_has_them(tmp_path):
    """On the small validation split `a` looks better; on 2000 out-of-fold rows `b` is. Weights fitted on the
    OOF rows follow the larger sample, and the validation split scores them untouched."""
    rng = np.random.default_rng(0)
    vy, ty, train_y = rng.integers(0, C, 60), rng.integers(0, C, 200), rng.integers(0, C, 2000)
    models = {
        "a": ("resnet34", "timm", noisy(vy, 0.95, rng), noisy(ty, 0.7, rng)),
        "b": ("cnn4", "local", noisy(vy, 0.90, rng), noisy(ty, 0.9, rng)),
    }
    params = write_run(tmp_path, models, vy, ty) | {"ensemble": {"select": "threshold", "threshold": 0.0}}
    np.save(tmp_path / "data/prepared/train_y.npy", train_y)
    write_oof(tmp_path, "a", np.arange(2000), noisy(train_y, 0.6, rng))
    write_oof(tmp_path, "b", np.arange(2000), noisy(train_y, 0.9, rng))
    m = E.run(params, tmp_path)
    assert m.fitted_on == "out-of-fold predictions on 2000 training rows (valid held out)"
    for k in ("greedy", "logloss", "stacking"):
        assert m.strategies[k].valid_scored.startswith("fitted on 2000 out-of-fold training rows")
    assert m.strategies["logloss"].weights["b"] > 0.7  # fitted on validation rows alone, `a` would lead
    P = np.stack([models[n][2] for n in ("a", "b")])
    w = np.array([m.strategies["logloss"].weights[n] for n in ("a", "b")])
    assert m.strategies["logloss"].valid.accuracy == pytest.approx(W.accuracy(W.blend(P, w), vy), abs=1e-6)

    (tmp_path / "preds/a/oof.npy").unlink()  # one member without OOF: back to the validation split
    m = E.run(params, tmp_path)
    assert m.fitted_on == "validation split (cross-fitted scores)"
    assert m.strategies["logloss"].valid_scored.startswith("cross-fitted")


@pytest.mark.bad_input
def test_stale_out_of_fold_predictions_are_named(tmp_path):
    rng = np.random.default_rng(1)
    vy, ty = rng.integers(0, C, 40), rng.integers(0, C, 20)
    params = write_run(tmp_path, {"a": ("cnn4", "local", noisy(vy, 0.9, rng), noisy(ty, 0.9, rng))}, vy, ty)
    np.save(tmp_path / "data/prepared/train_y.npy", rng.integers(0, C, 100))
    write_oof(tmp_path, "a", np.arange(150), noisy(rng.integers(0, C, 150), 0.9, rng))  # 150 rows of 100
    with pytest.raises(PipelineError, match=r"preds/a/oof.npy: shape .* 100-row training split"):
        E.run(params, tmp_path)
    assert not (tmp_path / "ensemble").exists()


# ------------------------------------------------------------------------------------------------ report
def test_report_says_which_figure_comes_from_which_model():
    folds = {"k": 5, "cv_accuracy": [], "cv_mean": 0.91, "cv_std": 0.01, "valid_accuracy": []}
    models = {
        "k": member_metrics(valid={"accuracy": 0.9}, folds=folds | {"valid_mean": 0.88, "valid_std": 0.02}),
        "r": member_metrics(
            valid={"accuracy": 0.8},
            test={"accuracy": 0.85},
            test_validated={"accuracy": 0.82},
            train_images=100,
            refit={"train_images": 120},
        ),
        "plain": member_metrics(valid={"accuracy": 0.7}),
    }
    folds = LB.markdown_folds(models)
    assert has_row(folds, "k", "5", "91.00 ± 1.00", "88.00 ± 2.00", "90.00") and "plain" not in folds
    refit = LB.markdown_refit(models, labeled=True)
    assert has_row(refit, "r", "80.00", "100", "82.00", "85.00", "120") and "refit on train + valid" in refit
    assert LB.markdown_folds({"plain": models["plain"]}) == LB.markdown_refit({}, True) == ""
    unlabelled = replace(models["r"], test=None, test_validated=None)  # a test split without labels
    assert has_row(LB.markdown_refit({"r": unlabelled}, labeled=False), "r", "80.00", "100", "-", "-", "120")
