"""Issue 19, what a CPU can decide: device and precision resolution on a faked CUDA machine (torch.cuda's queries
patched), the CPU-fallback note, the params errors, the log line; and `gpu` tests that run only where CUDA is."""

import os
import warnings

import numpy as np
import pytest
import torch
from conftest import has_row

from pipeline import train
from pipeline.artifacts import metrics_file
from pipeline.errors import PipelineError
from pipeline.learn import hardware as H
from pipeline.learn import member, nvidia, recipe
from pipeline.learn.callbacks import Autocast


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with two GPUs of a chosen compute capability (default 8.0, e.g. A100)."""
    state = {"cap": (8, 0), "n": 2}
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: state["n"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: state["cap"])
    # a CUDA 12.6 build's kernels (P100 to H100); the CUDA 13 wheels start at sm_75
    monkeypatch.setattr(
        torch.cuda, "get_arch_list", lambda: ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
    )
    monkeypatch.setattr(
        torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200" if state["cap"] >= (9, 0) else "GPU"
    )
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    H._said.clear()
    return state


def test_auto_and_cuda_resolve_to_a_concrete_gpu(fake_cuda, monkeypatch):
    assert H.pick_device("auto") == torch.device("cuda:0")
    assert H.pick_device("cuda") == torch.device("cuda:0")  # no index: set_device needs one
    assert H.pick_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process takes the second GPU
    assert H.pick_device("auto") == torch.device("cuda:1") and H.pick_device("cuda") == torch.device("cuda:1")
    with pytest.raises(PipelineError, match=r"`archs.big.device` = 'cuda:2', but this machine has 2 CUDA device"):
        H.pick_device("cuda:2", "big")


@pytest.fixture
def old_driver(monkeypatch):
    """A machine with a Tesla T4 and a CUDA 12.2 driver, and the CUDA 13 build of torch that cannot use it: the
    driver's files, nvidia-smi's and libcuda's answers and torch's queries all pretended."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(nvidia, "present", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"])
    smi = {"--query-gpu=name,memory.total,compute_cap": ["Tesla T4, 15360, 7.5"], "--query-gpu=driver_version": []}
    monkeypatch.setattr(nvidia, "_smi", lambda *a: smi.get(a[0], []))
    monkeypatch.setattr(nvidia, "_libcuda_version", lambda: "12.2")
    monkeypatch.setattr(nvidia, "PROC_VERSION", _proc_version(monkeypatch))
    nvidia.driver.cache_clear()

    def unavailable():
        warnings.warn(
            "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020).", stacklevel=2
        )
        return False

    monkeypatch.setattr(torch.cuda, "is_available", unavailable)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield
    nvidia.driver.cache_clear()


def _proc_version(monkeypatch):
    import tempfile
    from pathlib import Path

    f = Path(tempfile.mkdtemp()) / "version"
    f.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n")
    return f


def test_a_gpu_torch_cannot_use_stops_the_stage_naming_both_versions_and_both_ways_out(old_driver):
    """Issue 34: a driver older than the build's CUDA was a warning and hours on the CPU; now an error before any
    work, with the build's CUDA and kernels, the driver's version and CUDA, the GPU, torch's reason, the fixes."""
    with pytest.raises(PipelineError) as e:
        H.pick_device("auto", "fast")
    msg = str(e.value)
    assert msg.startswith("params.yaml: `archs.fast.device` = 'auto', but torch ")
    assert "a CUDA 13.0 build, kernels for sm_75 … sm_120" in msg
    assert "Tesla T4, compute capability 7.5, 15 GiB with NVIDIA driver 535.104.05 (runs CUDA ≤ 12.2)" in msg
    assert "The NVIDIA driver on your system is too old" in msg
    assert "`make setup TORCH=system`" in msg and "`device: cpu`" in msg
    with pytest.raises(PipelineError, match=r"`archs.fast.device` = 'cuda', but CUDA is not usable here \(CUDA init"):
        H.pick_device("cuda", "fast")
    with pytest.raises(PipelineError, match=r"--device = 'cuda:0'"):
        H.pick_device("cuda:0", where="--device")
    assert H.pick_device("cpu") == torch.device("cpu")  # the CPU on purpose
    with pytest.raises(PipelineError, match=r"pass `--device cpu`"):  # a command's way out is its option
        H.pick_device("auto", where="--device")


