"""Benchmark: the GPU path, as one prepared command for a lent GPU (sized for one 10-minute call on one H200).

0. The data: Fashion-MNIST from params.yaml's `data.path`, else Debian's dataset-fashion-mnist (installed with
   apt-get where it can be), else prepare's download; a machine with none of them stops here, saying where it looked.
1. `pytest -m gpu`: the tests that need CUDA (bf16 and fp16 training, predict in a fresh process and Grad-CAM on
   the GPU, the pinned-batch path, time_budget, peak memory, determinism, torchrun).
2. The default benchmark (params.yaml as committed, `device: auto`) through `dvc repro` in a project of its own
   under bench/cache/gpu/, every stage under bench.scale's measuring wrapper: wall time, img/s, accuracy, and the
   peak GPU memory each train stage records (`peak_gpu_mib` in metrics/<key>.json).
3. A GPU profile: the four ImageNet architectures of the benchmark on the whole training split for
   --profile-epochs epochs at 32 px, and the fast recipe at full width, through `dvc repro` again; and the fast
   recipe's img/s beside a bare PyTorch loop on the same GPU, data and batch size (the pipeline's overhead).
Each step's results are written as soon as it ends (bench/results/gpu_<gpu name>.{json,md}), and a step that
would start after --minutes (default 8.5) is skipped and said so, so a call that runs out of time keeps what it
measured. Without a usable CUDA device it says so, skips every step and writes nothing (exit 0), so that it
runs, and is tested, on any machine.
Run:    python -m bench.gpu [--profile-epochs 3] [--skip tests repro profile] [--minutes 8.5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.machine import ROOT, write_json, write_text
from pipeline.artifacts import ensemble_metrics_file, metrics_file
from pipeline.inspect.tables import markdown_table

CACHE = ROOT / "bench" / "cache" / "gpu"
PROFILE = {  # the benchmark's architectures, on the whole training split (no train_limit), at 32 px
    "resnet34": {"size": 32, "bs": 256, "lr": 0.002, "tta": False},
    "vgg19_bn": {"arch": "torchvision.vgg19_bn", "size": 32, "bs": 256, "lr": 0.001, "tta": False},
    "densenet121": {"size": 32, "bs": 256, "lr": 0.002, "tta": False},
    "efficientnet_b0": {"size": 32, "bs": 256, "lr": 0.005, "tta": False},
    "fast_full": {"arch": "resnet9", "bs": 512, "lr": 0.01},  # the fast recipe at the net's full width
}


def gpu() -> str | None:
    """The name of the usable GPU, or None (and why, printed)."""
    from pipeline.learn.hardware import cuda_usable

    ok, why = cuda_usable()
    if ok:
        import torch

        return torch.cuda.get_device_name(0)
    print(f"no CUDA device ({why}): skipping `pytest -m gpu`, the GPU `dvc repro` and the GPU profile")
    return None


def run_tests() -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    last = (r.stdout.strip().splitlines() or [""])[-1]
    return {"rc": r.returncode, "summary": last, "wall_s": round(time.perf_counter() - t0, 1)}


def repro(name: str, params: dict) -> dict:
    """`dvc repro` of params in bench/cache/gpu/<name>/repo under bench.scale's wrapper: stages and metrics."""
    from bench import scale
    from pipeline.artifacts import load_ensemble_metrics, load_member_metrics

    repo, total, log = scale.repro_project(CACHE / name, params)
    stages = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        s = scale.stage_name(r["cmd"])
        rec = {"wall_s": r["wall_s"], "peak_rss_gib": round(r["peak_rss"] / 2**30, 2)}
        if s.startswith(("train@", "variant@")):
            m = load_member_metrics(metrics_file(repo, s.split("@")[1]), s.split("@")[1])
            rec |= {k: getattr(m, k) for k in ("img_per_s", "train_s", "peak_gpu_mib", "device", "precision")}
            rec |= {"valid_acc": m.valid.accuracy, "test_acc": m.test.accuracy if m.test else None}
        stages[s] = rec
    ens = load_ensemble_metrics(ensemble_metrics_file(repo))
    return {"total_s": round(total, 1), "stages": stages, "ensemble_test": ens.test.accuracy if ens.test else None}


def find_data(path: Path) -> Path:
    """A folder holding Fashion-MNIST's four IDX files: `path` (params.yaml's data.path), else Debian's folder
    (after `apt-get install dataset-fashion-mnist` where apt can), else `path` filled by prepare's download."""
    from pipeline.data import array_formats, downloads

    deb = downloads.DEBIAN_PLACES["fashion-mnist"]
    files = [f for pair in array_formats.IDX_FILES.values() for f in pair]
    has = lambda d: all(downloads.find_variant(d / f) for f in files)  # noqa: E731
    if has(path):
        return path
    if not has(deb) and subprocess.run("command -v apt-get", shell=True, capture_output=True).returncode == 0:
        subprocess.run("apt-get install -y -qq dataset-fashion-mnist", shell=True, capture_output=True)
    if has(deb):
        return deb
    array_formats.read_mnist_like("fashion-mnist", path, download=True)  # downloads, or says where it looked
    return path


def default_params() -> dict:
    import yaml

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    path = Path(p["data"]["path"])
    p["data"]["path"] = str(find_data(path if path.is_absolute() else ROOT / path))
    return p  # eval_bs: auto is 1024 on a GPU


