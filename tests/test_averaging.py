"""`average: ema | swa` and `snapshots: K`: the averages are the ones the libraries define, the averaged model is the
member that is evaluated, saved and predicted, and snapshot members are written, blended and predicted like any."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from conftest import synth
from fastai.callback.core import Callback

from ensembles import ensemble
from pipeline import train
from pipeline.artifacts import load_prepared, model_dir, preds_dir, with_snapshots
from pipeline.errors import PipelineError
from pipeline.learn import member, recipe
from pipeline.learn.averaging import WeightAverage, snapshot_epochs
from pipeline.learn.folds import train_folds, train_refit
from pipeline.learn.trained import load_model
from pipeline.params import make_spec, train_spec


def spec(**kw):
    return make_spec({"epochs": 2, "bs": 8, "lr": 1e-2, "flip": False, "pad": 0, "arch": "cnn_small", **kw}, "t")


class Weights(Callback):
    """Records the model's parameters after every training step (before WeightAverage, order 95)."""

    order = 90

    def before_fit(self):
        self.seen = []

    def after_batch(self):
        if self.training:
            self.seen.append([p.detach().clone() for p in self.learn.model.parameters()])


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_the_average_is_the_library_s_average_of_the_steps(kind):
    """SWA: the plain mean of the weights after each step past `start`; EMA: timm's warm-up recursion over every step.
    The learner's model holds that average after `finish`."""
    arrays, meta = synth(n=32, size=8)
    learn, setup = recipe.build_learner("t", spec(), arrays, meta, seed=0)
    rec = Weights()
    avg = WeightAverage(kind, epochs=2, decay=0.9, start=0.5)  # 2 epochs × 4 batches
    learn.add_cbs([rec, avg])
    with learn.no_logging():
        learn.fit(2, 1e-2)
    info = avg.finish(None)  # no batch-norm recomputation: the pure average
    assert avg.total == 8
    got = [p.detach() for p in learn.model.parameters()]
    if kind == "swa":
        want = [torch.stack(ps).mean(0) for ps in zip(*rec.seen[4:])]  # steps 5..8: after half of 8
        assert info == {"kind": "swa", "updates": 4, "start": 0.5}
    else:
        want = [p.clone() for p in rec.seen[0]]  # timm: the first update copies (decay 0 at step 1)
        for step, ps in enumerate(rec.seen[1:], start=2):
            d = min(1 - (1 + (step - 1)) ** (-2 / 3), 0.9)
            want = [w * d + p * (1 - d) for w, p in zip(want, ps)]
        assert info == {"kind": "ema", "updates": 8, "decay": 0.9}
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got[0], rec.seen[-1][0])  # not simply the last weights


