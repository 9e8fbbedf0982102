"""Verdicts with error bars: Wilson intervals, McNemar, the paired bootstrap, calibration, and the ensemble's
comparisons, leave-one-out and per-class records."""

import json

import numpy as np
import pytest
from conftest import C, noisy, write_run
from scipy.stats import binomtest

from ensembles import ensemble as E
from ensembles.calibrate import apply_temperature, fit_temperature
from pipeline.artifacts import ensemble_model_file
from pipeline.inspect.scores import compare, decimals, ece, mcnemar, paired_bootstrap, verdict


def rights(pattern: str) -> np.ndarray:
    return np.array([c == "1" for c in pattern])


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_rows():
    a, b = rights("1110001"), rights("0001001")  # A alone right on rows 0-2, B alone on row 3
    assert mcnemar(a, b) == pytest.approx(binomtest(3, 4, 0.5).pvalue)
    assert mcnemar(rights("111"), rights("000")) == pytest.approx(0.25)  # 2 · (1/2)^3
    assert mcnemar(rights("10"), rights("01")) == 1.0
    rng = np.random.default_rng(0)
    a, b = rng.random(300) < 0.8, rng.random(300) < 0.7
    k, n = int((a & ~b).sum()), int((a ^ b).sum())
    assert mcnemar(a, b) == pytest.approx(binomtest(k, n, 0.5).pvalue)


def test_identical_predictions_give_p_1_and_an_interval_around_0():
    y = np.random.default_rng(1).integers(0, C, 500)
    p = noisy(y, 0.7, np.random.default_rng(2))
    c = compare(p, p.copy(), y)
    assert c["p"] == 1.0 and c["diff"] == 0.0 and c["ci95"][0] <= 0.0 <= c["ci95"][1] and not c["resolved"]
    assert "not resolved" in verdict(c)


def test_a_hundred_more_right_rows_of_ten_thousand_is_resolved():
    y = np.zeros(10_000, np.int64)
    a = rights("1" * 9_000 + "0" * 1_000)
    b = a.copy()
    b[:100] = False  # B wrong on 100 rows A gets right, the same elsewhere
    pa, pb = np.eye(C)[np.where(a, 0, 1)], np.eye(C)[np.where(b, 0, 1)]
    c = compare(pa, pb, y)
    assert c["p"] < 1e-6 and c["resolved"] and c["diff"] == pytest.approx(0.01)
    assert c["ci95"][0] > 0 and c["a_only"] == 100 and c["b_only"] == 0


def test_paired_bootstrap_against_hand_computed_cases():
    n = 10_000
    a = np.zeros(n, bool)
    b = np.zeros(n, bool)
    a[:300], b[300:500] = True, True  # A alone right on 3 %, B alone on 2 %: difference +1 point
    lo, hi = paired_bootstrap(a, b, resamples=20_000, seed=3)
    sd = np.sqrt((0.05 - 0.01**2) / n)  # per-row difference takes +1, -1, 0: variance p+ + p- - (p+ - p-)^2
    assert lo == pytest.approx(0.01 - 1.96 * sd, abs=4e-4) and hi == pytest.approx(0.01 + 1.96 * sd, abs=4e-4)
    assert paired_bootstrap(rights("1111"), rights("0000")) == [1.0, 1.0]  # every resample: +1
    # the same quantiles as resampling the rows themselves
    rng = np.random.default_rng(5)
    a, b = rng.random(400) < 0.75, rng.random(400) < 0.7
    d = a.astype(float) - b
    rows = rng.integers(0, 400, (4000, 400))
    np.testing.assert_allclose(paired_bootstrap(a, b, 4000, 6), np.quantile(d[rows].mean(1), [0.025, 0.975]), atol=0.01)
    assert paired_bootstrap(a, b, 2000, 1) == paired_bootstrap(a, b, 2000, 1)  # seeded


def test_ece_of_hand_made_rows():
    # two rows at confidence 0.9 (one right), two at 0.6 (both right): |0.5-0.9|·2/4 + |1-0.6|·2/4 = 0.4
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    assert ece(p, y) == pytest.approx(0.4)
    assert ece(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == 0.0


def test_temperature_softens_over_confidence_and_keeps_the_argmax():
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, 2000)
    logits = np.eye(C)[np.where(rng.random(2000) < 0.7, y, (y + 1) % C)] * 6  # 70 % right, ~99 % sure
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t = fit_temperature(p, y)
    q = apply_temperature(p, t)
    assert t > 1.5 and (q.argmax(1) == p.argmax(1)).all()
    assert ece(q, y) < ece(p, y) / 5
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-9)


def test_rounding_follows_the_interval():
    assert decimals([0.90, 0.952]) == 0  # ±2.6 points
    assert decimals([0.930, 0.9394]) == 1  # ±0.47
    assert decimals([0.9300, 0.9310]) == 2  # ±0.05
    assert decimals(None) == 3


@pytest.fixture
def four(tmp_path):
    rng = np.random.default_rng(4)
    vy, ty = rng.integers(0, C, 600), rng.integers(0, C, 500)
    models = {n: ("cnn4", "local", noisy(vy, 0.8, rng), noisy(ty, 0.8, rng)) for n in ("a", "b", "c")}
    models["d"] = ("resnet34", "timm", noisy(vy, 0.5, rng), noisy(ty, 0.5, rng))
    return tmp_path, models, vy, ty


