"""Diagnoses in words (pipeline.inspect.diagnose): learned nothing, stopped early, overfits."""

from conftest import member_metrics

from pipeline.inspect.diagnose import chance, diagnose, steps


def metrics(acc, ci, **kw):
    return member_metrics(valid={"accuracy": acc, "ci95": ci, "balanced_accuracy": acc, "balanced_ci95": ci}, **kw)


def test_chance_is_the_prior_for_top1_and_one_over_k_otherwise():
    assert chance("accuracy", [600] * 10) == 0.1
    assert chance("accuracy", [900, 100]) == 0.9  # always answering the large class
    assert chance("balanced_accuracy", [900, 100]) == 0.5 and chance("macro_f1", [5] * 4) == 0.25


def test_a_model_at_chance_is_flagged_with_its_steps_and_the_knobs():
    models = {
        "resnet34": metrics(0.105, [0.083, 0.132], images_seen=2944, bs=128, train_images=2944, phases=[[28, 1]]),
        "fast": metrics(0.95, [0.94, 0.96], images_seen=100_000, bs=128, train_images=10_000, phases=[[28, 10]]),
    }
    (d,) = diagnose(models, "accuracy", [60] * 10)
    assert d.model == "resnet34" and d.kind == "learned nothing" and steps(models["resnet34"]) == 23
    assert "after 23 optimizer steps (1 epoch of 2,944 images at bs 128" in d.words and "`epochs`" in d.words
    # on imbalanced data top-1's chance is the large class's share: 88 % top-1 there is nothing learned
    skew = {"m": metrics(0.88, [0.85, 0.91], images_seen=1000, bs=10, train_images=1000, phases=[[28, 1]])}
    assert [x.kind for x in diagnose(skew, "accuracy", [900, 100])] == ["learned nothing"]
    assert diagnose(skew, "balanced_accuracy", [900, 100]) == []  # 0.88 balanced is far above 1/2


def test_stopped_early_and_overfits_read_the_curves():
    models = {
        "best": metrics(0.95, [0.94, 0.96]),
        "short": metrics(0.60, [0.58, 0.62]),
        "over": metrics(0.93, [0.92, 0.94]),
        "fine": metrics(0.80, [0.79, 0.81]),
    }
    curves = {
        "best": {"train/loss": [1.0, 0.6, 0.5], "eval/loss": [0.9, 0.6, 0.55]},
        "short": {"train/loss": [2.2, 1.8], "eval/loss": [1.9, 1.6]},  # still falling 18 %
        "over": {"train/loss": [1.0, 0.5, 0.2], "eval/loss": [0.7, 0.5, 0.8]},  # valid loss +60 % from its low
        "fine": {"train/loss": [1.0, 0.8, 0.79], "eval/loss": [0.9, 0.85, 0.84]},  # flat: done, not early
    }
    models["one"] = metrics(0.70, [0.68, 0.72], images_seen=6000, bs=32, train_images=6000, phases=[[32, 1]])
    curves["one"] = {"train/loss": [1.8], "eval/loss": [1.2]}  # one epoch, 25 points behind: no curve to read
    flags = {d.model: d for d in diagnose(models, "accuracy", [100] * 10, curves)}
    assert {n: d.kind for n, d in flags.items()} == {
        "short": "stopped early",
        "over": "overfits",
        "one": "stopped early",
    }
    assert "one epoch (187 optimizer steps of 6,000 images), 25.0 points behind" in flags["one"].words
    assert diagnose(models, "accuracy", [100] * 10) == []  # no curves: only `learned nothing` is judged