def test_swa_recomputes_batch_norm_statistics():
    arrays, meta = synth(n=32, size=16)
    s = spec(arch="cnn4", average="swa", average_start=0.5)
    res = member.train_arch("t", s, arrays, meta, seed=0)
    bn = next(m for m in res.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert res.metrics.average["kind"] == "swa" and res.metrics.average["updates"] == 4
    assert bn.num_batches_tracked.item() == 4  # update_bn's one pass over the 4 training batches (it resets first)


def test_averaged_member_is_what_is_saved_and_predicted(project):
    """The stage's saved model is the averaged one: pipeline.learn.trained reproduces preds/ from it."""
    root, write = project
    train.run("ema", write({"ema": {"arch": "cnn_small", "average": "ema", "average_decay": 0.99}}), root)
    train.run("plain", write({"plain": {"arch": "cnn_small"}}), root)
    m = json.loads((root / "metrics/ema.json").read_text())
    assert m["average"]["kind"] == "ema" and m["average"]["updates"] == m["images_seen"] // 16
    assert "average" not in json.loads((root / "metrics/plain.json").read_text())  # unset: the file as before
    x = load_prepared(root).arrays["test_x"]
    got = load_model("ema", root).predict_arrays(x, bs=128)
    np.testing.assert_allclose(got, np.load(root / "preds/ema/test.npy"), atol=1e-6)
    assert not np.allclose(np.load(root / "preds/plain/test.npy"), got, atol=1e-3)  # same seed, other weights


def test_snapshot_epochs():
    assert snapshot_epochs(5, 3) == [3, 4] and snapshot_epochs(5, None) == [] and snapshot_epochs(2, 5) == [1]


def test_snapshots_are_members_written_blended_and_predicted(project):
    """`snapshots: 3` over 4 epochs: members t@e2 and t@e3 beside t, each with its model, predictions and metrics
    inside the entry's folders; the ensemble sees them; their cost is their run's, counted once."""
    root, write = project
    params_file = write({"t": {"arch": "cnn_small", "epochs": 4, "snapshots": 3}})
    res = train.run("t", params_file, root)
    assert [r.spec.key for r in res.snapshots] == ["t@e2", "t@e3"] and res.metrics.snapshots == ["t@e2", "t@e3"]
    assert with_snapshots(root, ["t"]) == ["t", "t@e2", "t@e3"]
    assert (
        model_dir(root, "t@e2") == root / "models/t/snapshots/e2" and (preds_dir(root, "t@e2") / "test.npy").is_file()
    )
    snap = json.loads((preds_dir(root, "t@e2") / "metrics.json").read_text())
    assert snap["snapshot_of"] == "t" and snap["snapshot_epoch"] == 2 and snap["train_s"] == res.metrics.train_s
    x = load_prepared(root).arrays["test_x"]
    np.testing.assert_allclose(
        load_model("t@e2", root).predict_arrays(x), np.load(preds_dir(root, "t@e2") / "test.npy"), atol=1e-6
    )
    assert not np.allclose(np.load(preds_dir(root, "t@e2") / "test.npy"), res.preds["test"], atol=1e-3)
    params = yaml.safe_load(open(params_file))
    params["ensemble"] = {"select": "threshold", "threshold": 0.0, "per_family": False, "method": "uniform"}
    m = ensemble.run(params, root)
    assert set(m.models) == {"t", "t@e2", "t@e3"} and m.models["t@e2"].group == "t"
    assert set(m.strategies["uniform"].members) == {"t", "t@e2", "t@e3"}
    from pipeline.artifacts import load_metrics_of
    from pipeline.inspect.leaderboard import leaderboard

    rows = {r["model"]: r for r in leaderboard(load_metrics_of(root, with_snapshots(root, ["t"])), m)}
    assert rows["ensemble:uniform*"]["train_s"] == rows["t"]["train_s"]  # one run's cost, not three


def test_snapshots_with_folds_and_refit():
    """Each snapshot member of a `folds` entry averages the fold models' snapshots and has their out-of-fold rows;
    with `refit`, its test predictions come from the refit run's snapshot, its validation ones from the
    validated run's."""
    arrays, meta = synth(n=48, size=8)
    s = spec(epochs=3, snapshots=2, average="ema", folds=2, refit=True)
    res = train_folds("t", s, arrays, meta, 0, torch.device("cpu"), None, True)
    (snap,) = res.snapshots
    assert snap.spec.key == "t@e2" and len(snap.folds) == 2 and snap.preds["oof"].shape == res.preds["oof"].shape
    np.testing.assert_allclose(snap.preds["test"], np.mean([f.preds["test"] for f in snap.folds], axis=0))
    refit = train_refit("t", s, res, arrays, meta, 0, torch.device("cpu"), True)
    (rsnap,) = refit.snapshots
    np.testing.assert_array_equal(rsnap.preds["valid"], snap.preds["valid"])  # validated run's
    assert not np.array_equal(rsnap.preds["test"], snap.preds["test"]) and rsnap.metrics.refit is not None
    assert refit.metrics.average["kind"] == "ema"


def test_folds_under_a_time_budget_all_train_the_first_folds_epochs(monkeypatch):
    """`folds` + `snapshots` + `time_budget`: the first fold's budget chooses the epochs and every later fold (and
    the refit) trains those, so each snapshot member blends the same epoch of every fold. A budget that timed each
    fold anew once chose 3 then 1 epochs: IndexError in combine_folds (or epochs blended out of line)."""
    chosen = iter([3, 1, 1, 1])
    asked = []

    def budget(key, spec, *a):
        asked.append(key)
        n = next(chosen)
        return replace(spec, epochs=n, time_budget=None), {"asked_s": spec.time_budget, "chosen": {"epochs": n}}

    monkeypatch.setattr(member, "budget_recipe", budget)
    arrays, meta = synth(n=48, size=8)
    s = spec(snapshots=2, folds=2, refit=True, time_budget=5)
    res = train_folds("t", s, arrays, meta, 0, torch.device("cpu"), None, True)
    assert asked == ["t"]  # only the first fold measured
    assert [f.metrics.phases for f in res.folds] == [[[8, 3]], [[8, 3]]]
    (snap,) = res.snapshots
    assert snap.spec.key == "t@e2" and [f.spec.key for f in snap.folds] == ["t@e2", "t@e2"]
    refit = train_refit("t", s, res, arrays, meta, 0, torch.device("cpu"), True)
    assert refit.metrics.refit is not None and [r.spec.key for r in refit.snapshots] == ["t@e2"]


def test_variants_and_time_budget_carry_average_and_snapshots():
    params = {
        "train": {"epochs": 2},
        "archs": {"t": {"arch": "cnn_small"}},
        "variants": {"t-ema": {"of": "t", "average": "ema", "snapshots": 2}},
    }
    v = train_spec(params, "t-ema")
    assert v.average == "ema" and v.snapshots == 2 and train_spec(params, "t").average == "none"
    arrays, meta = synth(n=96, size=8)
    res = member.train_arch("t", spec(average="ema", snapshots=2, time_budget=2), arrays, meta, seed=1)
    epochs = res.metrics.time_budget["chosen"]["epochs"]
    assert res.metrics.average["updates"] == epochs * 12  # 96 images / bs 8, every step of the chosen epochs
    assert [r.spec.key for r in res.snapshots or []] == ([f"t@e{epochs - 1}"] if epochs > 1 else [])


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "entry, match",
    [
        ({"average": "polyak"}, "average"),
        ({"average_decay": 1.5}, "average_decay"),
        ({"snapshots": 1}, "snapshots"),
    ],
)
def test_bad_averaging_params_name_the_key(entry, match):
    with pytest.raises(PipelineError, match=match):
        make_spec(entry, "archs.t")