def test_a_cpu_only_torch_on_a_gpu_machine_is_an_error_too(old_driver, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(PipelineError, match=r"torch \S+ \(a CPU-only build\) cannot use this machine's Tesla T4"):
        H.pick_device("auto")


@pytest.mark.parametrize("value", ["", "-1"])
def test_a_gpu_hidden_on_purpose_is_the_cpu_silently(old_driver, monkeypatch, capsys, value):
    """CUDA_VISIBLE_DEVICES="" is the suite's own way of pinning the CPU: no error, no advice to update a driver."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert H.pick_device("auto") == torch.device("cpu")
    assert capsys.readouterr().err == ""


def test_a_gpu_older_than_the_builds_kernels_is_an_error(fake_cuda, monkeypatch):
    """A P100 (6.0) beside the CUDA 13 wheels (sm_75 and newer): is_available() says yes, the first kernel fails."""
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"])
    fake_cuda["cap"] = (6, 0)
    for name in ("auto", "cuda", "cuda:1"):
        with pytest.raises(PipelineError, match=r"has no kernels for GPU \(compute capability 6.0\).*no kernel image"):
            H.pick_device(name, "fast")
    fake_cuda["cap"] = (8, 6)  # an RTX 3090 runs sm_80's cubin
    assert H.pick_device("auto") == torch.device("cuda:0")


@pytest.mark.parametrize(
    "cap,archs,fits",
    [
        ((7, 5), ["sm_75", "sm_80"], True),
        ((8, 6), ["sm_80", "sm_90"], True),  # same major, newer minor: the sm_80 cubin runs
        ((8, 0), ["sm_86", "sm_90"], False),  # an older minor cannot run sm_86's
        ((6, 0), ["sm_75", "compute_120"], False),
        ((12, 1), ["sm_90", "compute_120"], True),  # PTX compiles for newer GPUs
        ((9, 0), ["sm_90a"], True),
        ((7, 0), [], True),  # a build that does not say
        ((9, 0), ["gfx90a", "gfx942"], True),  # ROCm's names: not CUDA's to check
    ],
)
def test_arch_fits_follows_cudas_compatibility_rules(cap, archs, fits):
    assert nvidia.arch_fits(cap, archs) is fits


def test_driver_reads_old_nvidia_smi_without_compute_cap(monkeypatch, tmp_path):
    """Drivers before R510 refuse the compute_cap field: the GPUs are still named, their capability unknown."""
    answers = {
        "--query-gpu=name,memory.total": ["Tesla P100-PCIE-16GB, 16280"],
        "--query-gpu=driver_version": ["470.1"],
    }
    monkeypatch.setattr(nvidia, "_smi", lambda *a: answers.get(a[0], []))
    monkeypatch.setattr(nvidia, "_libcuda_version", lambda: None)
    monkeypatch.setattr(nvidia, "PROC_VERSION", tmp_path / "none")
    nvidia.driver.cache_clear()
    d = nvidia.driver()
    nvidia.driver.cache_clear()
    assert d.version == "470.1" and d.gpus == (nvidia.Gpu("Tesla P100-PCIE-16GB", None, 16280),)
    assert str(d.gpus[0]) == "Tesla P100-PCIE-16GB, 16 GiB" and str(d) == "driver 470.1"


def test_the_suite_stays_on_the_cpu_where_cuda_is_present(monkeypatch):
    """On a GPU machine an unmarked test would train on CUDA; conftest's autouse fixture (hide_cuda) keeps it on the
    CPU, in this process and in the stages a test starts."""
    import os

    from conftest import ENV, hide_cuda

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and ENV["CUDA_VISIBLE_DEVICES"] == ""  # the fixture ran here
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend: a machine with a GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_90"])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert H.pick_device("auto") == torch.device("cuda:0")  # what an unguarded test would train on
    hide_cuda(monkeypatch)
    assert H.pick_device("auto") == torch.device("cpu")
    with pytest.raises(PipelineError, match="CUDA is not usable"):
        H.pick_device("cuda", "m")


def test_a_cuda_build_on_a_machine_without_nvidia_says_nothing(monkeypatch, capsys):
    """The default install (CUDA wheels) on a CPU machine: no note in every stage; the log line says `cpu`."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(nvidia, "present", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    H._said.clear()
    assert H.pick_device("auto") == torch.device("cpu")
    assert capsys.readouterr().err == ""


def test_more_processes_than_gpus_is_a_named_error(fake_cuda, monkeypatch):
    """torchrun --nproc_per_node 2 on a 1-GPU machine: two ranks on one GPU would fail in NCCL's first collective."""
    fake_cuda["n"] = 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    for name in ("auto", "cuda"):
        with pytest.raises(PipelineError, match=r"2 processes on this machine .* but 1 GPU\(s\).*--nproc_per_node 1"):
            H.pick_device(name, "fast")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert H.pick_device("auto") == torch.device("cuda:0")
    assert H.pick_device("cpu") == torch.device("cpu")  # CPU processes (gloo) need no GPU


@pytest.mark.parametrize(
    "cap,precision,expect",
    [
        ((9, 0), "auto", torch.bfloat16),  # H100/H200: native bf16
        ((8, 0), "auto", torch.bfloat16),  # A100
        ((7, 5), "auto", torch.float16),  # T4: bf16 would be emulated; fp16 with a scaler
        ((7, 0), "auto", torch.float16),  # V100
        ((6, 0), "fp16", torch.float16),  # P100
        ((8, 6), "fp32", None),
    ],
)
def test_gpu_precision_follows_the_compute_capability(fake_cuda, cap, precision, expect):
    fake_cuda["cap"] = cap
    assert H.pick_dtype(precision, torch.device("cuda:0")) == expect


def test_forced_bf16_on_an_old_gpu_warns_emulated(fake_cuda, capsys):
    fake_cuda["cap"] = (7, 5)
    assert H.pick_dtype("bf16", torch.device("cuda:0")) == torch.bfloat16
    assert "no native bf16" in capsys.readouterr().err


def test_cpu_precision_is_unchanged():
    cpu = torch.device("cpu")
    assert H.pick_dtype("auto", cpu) is None and H.pick_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(PipelineError, match="fp16` needs a CUDA device"):
        H.pick_dtype("fp16", cpu)


@pytest.mark.parametrize("native", [True, False])
def test_native_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, native, fake_cuda):
    """`precision: native`: bf16 on a CPU with AMX-BF16 / AVX512-BF16, fp32 on others; on a GPU, `auto`'s choice."""
    monkeypatch.setattr(H, "cpu_bf16", lambda: native)
    assert H.pick_dtype("native", torch.device("cpu")) == (torch.bfloat16 if native else None)
    fake_cuda["cap"] = (7, 5)
    assert H.pick_dtype("native", torch.device("cuda:0")) == H.pick_dtype("auto", torch.device("cuda:0"))


