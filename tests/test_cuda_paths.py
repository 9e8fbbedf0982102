"""Issue 34: what a first run on a GPU would have hit, shown on a CPU where faking CUDA's queries can show it (each
test failed before its fix); the `gpu` tests for what only a GPU can show are in test_hardware.py."""

import contextlib
import gc
import weakref

import numpy as np
import pytest
import torch
from conftest import synth
from test_hardware import fake_cuda, trained_member  # noqa: F401 (fake_cuda: a fixture)

from pipeline.learn import hardware as H
from pipeline.learn import member, recipe, trained
from pipeline.params import make_spec


def test_a_cuda_device_without_an_index_is_made_concrete(fake_cuda, monkeypatch):  # noqa: F811
    """bench.overhead and notebooks pass torch.device("cuda"); torch.cuda.set_device refuses a device without an
    index ('Expected a torch.device with a specified index'): start_device now gives it this process's."""
    seen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.append(d) if d.index is not None else 1 / 0)
    monkeypatch.setattr(recipe, "configure", lambda device, det: None)
    monkeypatch.setattr(recipe, "set_seed", lambda *a, **k: None)
    spec, device = recipe.start_device(make_spec({"arch": "logreg"}, "t"), 0, torch.device("cuda"))
    assert device == torch.device("cuda:0") and seen == [torch.device("cuda:0")] and spec.eval_bs == 1024
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert H.concrete(torch.device("cuda")) == torch.device("cuda:1") and H.concrete("cpu") == torch.device("cpu")


def test_each_fold_lets_go_of_its_learner_and_gradients(monkeypatch):
    """folds/refit: a finished fold's learner (optimizer state, uploaded rows) and its model's gradients were kept
    while later folds trained (on a GPU: memory piling up, each fold's peak including the earlier ones')."""
    learners = []
    real = member.build_learner

    def spy(*a, **k):
        learn, setup = real(*a, **k)
        learners.append(weakref.ref(learn))
        return learn, setup

    monkeypatch.setattr(member, "build_learner", spy)
    from pipeline.train import train_entry

    arrays, meta = synth(n=60, size=12, c=1)
    spec = make_spec({"arch": "cnn_small", "epochs": 1, "bs": 16, "lr": 1e-3, "folds": 3, "refit": True}, "t")
    gc.disable()
    try:
        res = train_entry("t", spec, arrays, meta, seed=0)
        alive = [r() is not None for r in learners]
    finally:
        gc.enable()
    assert len(learners) == 4 and not any(alive[:-1])  # each fold's learner gone before the next trained
    assert all(p.grad is None for r in res.folds or [] for p in r.model.parameters())
    assert all(p.grad is None for p in res.model.parameters())


def test_each_member_of_an_ensemble_predicts_under_its_own_settings(tmp_path, monkeypatch):
    """configure() ran in Model.__init__: members trained with different `deterministic` all predicted under the
    flags of the last one loaded. Now the flags are set around each model's prediction."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a_dir, _, arrays = trained_member(tmp_path / "a", deterministic=True)
    b_dir, _, _ = trained_member(tmp_path / "b", deterministic=False)
    a, b = trained.Model(a_dir, "cpu"), trained.Model(b_dir, "cpu")
    used = []
    monkeypatch.setattr(trained, "settings", lambda d, det: used.append(det) or contextlib.nullcontext())
    a.predict_arrays(arrays["test_x"][:8])
    b.predict_arrays(arrays["test_x"][:8])
    a.cam(arrays["test_x"][:2])
    assert used == [True, False, True]


def test_settings_apply_then_restore_the_cuda_flags(monkeypatch):
    """The flags are process-wide: `settings` puts the previous ones back."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # configure sets it: gone again after the test
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.benchmark = True
        with H.settings(torch.device("cuda:0"), deterministic=True):
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
            assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = saved
        torch.backends.cuda.matmul.allow_tf32 = tf32