def profile_params(epochs: int) -> dict:
    p = default_params()
    p["archs"] = {k: {**v, "epochs": epochs} for k, v in PROFILE.items()}
    p["variants"] = {}
    p["ensemble"] = {**p.get("ensemble", {}), "select": "threshold", "threshold": 0.0}
    return p


def bare_loop_ratio(epochs: int = 2, bs: int = 512, root: Path | None = None, device=None, arch=None) -> dict:
    """The fast recipe's training img/s through the pipeline against a bare PyTorch loop on the same net, data,
    batch size, batch transform and precision (bench.overhead's: bf16, or fp16 with a scaler on GPUs without bf16),
    median of `epochs` epochs after a warm-up: both time the training pass alone (the pipeline's validation pass is
    outside its timer) over the same full batches."""
    import torch

    from bench.overhead import TrainTimer, bare_epoch
    from pipeline.artifacts import load_prepared
    from pipeline.data.loaders import BatchTfm, to_tensor
    from pipeline.learn import archs, recipe
    from pipeline.learn.hardware import concrete, dtype_name
    from pipeline.params import make_spec

    prep = load_prepared(root or CACHE / "profile" / "repo")
    arrays, meta = prep.arrays, prep.meta
    device = concrete(device or "cuda")
    entry = {**PROFILE["fast_full"], **(arch or {})}
    spec = make_spec({**entry, "epochs": 1, "bs": bs}, "fast_full")
    learn, setup = recipe.build_learner("fast_full", spec, arrays, meta, seed=0, device=device)
    timer = TrainTimer()
    learn.add_cb(timer)
    net = archs.build_model(setup.arch, setup.n_in, setup.n_out, setup.native, model_kwargs=spec.model_kwargs)[0]
    net = net.to(device, memory_format=torch.channels_last)
    x = to_tensor(np.asarray(setup.arrays["train_x"])).to(device)
    y = torch.from_numpy(setup.arrays["train_y"]).to(device)
    tfm = BatchTfm(setup.native, setup.mean, setup.std, True, spec.flip, spec.pad, spec.channels_last)
    n = len(y) - len(y) % setup.bs
    pipe, bare = [], []
    with learn.no_logging():
        learn.fit(1, 1e-3)  # warm-up of both
        bare_epoch(net, x, y, tfm, setup.bs, setup.dtype, device)
        for _ in range(epochs):
            learn.fit(1, 1e-3)
            pipe.append(n / timer.seconds)
            bare.append(n / bare_epoch(net, x, y, tfm, setup.bs, setup.dtype, device))
    p, b = float(np.median(pipe)), float(np.median(bare))
    return {
        "pipeline_img_per_s": round(p),
        "bare_img_per_s": round(b),
        "ratio": round(p / b, 3),
        "precision": dtype_name(setup.dtype),
    }


def markdown(r: dict) -> str:
    out = [
        f"`python -m bench.gpu` on {r['gpu']} ({r.get('minutes', '?')} min)\n",
        f"`pytest -m gpu`: {r['tests']['summary']}\n",
    ]
    for part in ("default", "profile"):
        if part not in r:
            continue
        d = r[part]
        out.append(f"\n{part}: `dvc repro` {d['total_s']} s; ensemble test {d['ensemble_test']}\n")
        cols = ("img_per_s", "peak_gpu_mib", "valid_acc", "test_acc")
        table = [[s, v["wall_s"], *(v.get(c) or "" for c in cols)] for s, v in d["stages"].items()]
        out.append(
            markdown_table(["stage", "wall s", "img/s", "peak GPU MiB", "valid acc", "test acc"], table).rstrip("\n")
        )
    for why in r.get("skipped", []):
        out.append(f"\nskipped: {why}")
    if "overhead" in r:
        o = r["overhead"]
        out.append(
            f"\nfast recipe, pipeline ÷ bare PyTorch loop: {o['pipeline_img_per_s']} / {o['bare_img_per_s']} img/s "
            f"= {o['ratio']}"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile-epochs", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "repro", "profile", "overhead"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--minutes", type=float, default=8.5, help="no step starts after this many minutes")
    args = ap.parse_args(argv)
    name = gpu()
    if name is None:
        return 0
    t0 = time.perf_counter()
    r: dict = {"gpu": name, "tests": {"summary": "skipped"}, "skipped": []}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_" + "".join(c if c.isalnum() else "-" for c in name).strip("-")

    def step(key: str, fn) -> None:
        """Run one step unless skipped or out of time; write everything measured so far."""
        if key in args.skip:
            return
        if time.perf_counter() - t0 > 60 * args.minutes:
            r["skipped"].append(f"{key}: not started, past {args.minutes} min")
        else:
            r.update(fn())
        r["minutes"] = round((time.perf_counter() - t0) / 60, 1)
        write_json(args.out / f"{stem}.json", r)
        write_text(args.out / f"{stem}.md", markdown(r))
        print(markdown(r), flush=True)

    step("tests", lambda: {"tests": run_tests()})
    step("repro", lambda: {"default": repro("default", default_params())})
    step("profile", lambda: {"profile": repro("profile", profile_params(args.profile_epochs))})
    step("overhead", lambda: {"overhead": bare_loop_ratio()} if (CACHE / "profile" / "repo").is_dir() else {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