def test_cpu_bf16_agrees_with_the_kernel_s_cpu_flags():
    """torch's checks against an independent source: Linux's /proc/cpuinfo flags (avx512_bf16, amx_bf16)."""
    import sys
    from pathlib import Path

    assert isinstance(H.cpu_bf16(), bool)
    info = Path("/proc/cpuinfo")
    if sys.platform.startswith("linux") and info.is_file():
        flags = set(next(ln for ln in info.read_text().splitlines() if ln.startswith("flags")).split())
        assert H.cpu_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_predicting_elsewhere_uses_that_devices_precision(fake_cuda):
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    assert H.eval_dtype("bf16", "cuda:0", cpu) is None  # a GPU's bf16 model runs fp32 on a CPU
    assert H.eval_dtype("bf16", "cuda:0", gpu) == torch.bfloat16  # on its own device type: reproduces preds/
    assert H.eval_dtype("bf16", "cpu", cpu, asked="bf16") == torch.bfloat16  # a forced-bf16 CPU model: the same
    assert H.eval_dtype("fp32", "cpu", gpu) == torch.bfloat16  # a CPU model on an A100: its auto precision
    fake_cuda["cap"] = (7, 5)
    assert H.eval_dtype("fp32", "cpu", gpu) == torch.float16


def test_a_native_bf16_model_predicts_in_fp32_on_a_cpu_without_bf16(monkeypatch, capsys):
    """`precision: native` trained in bf16 on an AMX CPU; predicting on a CPU without bf16 instructions runs fp32
    (emulated bf16 is far slower), said once; where the CPU has bf16, or bf16 was forced, bf16 as trained."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(H, "_said", set())
    monkeypatch.setattr(H, "cpu_bf16", lambda: False)
    assert H.eval_dtype("bf16", "cpu", cpu, asked="native") is None
    assert "predicts in fp32 on this CPU" in capsys.readouterr().err
    assert H.eval_dtype("bf16", "cpu", cpu, asked="bf16") == torch.bfloat16  # forced: as its stage evaluated it
    assert H.eval_dtype("fp32", "cpu", cpu, asked="native") is None
    monkeypatch.setattr(H, "cpu_bf16", lambda: True)
    assert H.eval_dtype("bf16", "cpu", cpu, asked="native") == torch.bfloat16


def test_log_words_name_device_and_precision(fake_cuda):
    fake_cuda["cap"] = (9, 0)
    assert H.describe(torch.device("cuda:0"), torch.bfloat16) == "cuda:0 NVIDIA H200, bf16"
    assert H.describe(torch.device("cpu"), None) == f"cpu, {torch.get_num_threads()} threads, fp32"


def test_gpu_speed_settings_and_deterministic(monkeypatch):
    flags = ("benchmark", "deterministic")
    saved = [getattr(torch.backends.cudnn, f) for f in flags] + [
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    ]
    try:
        H.configure(torch.device("cuda:0"), deterministic=False)
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled()
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        H.configure(torch.device("cuda:0"), deterministic=True)
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()  # cuBLAS and scatter kernels too, not only cuDNN's
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        H.configure(torch.device("cuda:0"), deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
        before = torch.backends.cudnn.benchmark
        H.configure(torch.device("cpu"), deterministic=False)  # a CPU run changes nothing
        assert torch.backends.cudnn.benchmark == before
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[2:]


def test_fp16_trains_with_fastais_gradient_scaler():
    from fastai.callback.fp16 import MixedPrecision

    (mp,) = recipe.precision_callbacks(torch.float16, torch.device("cuda:0"))
    assert isinstance(mp, MixedPrecision) and mp.amp_mode.value == "fp16"
    (ac,) = recipe.precision_callbacks(torch.bfloat16, torch.device("cpu"))
    assert isinstance(ac, Autocast) and recipe.precision_callbacks(None, torch.device("cpu")) == []


def test_the_stage_log_line_names_the_device(capsys):
    from conftest import synth

    from pipeline.params import make_spec

    arrays, meta = synth(c=1)
    spec = make_spec({"arch": "logreg", "epochs": 1, "bs": 16, "lr": 1e-3, "flip": False, "pad": 0}, "t")
    member.train_arch("logreg", spec, arrays, meta, seed=0)
    assert f"cpu, {torch.get_num_threads()} threads, fp32" in capsys.readouterr().out


def trained_member(tmp_path, device="cpu", **keys):
    """A small CNN trained by the pipeline and written as models/<key>/ is; returns (folder, TrainResult, arrays)."""
    import json

    from conftest import synth
    from safetensors.torch import save_file

    from pipeline.params import make_spec

    arrays, meta = synth(n=96, size=16, c=1)
    spec = make_spec({"arch": "cnn_small", "epochs": 1, "bs": 16, "lr": 3e-3, "precision": "fp32", **keys}, "t")
    res = member.train_arch("m", spec, arrays, meta, seed=0, device=torch.device(device))
    res.spec.key = "m"
    (tmp_path / "m").mkdir()
    save_file(
        {k: v.cpu().contiguous() for k, v in res.model.state_dict().items()}, str(tmp_path / "m" / "model.safetensors")
    )
    (tmp_path / "m" / "spec.json").write_text(json.dumps(res.spec.to_json()))
    return tmp_path / "m", res, arrays


def test_predict_configures_the_device_and_memory_format_as_the_stage(tmp_path, monkeypatch):
    """pipeline.commands.predict's Model: the stage's device settings (`deterministic` included, around each
    prediction) and channels-last weights, so that on a GPU its predictions reproduce preds/ (there TF32, cuDNN
    autotuning and the layout change them)."""
    import contextlib

    from pipeline.learn import trained
    from pipeline.learn.trained import Model

    folder, res, arrays = trained_member(tmp_path, deterministic=True)
    calls = []
    monkeypatch.setattr(
        trained, "settings", lambda device, det: calls.append((device.type, det)) or contextlib.nullcontext()
    )
    m = Model(folder, "cpu")
    conv = next(p for p in m.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(m.predict_arrays(arrays["test_x"]), res.preds["test"], atol=1e-6)
    assert calls == [("cpu", True)]


def test_progressive_resizing_uploads_the_rows_once(monkeypatch):
    """Where the rows fit on the device (a GPU; here the CPU made to look roomy), each phase's loaders share one
    uploaded copy instead of uploading train and valid again while the previous copy is still referenced."""
    from conftest import synth

    from pipeline.data import loaders as data
    from pipeline.params import make_spec

    uploads = []
    real = data.upload
    monkeypatch.setattr(data, "fits_on", lambda device, nbytes, share=0.25: True)
    monkeypatch.setattr(data, "upload", lambda x, device, rows=4096: uploads.append(len(x)) or real(x, device, rows))
    arrays, meta = synth(n=48, size=16)
    spec = make_spec({"arch": "cnn_small", "phases": [[12, 1], [16, 1]], "bs": 16, "lr": 1e-3}, "t")
    member.train_arch("t", spec, arrays, meta, seed=0, device=torch.device("cpu"))
    assert uploads == [len(arrays["train_y"]), len(arrays["valid_y"])]  # once each, for both phases


def test_the_time_budget_probe_is_freed_before_training(monkeypatch):
    import weakref

    from conftest import synth

    from pipeline.params import make_spec

    built = []
    real = recipe.build_learner

    def spy(*a, **kw):
        learn, setup = real(*a, **kw)
        built.append(weakref.ref(learn))
        return learn, setup

    monkeypatch.setattr(recipe, "build_learner", spy)
    arrays, meta = synth(n=48, size=16)
    spec = make_spec({"arch": "cnn_small", "epochs": 1, "bs": 16, "lr": 1e-3, "time_budget": 1}, "t")
    recipe.budget_recipe("t", spec, arrays, meta, 0, torch.device("cpu"))
    assert len(built) == 1 and built[0]() is None  # the probe learner is gone once the recipe is chosen


def test_accelerate_launch_leaves_mixed_precision_to_fastai(monkeypatch):
    """`accelerate launch` with a config of `mixed_precision: fp16` sets ACCELERATE_MIXED_PRECISION; the trainer
    asks accelerate for none, so fastai's MixedPrecision alone scales the loss."""
    import fastai.distributed

    from pipeline.learn.distributed import data_parallel

    made = []
    monkeypatch.setattr(fastai.distributed, "Accelerator", lambda **kw: made.append(kw))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    learn = synth_learner()
    with data_parallel(learn, torch.device("cpu")):
        pass
    assert made == [{"mixed_precision": "no", "cpu": True}]