def test_a_bf16_model_predicts_in_fp32_on_a_gpu_without_bf16(fake_cuda, capsys):  # noqa: F811
    """Trained in bf16 on an H100, predicting on a T4 (7.5): bf16 there is emulated; fp32, said once."""
    gpu = torch.device("cuda:0")
    assert H.eval_dtype("bf16", "cuda:0", gpu) == torch.bfloat16  # an A100 (8.0): as the stage
    fake_cuda["cap"] = (7, 5)
    assert H.eval_dtype("bf16", "cuda:0", gpu) is None
    assert H.eval_dtype("bf16", "cuda:0", gpu) is None
    err = capsys.readouterr().err
    assert err.count("predicts in fp32") == 1 and "no bf16 in hardware" in err
    assert H.eval_dtype("fp16", "cuda:0", gpu) == torch.float16
    assert H.eval_dtype("bf16", "cuda:0", gpu, asked="bf16") == torch.bfloat16  # forced: as its stage evaluated


def test_predict_uses_the_stages_eval_batch_size(tmp_path, monkeypatch):
    """The stage predicted at `eval_bs` (1024 on a GPU) and Model at 256: on a GPU other batches are other cuDNN
    kernels, so a fresh process's predictions differed. Model now takes spec.json's resolved eval_bs."""
    folder, res, arrays = trained_member(tmp_path, eval_bs=24)
    sizes = []
    real = trained.Model.predict_arrays

    import pipeline.learn.infer as infer

    real_probs = infer.predict_probs
    monkeypatch.setattr(infer, "predict_probs", lambda m, x, t, bs, *a: sizes.append(bs) or real_probs(m, x, t, bs, *a))
    m = trained.Model(folder, "cpu")
    np.testing.assert_array_equal(real(m, arrays["test_x"]), res.preds["test"])  # bit for bit, as the stage
    m.predict_arrays(arrays["test_x"], bs=8)
    assert sizes == [24, 8] and res.spec.train["eval_bs"] == 24
    gpu_bs = trained.eval_batch_size(1024, "cuda:0", torch.device("cpu"))  # a GPU's 1024 is not a CPU's
    assert gpu_bs == 128 and trained.eval_batch_size(1024, "cuda:0", torch.device("cuda:1")) == 1024


def test_grad_cam_runs_in_chunks(tmp_path, monkeypatch):
    """Grad-CAM on a whole 256-image chunk kept every layer's fp32 activations at once (16-33 GB for VGG19 at
    160-224 px); it now runs CAM_BS images per pass, with the same maps."""
    import pipeline.inspect.cam as cam

    folder, _, arrays = trained_member(tmp_path)
    m = trained.Model(folder, "cpu")
    whole = m.cam(arrays["test_x"][:9])
    rows = []
    real = cam.grad_cam
    monkeypatch.setattr(cam, "grad_cam", lambda model, x, *a: rows.append(len(x)) or real(model, x, *a))
    monkeypatch.setattr(trained, "CAM_BS", 4)
    np.testing.assert_allclose(m.cam(arrays["test_x"][:9]), whole, atol=1e-5)
    assert rows == [4, 4, 1]


def test_a_resident_batch_is_copied_once_on_its_way_to_the_network():
    """On a GPU the rows live on the device as N×H×W×C uint8: a batch was gathered, made N×C×H×W contiguous (a
    copy), then made channels-last again in BatchTfm (another). Now the gathered batch is a channels-last view and
    BatchTfm's float conversion is the one copy; the values are bit for bit the same."""
    from pipeline.data import loaders

    x = np.random.default_rng(0).integers(0, 255, (10, 6, 6, 3), dtype=np.uint8)
    pair = loaders.TensorPair(x, np.arange(10), device=torch.device("cpu"), resident=True)  # as a GPU holds them
    xb, yb = pair[torch.tensor([3, 1, 2])]
    assert xb.is_contiguous(memory_format=torch.channels_last) and xb.shape == (3, 3, 6, 6)
    assert yb.tolist() == [3, 1, 2]
    tfm = loaders.BatchTfm(6, [0.5, 0.4, 0.3], [0.25, 0.2, 0.3], train=False)
    (out,) = tfm((xb,))
    (ref,) = tfm((torch.from_numpy(x[[3, 1, 2]]).permute(0, 3, 1, 2).contiguous(),))  # the CPU path's batch
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