def test_the_ensemble_compares_itself_to_every_member_on_the_same_rows(four):
    root, models, vy, ty = four
    m = E.run(write_run(root, models, vy, ty) | {"ensemble": {"margin": 0.1}}, root)
    assert m.members == sorted(m.members, key=lambda n: -m.models[n].valid.accuracy)
    assert {r.b for r in m.comparisons} == set(m.members) and "d" not in m.members
    sub = np.load(root / "ensemble" / "preds" / "test.npy")
    for r in m.comparisons:
        t = r.test
        mine = sub.argmax(1) == ty
        theirs = models[r.b][3].argmax(1) == ty
        assert t.a_only == int((mine & ~theirs).sum()) and t.b_only == int((~mine & theirs).sum())
        assert t.diff == pytest.approx(mine.mean() - theirs.mean())
        assert t.ci95[0] <= t.diff <= t.ci95[1] and 0 <= t.p <= 1
    # three noisy 80 % models blended: a real gain over each, resolved on 500 test rows
    assert all(r.test.resolved and r.test.diff > 0 for r in m.comparisons)
    loo = {r.without: r for r in m.leave_one_out}
    assert set(loo) == set(m.members)
    for r in loo.values():
        assert r.test.accuracy == pytest.approx(m.test.accuracy - r.full_vs_without["test"].diff)
    pc = m.per_class
    assert pc.against == m.best_member
    best = m.comparison(m.best_member)
    assert sum(pc.test.fixes) == best.test.a_only and sum(pc.test.breaks) == best.test.b_only
    assert sum(pc.test.rows) == len(ty)


def test_the_best_model_is_compared_even_when_it_is_no_member(four):
    root, models, vy, ty = four
    m = E.run(
        write_run(root, models, vy, ty)
        | {"ensemble": {"select": "threshold", "threshold": 0.0, "per_family": False, "margin": 0.1}},
        root,
    )
    assert m.best_model in {r.b for r in m.comparisons}


def logit_model(y, rng, signal=2.0, sharp=3.0):
    """Over-confident probabilities: softmax of sharp · (Gaussian noise + `signal` on the true class)."""
    z = rng.normal(0, 1, (len(y), C))
    z[np.arange(len(y)), y] += signal
    z *= sharp
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_temperature_calibration_fits_on_validation_only(tmp_path, tmp_path_factory):
    rng = np.random.default_rng(0)
    vy, ty = rng.integers(0, C, 2000), rng.integers(0, C, 2000)
    models = {n: ("cnn4", "local", logit_model(vy, rng), logit_model(ty, rng)) for n in ("a", "b", "c")}
    cfg = {"ensemble": {"margin": 0.1, "calibrate": "temperature", "method": "best"}}
    a = E.run(write_run(tmp_path, models, vy, ty) | cfg, tmp_path)
    other = tmp_path_factory.mktemp("shuffled")
    b = E.run(write_run(other, models, vy, np.random.default_rng(9).permutation(ty)) | cfg, other)
    assert a.test != b.test  # shuffling the test labels changes test scores, and no temperature or weight
    assert a.members == b.members and a.chosen == b.chosen
    for k in a.strategies:
        assert a.strategies[k].weights == b.strategies[k].weights
        assert a.strategies[k].temperature == b.strategies[k].temperature
    assert {n: v.temperature for n, v in a.models.items()} == {n: v.temperature for n, v in b.models.items()}
    for v in a.models.values():  # over-confident members: T > 1, and a lower ECE on the held-out test split
        assert v.temperature > 1.2 and v.test.ece < v.uncalibrated["test"].ece
    best = a.models[a.best_member]
    assert a.test.ece <= best.test.ece  # the goal, on these members
    model = json.loads((ensemble_model_file(tmp_path)).read_text())
    assert model["temperatures"] == {n: a.models[n].temperature for n in a.members}
    assert model["temperature"] == a.temperature


def test_compare_command_reads_the_runs_predictions(four, monkeypatch, capsys):
    from pipeline.commands import compare as K

    root, models, vy, ty = four
    E.run(write_run(root, models, vy, ty) | {"ensemble": {"margin": 0.1}}, root)
    monkeypatch.chdir(root)
    assert K.main(["ensemble", "a"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("valid (600 rows), accuracy: ensemble") and "\ntest (500 rows)" in out and "points, p" in out
    res = K.run("a", "b", root)
    assert res["test"]["a_vs_b"]["diff"] == pytest.approx(res["test"]["a"]["accuracy"] - res["test"]["b"]["accuracy"])
    assert K.main(["ensemble", "nosuch"]) == 1
    assert "`nosuch` is not a trained model" in capsys.readouterr().err


def test_wilson_interval_matches_the_textbook_formula():
    from pipeline.inspect.scores import score, wilson

    k, n, z = 87, 100, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    np.testing.assert_allclose(wilson(k, n), [centre - half, centre + half], rtol=1e-9)
    assert wilson(0, 0) is None
    s = score(np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, 2, 1]))
    assert s["n"] == 4 and s["accuracy"] == 0.75 and s["ci95"][0] < 0.75 < s["ci95"][1]


def test_equal_compute_of_a_one_model_submission_says_there_is_nothing_to_compare():
    """A submission of one model had the whole budget itself: no stale benchmark figures beside it."""
    from types import SimpleNamespace

    from pipeline.inspect.verdicts import markdown_equal_compute

    words = markdown_equal_compute(SimpleNamespace(weights={"fast": 1.0, "mlp": 0.0}), None)
    assert "the submission is one model (fast)" in words and "bench.free_accuracy" in words