def synth_learner():
    from conftest import synth
    from fastai.learner import Learner

    from pipeline.data.loaders import make_dls

    arrays, _ = synth(n=32, size=8)
    dls = make_dls(arrays, 8, 8, [0.5], [0.25], False, 0, torch.device("cpu"))
    return Learner(
        dls, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), loss_func=torch.nn.CrossEntropyLoss()
    )


def test_eval_batch_size_follows_the_device_unless_set():
    from pipeline.params import eval_batch, make_spec

    auto = make_spec({}, "t")
    assert auto.eval_bs == "auto"
    assert eval_batch(auto, "cpu").eval_bs == 128 and eval_batch(auto, "cuda").eval_bs == 1024
    assert eval_batch(make_spec({"eval_bs": 64}, "t"), "cuda").eval_bs == 64
    with pytest.raises(PipelineError, match=r"`t.eval_bs` = 0"):
        make_spec({"eval_bs": 0}, "t")


def test_peak_gpu_memory_of_folds_and_refit_is_the_largest_model_s():
    from conftest import member_metrics

    from pipeline.learn.folds import peak

    assert peak([member_metrics(peak_gpu_mib=m) for m in (300, 900, 500)]) == 900
    assert peak([member_metrics(), member_metrics()]) is None  # CPU runs record none