# --------------------------------------------------------------------------------------- what only a GPU can show
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gpu_member(tmp_path, n_test: int, **keys):
    """A small CNN trained on cuda:0 and written as models/<key>/ is, with `n_test` test rows (several batches)."""
    import json

    from safetensors.torch import save_file

    arrays, meta = synth(n=max(96, n_test), size=16, c=3)
    arrays = {**arrays, "test_x": arrays["train_x"][:n_test], "test_y": arrays["train_y"][:n_test]}
    spec = make_spec({"arch": "cnn_small", "epochs": 1, "bs": 16, "lr": 3e-3, **keys}, "t")
    res = member.train_arch("m", spec, arrays, meta, seed=0, device=torch.device("cuda:0"))
    res.spec.key = "m"
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({k: v.cpu().contiguous() for k, v in res.model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "spec.json").write_text(json.dumps(res.spec.to_json()))
    return folder, res, arrays


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_gpu_predict_in_a_fresh_process_over_several_batches(tmp_path, precision):
    """The stage's predictions at its eval_bs, over several batches, reproduced bit for bit by Model in a fresh
    process with `deterministic: true` (the stage's batches, kernels and autocast)."""
    import subprocess
    import sys

    from conftest import ROOT
    from test_hardware import gpu_env

    folder, res, arrays = gpu_member(tmp_path, 300, eval_bs=64, precision=precision, deterministic=True)
    np.save(tmp_path / "x.npy", arrays["test_x"])
    code = (
        "import sys, numpy as np; from pathlib import Path; from pipeline.learn.trained import Model; "
        f"np.save(sys.argv[1], Model(Path({str(folder)!r}), 'cuda:0').predict_arrays(np.load({str(tmp_path / 'x.npy')!r})))"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.npy")], cwd=ROOT, env=gpu_env(), text=True)
    assert r.returncode == 0 and res.metrics.precision == precision
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), res.preds["test"])
    torch.use_deterministic_algorithms(False)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("average", ["ema", "swa"])
def test_gpu_weight_averaging(tmp_path, average):
    """EMA and SWA on the GPU: the average is updated, loaded, and is what the saved model predicts."""
    keys = {"precision": "fp32", "deterministic": True}  # compared to 1e-5 in another process's kernels
    folder, res, arrays = gpu_member(tmp_path, 40, epochs=2, average=average, average_start=0.5, **keys)
    assert res.metrics.average["updates"] > 0 and np.isfinite(res.preds["test"]).all()
    p = trained.Model(folder, "cuda:0").predict_arrays(arrays["test_x"])
    np.testing.assert_allclose(p, res.preds["test"], atol=1e-5)
    torch.use_deterministic_algorithms(False)


@pytest.mark.gpu
@needs_cuda
def test_gpu_folds_leave_no_memory_behind_and_peaks_are_each_folds_own():
    """folds: each fold's peak is its own (not the earlier folds' models on top) and nothing stays on the GPU."""
    from pipeline.train import train_entry

    arrays, meta = synth(n=240, size=32, c=3)  # resnet9: 26 MB of weights, as much again in grads, twice in Adam's
    spec = make_spec({"arch": "resnet9", "epochs": 1, "bs": 32, "lr": 3e-3, "folds": 3}, "t")
    train_entry("t", spec, arrays, meta, seed=0, device=torch.device("cuda:0"))  # cuBLAS/cuDNN workspaces made
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    res = train_entry("t", spec, arrays, meta, seed=0, device=torch.device("cuda:0"))
    peaks = [r.metrics.peak_gpu_mib for r in res.folds]
    assert max(peaks) <= 1.2 * min(peaks) + 1, peaks
    assert torch.cuda.memory_allocated() - before < 2**20  # every fold's model, grads and rows let go of
    assert all(next(r.model.parameters()).device.type == "cpu" for r in res.folds)


