"""Benchmark: the seeds' data sizes through `dvc repro`, per stage wall time, images/s and peak memory.

It writes its own data in the real layouts, from Fashion-MNIST's images (`make data`; scikit-learn's digits where
Fashion-MNIST is absent, and in --small mode), so that the classes are learnable and accuracy means something:
- `tiny`: a tiny-imagenet-200 folder of the full size: 200 classes (10 garment classes × 20 tints) × 500 training
  JPEGs of 64 px, val/ with val_annotations.txt (10 000), test/images (10 000, unlabelled);
- `photos`: an ImageFolder of 640×480 JPEGs (the garment in a random tint, on a lit textured background; ~45 KB, scale_photos.json):
  train/<class>/ (3 000) and a labelled test/<class>/ (500), prepared at 64 px.
Each set gets a git + DVC project under bench/cache/scale/<set>/repo holding the pipeline's code and a small
`archs` set (logreg; the fast ResNet-9 at 32 px on a subset), whose stage commands run under this module's
`measure` wrapper: wall time, the stage process's exact peak resident memory (getrusage) and the sampled peak of
its whole process tree (prepare's decode workers included). Then `dvc repro`, and `dvc status` once more to time
DVC's own hashing of the raw folder with a warm cache.
Writes bench/results/scale_<set>.{json,md} (--out to change).
Run:    python -m bench.scale [--sets tiny photos] [--small]   (full size: several minutes on 2 CPU cores; `dvc_repro_s` in each result)
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bench.machine import ROOT, cpu_name, new_project, write_json, write_text
from pipeline.artifacts import ensemble_metrics_file, metrics_file
from pipeline.inspect.tables import markdown_table

CACHE = ROOT / "bench" / "cache" / "scale"
FAST = {"arch": "resnet9", "model_kwargs": {"widths": [16, 32, 64, 128]}, "size": 32, "lr": 0.005, "tta": False}
SIZES = {  # set -> (full, small)
    "tiny": (
        {"classes": 200, "per_class": 500, "val": 10_000, "test": 10_000},
        {"classes": 20, "per_class": 12, "val": 40, "test": 20},
    ),
    "photos": (
        {"classes": 10, "per_class": 300, "test_per_class": 50, "wh": (640, 480)},
        {"classes": 2, "per_class": 10, "test_per_class": 3, "wh": (320, 240)},
    ),
}


# --------------------------------------------------------------------------------------------- the wrapper
def measure(out: Path, cmd: list[str]) -> int:
    """Run cmd; append its wall time and peak memory (exact for its own process, sampled for its tree) to out."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    tree_peak, done = [0], threading.Event()

    def sample():
        p = psutil.Process(proc.pid)
        while not done.wait(0.1):
            try:
                procs = [p, *p.children(recursive=True)]
                tree_peak[0] = max(tree_peak[0], sum(q.memory_info().rss for q in procs if q.is_running()))
            except psutil.Error:
                pass

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    done.set()
    th.join()
    wall = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child: the stage process
    rec = {"cmd": " ".join(cmd), "rc": rc, "wall_s": round(wall, 2), "peak_rss": own, "peak_tree": tree_peak[0]}
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rc