# ------------------------------------------------------------------------------------------------ on a GPU
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_trains_a_tiny_net(precision):
    from conftest import synth

    from pipeline.params import make_spec

    arrays, meta = synth(n=96, size=16, c=1)
    spec = make_spec({"arch": "cnn_small", "epochs": 2, "bs": 16, "lr": 3e-3, "precision": precision}, "t")
    res = member.train_arch("gpu", spec, arrays, meta, seed=0, device=torch.device("cuda:0"))
    assert res.metrics.device == "cuda:0" and res.metrics.precision == precision
    assert np.isfinite(res.preds["valid"]).all() and np.allclose(res.preds["valid"].sum(1), 1, atol=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_gpu_predict_and_gradcam_match_the_cpu(tmp_path):
    from pipeline.commands.predict import Model

    folder, res, arrays = trained_member(tmp_path, "cuda:0")
    gpu, cpu = Model(folder, "cuda:0"), Model(folder, "cpu")
    pg, pc = gpu.predict_arrays(arrays["test_x"]), cpu.predict_arrays(arrays["test_x"])
    np.testing.assert_allclose(pg, res.preds["test"], atol=1e-5)  # on its device: the stage's own predictions
    np.testing.assert_allclose(pg, pc, atol=1e-3)  # TF32 and cuDNN kernels: close, not bitwise
    cams = gpu.cam(arrays["test_x"][:4])
    assert cams.shape == (4, 16, 16) and np.isfinite(cams).all()


def test_bench_gpu_without_cuda_says_so_and_skips(monkeypatch, capsys, tmp_path):
    """`python -m bench.gpu` on a machine without CUDA: every step skipped, said, nothing written."""
    from bench import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA device" in capsys.readouterr().out and not list(tmp_path.iterdir())
    md = gpu.markdown(
        {
            "gpu": "G",
            "tests": {"summary": "3 passed"},
            "default": {"total_s": 1, "ensemble_test": 0.9, "stages": {"train@a": {"wall_s": 1, "img_per_s": 5}}},
            "overhead": {"pipeline_img_per_s": 9, "bare_img_per_s": 10, "ratio": 0.9},
        }
    )
    assert has_row(md, "train@a", "1", "5") and "= 0.9" in md


def test_bench_gpu_writes_each_step_as_it_ends_and_skips_past_its_time(monkeypatch, tmp_path, mnist_dir):
    """Faked GPU and steps: the results file holds the tests' row before the repro starts, and a step that would
    start after --minutes is named as skipped (a call that runs out of time keeps what it measured)."""
    import json

    from bench import gpu

    monkeypatch.setattr(gpu, "gpu", lambda: "Fake GPU")
    seen = []

    def fake_repro(name, params):
        seen.append(json.loads((tmp_path / "gpu_Fake-GPU.json").read_text()))  # what was on disk when it started
        assert params["data"]["path"] == str(mnist_dir)  # the data it found
        return {"total_s": 1, "ensemble_test": 0.9, "stages": {}}

    monkeypatch.setattr(gpu, "run_tests", lambda: {"rc": 0, "summary": "9 passed", "wall_s": 1})
    monkeypatch.setattr(gpu, "repro", fake_repro)
    monkeypatch.setattr(gpu, "default_params", lambda: {"data": {"path": str(gpu.find_data(mnist_dir))}})
    assert gpu.main(["--out", str(tmp_path), "--skip", "profile", "overhead"]) == 0
    assert seen[0]["tests"]["summary"] == "9 passed" and "default" not in seen[0]
    r = json.loads((tmp_path / "gpu_Fake-GPU.json").read_text())
    assert r["default"]["ensemble_test"] == 0.9
    assert gpu.main(["--out", str(tmp_path), "--minutes", "0"]) == 0
    r = json.loads((tmp_path / "gpu_Fake-GPU.json").read_text())
    assert len(r["skipped"]) == 4 and "past 0.0 min" in r["skipped"][0]
    assert "skipped: tests: not started" in (tmp_path / "gpu_Fake-GPU.md").read_text()


@pytest.mark.gpu
@needs_cuda
def test_gpu_folds_refit_lr_find_and_progressive_resizing():
    """K-fold, refit, lr_find and phases on the GPU path (GPU-resident batches), through train_entry."""
    from conftest import synth

    from pipeline.params import make_spec

    arrays, meta = synth(n=120, size=16, c=3)
    spec = make_spec(
        {
            "arch": "cnn_small",
            "phases": [[12, 1], [16, 1]],
            "bs": 16,
            "lr": "auto",
            "num_it": 10,
            "folds": 2,
            "refit": True,
        },
        "t",
    )
    res = train.train_entry("g", spec, arrays, meta, seed=0, device=torch.device("cuda:0"))
    assert res.metrics.folds.k == 2 and res.metrics.refit is not None and res.metrics.device == "cuda:0"
    assert np.isfinite(res.preds["oof"]).all() and res.preds["test"].shape[0] == len(arrays["test_y"])


@pytest.mark.gpu
@needs_cuda
def test_gpu_nan_stop_is_an_error_not_a_hang():
    from conftest import synth

    from pipeline.params import make_spec

    arrays, meta = synth(n=96, size=16, c=1)
    spec = make_spec({"arch": "cnn_small", "epochs": 1, "bs": 16, "lr": 1e9}, "t")
    with pytest.raises(PipelineError, match="training loss became"):
        member.train_arch("nan", spec, arrays, meta, seed=0, device=torch.device("cuda:0"))


def gpu_env() -> dict:
    """The environment of a process a `gpu` test starts: conftest's ENV with this machine's GPUs visible."""
    import os

    from conftest import ENV

    env = dict(ENV)
    env.pop("CUDA_VISIBLE_DEVICES")
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


@pytest.mark.gpu
@needs_cuda
def test_gpu_predict_in_a_fresh_process_reproduces_the_stage(tmp_path):
    """`pipeline.commands.predict` starts a new process: its device settings (TF32, cuDNN) and layout must be the stage's,
    or its predictions drift from preds/ (the in-process test cannot see that)."""
    import subprocess
    import sys

    folder, res, arrays = trained_member(tmp_path, "cuda:0")
    np.save(tmp_path / "x.npy", arrays["test_x"])
    code = (
        "import sys, numpy as np; from pipeline.learn.trained import Model; "
        f"np.save(sys.argv[1], Model(__import__('pathlib').Path({str(folder)!r}), 'cuda:0')"
        f".predict_arrays(np.load({str(tmp_path / 'x.npy')!r})))"
    )
    from conftest import ROOT

    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.npy")], cwd=ROOT, env=gpu_env(), text=True)
    assert r.returncode == 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), res.preds["test"], atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_gpu_pinned_path_time_budget_and_peak_memory(monkeypatch):
    """Data too big to keep on the GPU (pinned host batches, non_blocking copies), `time_budget` timed on CUDA, and
    a peak memory recorded per model: folds report their largest."""
    from conftest import synth

    from pipeline.data import loaders as data
    from pipeline.params import make_spec

    monkeypatch.setattr(data, "fits_on", lambda device, nbytes, share=0.25: False)  # not resident: pinned batches
    arrays, meta = synth(n=120, size=16, c=3)
    spec = make_spec({"arch": "cnn_small", "epochs": 1, "bs": 16, "lr": 3e-3, "time_budget": 3, "folds": 2}, "t")
    res = train.train_entry("g", spec, arrays, meta, seed=0, device=torch.device("cuda:0"))
    m = res.metrics
    assert m.time_budget and m.time_budget["chosen"] and m.device == "cuda:0"
    assert m.peak_gpu_mib and m.peak_gpu_mib == max(r.metrics.peak_gpu_mib for r in res.folds)
    assert np.isfinite(res.preds["test"]).all()