@pytest.mark.gpu
@needs_cuda
def test_gpu_bench_overhead_runs_on_cuda(tmp_path, monkeypatch):
    """bench.overhead passed torch.device("cuda") (no index) to build_learner: set_device raised."""
    import json

    from conftest import synth as small

    from bench import overhead
    from pipeline import prepare
    from pipeline.data import array_formats

    arrays, meta = small(n=200, size=28, c=1, k=10)
    monkeypatch.setattr(array_formats, "read_mnist_like", lambda *a, **k: None)
    monkeypatch.setattr(prepare, "prepare", lambda *a, **k: (arrays, meta))
    overhead.main(["--images", "128", "--rounds", "1", "--bs", "32", "--archs", "fast:28", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "overhead.json").read_text())["results"]["fast:28"]
    assert r["ratio"] > 0


def test_losses_and_accuracy_stay_on_the_device_that_computes_them():
    """fastai copies the training loss to the host every batch (AvgSmoothLoss -> to_detach(cpu=True)), and the
    validation loss and accuracy every validation batch: on a GPU each copy is a sync. The pipeline's versions keep
    them on the device: here the 'meta' device, which refuses any copy to the host, stands for a GPU."""
    from fastai.learner import AvgSmoothLoss

    from pipeline.learn.callbacks import DeviceAvgLoss, DeviceAvgMetric, DeviceSmoothLoss

    class FakeLearn:
        loss = torch.ones(4, device="meta")
        pred = torch.ones(4, 3, device="meta")
        yb = (torch.zeros(4, dtype=torch.long, device="meta"),)

    with pytest.raises(NotImplementedError):  # fastai's: a copy to the host
        AvgSmoothLoss().accumulate(FakeLearn())
    from fastai.metrics import accuracy

    for m in (DeviceSmoothLoss(), DeviceAvgLoss(), DeviceAvgMetric(accuracy)):
        m.reset()
        m.accumulate(FakeLearn())
        m.accumulate(FakeLearn())
        assert m.value.device.type == "meta"


def test_keeping_losses_on_the_device_records_the_same_numbers(monkeypatch):
    """The swap changes where the sums live, not what they are: a CPU fit records the same losses and accuracy."""
    from pipeline.learn import callbacks

    arrays, meta = synth(n=48, size=12, c=1)
    spec = make_spec({"arch": "cnn_small", "epochs": 2, "bs": 16, "lr": 1e-3, "flip": False, "pad": 0}, "t")
    runs = []
    for keep in (False, True):
        learn, setup = recipe.build_learner("t", spec, arrays, meta, seed=0, device=torch.device("cpu"))
        if keep:
            callbacks.keep_on_device(learn)
        with learn.no_logging():
            learn.fit(2, 1e-3)
        runs.append(([float(v) for v in learn.recorder.losses], [list(map(float, v)) for v in learn.recorder.values]))
    assert runs[0] == runs[1] and len(runs[0][0]) == 6


def test_a_batch_that_runs_out_of_gpu_memory_is_retried_smaller(capsys):
    """`eval_bs: auto` is 1024 on a GPU; a big net at 224 px does not fit a 16 GB card: the batch is halved until
    it fits, said, and the probabilities are those of the smaller batches."""
    from pipeline.data.loaders import BatchTfm
    from pipeline.learn.infer import predict_probs

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8, 3))

    class Small(torch.nn.Module):
        def forward(self, x):
            if len(x) > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (pretended)")
            return net(x)

    x = np.random.default_rng(0).integers(0, 255, (30, 8, 8, 1), dtype=np.uint8)
    tfm = BatchTfm(8, [0.5], [0.25], train=False)
    cpu = torch.device("cpu")
    p = predict_probs(Small(), x, tfm, 32, False, cpu, None, 3)
    np.testing.assert_array_equal(p, predict_probs(net, x, tfm, 8, False, cpu, None, 3))
    assert capsys.readouterr().err.count("out of memory") == 2  # 32 -> 16 -> 8