# --------------------------------------------------------------------------------------------- data
def source_images(small: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """28×28 uint8 garment images and labels: Fashion-MNIST where installed, else digits upscaled."""
    from pipeline.data import array_formats
    from pipeline.errors import PipelineError

    if not small:
        try:
            raw = array_formats.read_mnist_like("fashion-mnist", None, download=False)
            return raw.train_x[..., 0], raw.train_y, "fashion-mnist"
        except PipelineError:
            pass
    from PIL import Image

    raw = array_formats.read_digits(0)
    x = np.stack(
        [np.asarray(Image.fromarray(im[..., 0]).resize((28, 28), Image.Resampling.BILINEAR)) for im in raw.train_x]
    )
    return x, raw.train_y, "digits"


def tint(k: int, n: int) -> np.ndarray:
    """n well-spread colours (hue, then two brightness levels)."""
    h = (k % 10) / 10 + (k // 10) * 0.05
    v = 1.0 if k % 2 == 0 else 0.7
    return np.array(colorsys.hsv_to_rgb(h % 1.0, 0.85, v)) * 255


def render_tiny(task) -> int:
    """JPEGs of 64 px: the garment upscaled, in its class's tint, on a dark noisy background."""
    from PIL import Image

    items, seed = task
    rng = np.random.default_rng(seed)
    for path, img, colour in items:
        g = np.asarray(Image.fromarray(img).resize((64, 64), Image.Resampling.BILINEAR), np.float32)[..., None] / 255
        bg = 30 + rng.normal(0, 6, (64, 64, 3))
        rgb = np.clip(bg * (1 - g) + colour * g, 0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path, quality=90)
    return len(items)


def render_photos(task) -> int:
    """640×480 JPEGs: the garment, tinted, centred on a lit, textured background (~45 KB at quality 85)."""
    from PIL import Image

    items, seed, (w, h) = task
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for path, img, colour in items:
        side = int(h * 0.8)
        g = np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255
        light = 90 + 80 * np.cos((xx / w - rng.random()) * 3) * np.sin((yy / h + rng.random()) * 2)
        bg = np.stack([light * c for c in rng.uniform(0.6, 1.0, 3)], -1) + rng.normal(0, 7, (h, w, 3))
        y0, x0 = (h - side) // 2 + rng.integers(-20, 21), (w - side) // 2 + rng.integers(-60, 61)
        a = np.zeros((h, w, 1), np.float32)
        a[y0 : y0 + side, x0 : x0 + side, 0] = g
        rgb = np.clip(bg * (1 - a) + colour * a, 0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path, quality=85)
    return len(items)


def pick(y: np.ndarray, cls: int, n: int, rng) -> np.ndarray:
    return rng.choice(np.flatnonzero(y == cls), n, replace=n > (y == cls).sum())


def render(fn, tasks: list, workers: int) -> None:
    with get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(fn, tasks):
            pass


def make_tiny(root: Path, cfg: dict, x: np.ndarray, y: np.ndarray, workers: int) -> Path:
    """The official tiny-imagenet-200 layout: wnids.txt, words.txt, train/<wnid>/images, val/, test/images."""
    rng = np.random.default_rng(0)
    n, k = cfg["classes"], len(np.unique(y))
    wnids = [f"n{9000000 + c:08d}" for c in range(n)]
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tgarment {c % k}, tint {c // k}\n" for c, w in enumerate(wnids)))
    items = []
    for c, w in enumerate(wnids):
        for j, i in enumerate(pick(y, c % k, cfg["per_class"], rng)):
            items.append((base / "train" / w / "images" / f"{w}_{j}.JPEG", x[i], tint(c // k, n // k)))
    val_cls = rng.integers(0, n, cfg["val"])
    ann = []
    for j, c in enumerate(val_cls):
        i = pick(y, c % k, 1, rng)[0]
        items.append((base / "val" / "images" / f"val_{j}.JPEG", x[i], tint(c // k, n // k)))
        ann.append(f"val_{j}.JPEG\t{wnids[c]}\t0\t0\t63\t63")
    (base / "val").mkdir(parents=True, exist_ok=True)
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    for j, c in enumerate(rng.integers(0, n, cfg["test"])):
        i = pick(y, c % k, 1, rng)[0]
        items.append((base / "test" / "images" / f"test_{j}.JPEG", x[i], tint(c // k, n // k)))
    render(render_tiny, [(items[s : s + 2000], s) for s in range(0, len(items), 2000)], workers)
    return root


def make_photos(root: Path, cfg: dict, x: np.ndarray, y: np.ndarray, workers: int) -> Path:
    """ImageFolder: train/<class>/*.jpg and a labelled test/<class>/*.jpg."""
    rng = np.random.default_rng(1)
    items = []
    for c in range(cfg["classes"]):
        name = f"class_{c}"
        idx = pick(y, c, cfg["per_class"] + cfg["test_per_class"], rng)
        for j, i in enumerate(idx):
            split = "train" if j < cfg["per_class"] else "test"
            items.append((root / split / name / f"img_{j}.jpg", x[i], tint(int(rng.integers(0, 20)), 20)))
    render(render_photos, [(items[s : s + 100], s, cfg["wh"]) for s in range(0, len(items), 100)], workers)
    return root


def raw_data(name: str, small: bool, workers: int) -> tuple[Path, str]:
    """The set's folder under bench/cache/scale, made once per size (a stamp marks it complete)."""
    cfg = SIZES[name][small]
    folder = CACHE / f"{name}{'-small' if small else ''}" / "raw"
    stamp = folder / ".complete"
    if stamp.is_file():
        return folder, stamp.read_text().strip()
    shutil.rmtree(folder, ignore_errors=True)
    x, y, src = source_images(small)
    t0 = time.perf_counter()
    (make_tiny if name == "tiny" else make_photos)(folder, cfg, x, y, workers)
    print(f"{name}: wrote {folder} from {src} in {time.perf_counter() - t0:.0f} s", flush=True)
    stamp.write_text(src + "\n")
    return folder, src


# --------------------------------------------------------------------------------------------- the project
def params(name: str, raw: Path, small: bool, archs: list[str] | None = None) -> dict:
    if name == "tiny":
        data = {"name": "tiny-imagenet", "path": str(raw), "download": False}
        fast = {**FAST, "epochs": 1, "train_limit": None if small else 20_000}
    else:
        data = {"name": "folder", "path": str(raw), "size": 64, "valid_pct": 0.1}
        fast = {**FAST, "epochs": 2}
    return {
        "seed": 0,
        "metric": "auto",
        "data": data,
        "train": {"bs": 16 if small else 128, "eval_bs": 128, "lr": 0.001, "pad": 2, "flip": False, "tta": False},
        "archs": {k: v for k, v in {"logreg": {"epochs": 1, "pad": 0}, "fast": fast}.items() if k in (archs or [k])},
        "variants": {},
        "ensemble": {"select": "threshold", "threshold": 0.0, "method": "best"},
    }


def make_project(folder: Path, p: dict, stages_log: Path) -> Path:
    """A git + DVC repository with the pipeline's code; every stage command runs under `measure`."""
    dvc_yaml = (ROOT / "dvc.yaml").read_text()
    dvc_yaml = dvc_yaml.replace("cmd: python -m ", f"cmd: python -m bench.scale measure {stages_log} -- python -m ")
    return new_project(folder / "repo", p, dvc_yaml, bench_files=("__init__.py", "scale.py", "machine.py"))


def repro_project(folder: Path, p: dict) -> tuple[Path, float, Path]:
    """A fresh project of params `p` in folder/repo and its `dvc repro`, every stage measured:
    (the repo, the seconds it took, the stages' log)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "stages.jsonl"
    log.unlink(missing_ok=True)
    repo = make_project(folder, p, log)
    total, _ = sh("dvc repro", repo)
    return repo, total, log


def sh(cmd: str, cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    env = {"HF_HUB_OFFLINE": "1", **os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env |= {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    r = subprocess.run(cmd, shell=True, cwd=cwd, env=env, text=True, capture_output=True)
    if r.returncode:
        sys.exit(f"{cmd} failed in {cwd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0, r.stdout + r.stderr


def stage_name(cmd: str) -> str:
    mod = cmd.split("python -m ", 1)[-1].split()
    if mod[0] == "pipeline.train":
        return f"train@{mod[1]}"
    return {
        "pipeline.prepare": "prepare",
        "pipeline.plan": "plan",
        "pipeline.race": "race",
        "ensembles.ensemble": "ensemble",
        "pipeline.report": "report",
    }.get(mod[0], mod[0])


def run_set(name: str, small: bool, workers: int, target: str = "", archs: list[str] | None = None) -> dict:
    from pipeline.artifacts import images_file, load_ensemble_metrics, load_member_metrics, load_prepared, prepared_dir

    raw, src = raw_data(name, small, workers)
    folder = raw.parent
    log = folder / "stages.jsonl"
    log.unlink(missing_ok=True)
    p = params(name, raw, small, archs)
    repo = make_project(folder, p, log)
    n_files = sum(1 for q in raw.rglob("*") if q.is_file() and not q.name.startswith("."))
    repro_s, out = sh(f"dvc repro {target}".strip(), repo)
    status_s, _ = sh("dvc status", repo)
    decoded = re.search(r"decoded (\d+) image files in ([\d.]+) s \((\d+) img/s, (\d+) processes\)", out)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    prep = prepared_dir(repo)
    meta = load_prepared(repo).meta
    x_bytes = sum(images_file(prep, s).stat().st_size for s in ("train", "valid", "test"))
    all_bytes = sum(f.stat().st_size for f in prep.iterdir())
    n_images = sum(meta.counts.values())
    stages = {}
    for r in recs:
        s = stage_name(r["cmd"])
        rec = {"wall_s": r["wall_s"], "peak_rss_gib": r["peak_rss"] / 2**30, "peak_tree_gib": r["peak_tree"] / 2**30}
        rec["peak_over_arrays"] = r["peak_rss"] / all_bytes
        rec["peak_minus_arrays_gib"] = (r["peak_rss"] - all_bytes) / 2**30
        if s == "prepare":
            rec["img_per_s"] = n_images / r["wall_s"]
            if decoded:
                rec["decode_img_per_s"], rec["decode_processes"] = int(decoded.group(3)), int(decoded.group(4))
        if s.startswith("train@"):
            m = load_member_metrics(metrics_file(repo, s.split("@")[1]), s.split("@")[1])
            rec |= {"valid_acc": m.valid.accuracy, "train_images": m.train_images, "img_per_s": m.img_per_s}
        stages[s] = rec
    ens = load_ensemble_metrics(ensemble_metrics_file(repo)) if not target else None
    import psutil

    return {
        "set": name,
        "small": small,
        "source": src,
        "raw_files": n_files,
        "raw_bytes": sum(q.stat().st_size for q in raw.rglob("*") if q.is_file()),
        "images": meta.counts,
        "classes": len(meta.classes),
        "image_shape": meta.image_shape,
        "arrays_bytes": all_bytes,
        "image_arrays_bytes": x_bytes,
        "stages": stages,
        "dvc_repro_s": round(repro_s, 1),
        "dvc_overhead_s": round(repro_s - sum(r["wall_s"] for r in recs), 1),
        "dvc_status_s": round(status_s, 1),
        "ensemble": ens
        and {
            "chosen": ens.chosen,
            "valid": ens.valid.accuracy,
            "strategies": {k: v.valid.accuracy for k, v in ens.strategies.items()},
            "stacking_form": ens.strategies["stacking"].form if "stacking" in ens.strategies else None,
        },
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30),
        },
    }


def markdown(r: dict) -> str:
    gib = r["arrays_bytes"] / 2**30
    head = (
        f"`python -m bench.scale --sets {r['set']}{' --small' if r['small'] else ''}`: {r['raw_files']} files "
        f"({r['raw_bytes'] / 2**20:.0f} MiB) from {r['source']}, {r['classes']} classes, prepared "
        f"{' / '.join(f'{v} {k}' for k, v in r['images'].items())} images of {'×'.join(map(str, r['image_shape']))}: "
        f"arrays {gib:.2f} GiB. Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, "
        f"{r['machine']['memory_gib']} GiB.\n\n"
    )
    rows = []
    for s, v in r["stages"].items():
        ips = f"{v['img_per_s']:.0f}" if "img_per_s" in v else ""
        acc = f"{100 * v['valid_acc']:.2f} %" if "valid_acc" in v else ""
        rows.append(
            [s, f"{v['wall_s']:.1f}", ips, f"{v['peak_rss_gib']:.2f}", f"{v['peak_over_arrays']:.2f}"]
            + [f"{v['peak_minus_arrays_gib']:+.2f}", f"{v['peak_tree_gib']:.2f}", acc]
        )
    header = ["stage", "wall s", "images/s", "peak RSS GiB (stage process)", "× arrays", "− arrays GiB"]
    table = markdown_table([*header, "peak GiB (process tree)", "valid acc"], rows).rstrip("\n")
    e, p = r["ensemble"], r["stages"]["prepare"]
    decode = (
        f"\n\nprepare's images/s is over the stage's whole wall time (Python start, listing, splitting, statistics); "
        f"its decoding alone ran at {p['decode_img_per_s']} img/s on {p['decode_processes']} processes."
        if "decode_img_per_s" in p
        else ""
    )
    ensemble = (
        f"\n\nEnsemble ({e['chosen']}, chosen by validation): valid {100 * e['valid']:.2f} %; strategies (valid): "
        + ", ".join(f"{k} {100 * v:.2f} %" for k, v in e["strategies"].items())
        + (f"; stacking form: {e['stacking_form']}" if e["stacking_form"] else "")
        + "."
        if e
        else ""
    )
    tail = (
        decode
        + ensemble
        + f"\n\n`dvc repro` {r['dvc_repro_s']:.0f} s in all, of which DVC itself (hashing the {r['raw_files']}-file "
        f"raw folder and the outputs, checks, caching) {r['dvc_overhead_s']:.0f} s; a `dvc status` after it "
        f"{r['dvc_status_s']:.1f} s.\n"
    )
    return head + table + tail


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["measure"]:
        return measure(Path(argv[1]), argv[argv.index("--") + 1 :])
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["tiny", "photos"], choices=list(SIZES))
    ap.add_argument("--small", action="store_true", help="a few dozen images per set: the test's mode")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--target", default="", help="a stage to reproduce (and what it needs), e.g. prepare; default all")
    ap.add_argument("--archs", nargs="+", choices=["logreg", "fast"], help="the members (default: both)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes writing the data")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        r = run_set(name, args.small, args.workers, args.target, args.archs)
        stem = f"scale_{name}{'_small' if args.small else ''}{'_' + '-'.join(args.archs) if args.archs else ''}"
        write_json(args.out / f"{stem}.json", r)
        md = markdown(r)
        write_text(args.out / f"{stem}.md", md)
        print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