@pytest.mark.gpu
@needs_cuda
def test_gpu_deterministic_runs_are_bit_for_bit(tmp_path):
    from conftest import synth

    from pipeline.params import make_spec

    arrays, meta = synth(n=96, size=16, c=3)
    spec = make_spec({"arch": "cnn_small", "epochs": 2, "bs": 16, "lr": 3e-3, "deterministic": True}, "t")
    a, b = (member.train_arch("d", spec, arrays, meta, seed=0, device=torch.device("cuda:0")) for _ in range(2))
    assert torch.are_deterministic_algorithms_enabled()
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert np.array_equal(a.preds["test"], b.preds["test"])
    torch.use_deterministic_algorithms(False)


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_gpu_torchrun_one_process_trains_over_nccl(tmp_path):
    """`torchrun --nproc_per_node 1` on the GPU: torchrun's environment (LOCAL_RANK, LOCAL_WORLD_SIZE) resolves to
    cuda:0 and the stage writes once. (One process trains without DDP — fastai's num_distrib() is 1 — so NCCL's
    collectives need a machine with two GPUs: `--nproc_per_node 2` there.)"""
    import subprocess
    import sys

    from conftest import TINY, make_repo, run

    repo = make_repo(tmp_path, {**TINY, "train": {**TINY["train"], "device": "auto"}})
    run("dvc repro prepare", repo)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    r = subprocess.run([*cmd, "-m", "pipeline.train", "mlp"], cwd=repo, env=gpu_env(), capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert out.count("mlp: valid acc") == 1 and "cuda:0" in out
    m = __import__("json").loads((metrics_file(repo, "mlp")).read_text())
    assert m["device"] == "cuda:0" and 0 <= m["valid"]["accuracy"] <= 1
