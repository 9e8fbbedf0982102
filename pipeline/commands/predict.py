"""Predict new images with a trained model or the ensemble.

Reads:  models/<arch>/{spec.json, model.safetensors} (rebuilt from the spec: no pickled learners, no code from
        model files); for `--model ensemble`, ensemble/model.json (members and weights, or the stacker's numbers).
Writes: a CSV: file, then label_1, prob_1, ..., label_k, prob_k.
Run:    python -m pipeline.commands.predict PATH... [--model ensemble|<arch>] [--top-k 3] [--out preds.csv] [--cam DIR]
Python: pipeline.learn.trained's load_ensemble() or load_model("resnet9") -> .predict(images) -> probabilities

Images are preprocessed exactly as in training: any mode PIL reads -> RGB -> the prepared size (bilinear,
antialiased) -> the model's channels (ITU-R 601 luma for gray) -> the model's size and normalisation.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data.images import IMAGE_EXTS, decode
from pipeline.errors import PipelineError
from pipeline.learn.hardware import pick_device
from pipeline.learn.trained import Ensemble, Model, load_ensemble, load_model


def expand(paths: Sequence[str]) -> list[Path]:
    """Files as given, folders walked recursively for image files (sorted); missing paths are errors."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTS)
        elif p.exists():
            out.append(p)
        else:
            raise PipelineError(f"{p}: no such file or folder")
    return out


def top_k_rows(files: list[str], probs: np.ndarray, classes: list[str], k: int) -> list[list]:
    """CSV rows: each file's k most likely classes with their probabilities."""
    k = min(k, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[f, *sum(([classes[j], f"{p[j]:.6f}"] for j in o), [])] for f, p, o in zip(files, probs, order)]


def write_cams(out: Path, names: list[str], images: list, predictor: Model | Ensemble, used: set[str]) -> None:
    """One Grad-CAM overlay per image, `out/<stem>.png` (`<stem>-2.png`, … where stems repeat in `used`)."""
    from PIL import Image

    from pipeline.inspect.cam import overlay

    model = predictor.members[0] if isinstance(predictor, Ensemble) else predictor
    x = model.arrays(images)
    cams = model.cam(x)
    out.mkdir(parents=True, exist_ok=True)
    for name, img, cam in zip(names, x, cams):
        side = max(128, img.shape[0])
        big = np.asarray(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).resize((side, side)))
        big = big[..., None] if big.ndim == 2 else big
        stem, n = Path(name).stem, 1
        while stem in used:
            n += 1
            stem = f"{Path(name).stem}-{n}"
        used.add(stem)
        Image.fromarray(overlay(big, cam)).save(out / f"{stem}.png")


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.commands.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (walked recursively)")
    ap.add_argument(
        "--model",
        default="ensemble",
        help="`ensemble` (default), an architecture key of params.yaml, or a snapshot member `<key>@e<epoch>`",
    )
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--out", default="-", help="CSV file (default: stdout)")
    ap.add_argument("--bs", type=int, default=256, help="images decoded per chunk (default 256)")
    ap.add_argument(
        "--eval-bs", type=int, default=None, help="images per forward pass (default: the stage's eval_bs, as preds/)"
    )
    ap.add_argument("--root", default=".", help="the project folder holding models/ and ensemble/")
    ap.add_argument("--device", default="auto", help="auto (the GPU where CUDA is usable, else cpu), cpu, cuda:N")
    ap.add_argument(
        "--cam",
        metavar="DIR",
        help="also write a Grad-CAM overlay per image into DIR (<file stem>.png), from the model, or for the "
        "ensemble from its best member by validation accuracy",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.commands.predict`: writes or prints the predictions; 1 on an error."""
    ap = parser()
    args = ap.parse_args(argv)
    if args.top_k < 1:
        ap.error("--top-k must be ≥ 1")
    from tqdm import tqdm

    try:
        files = expand(args.paths)
        device = pick_device(args.device, where="--device")
        predictor = (
            load_ensemble(args.root, device) if args.model == "ensemble" else load_model(args.model, args.root, device)
        )
        if args.cam:
            from pipeline.inspect.cam import pick_layer

            looked_at = predictor.members[0] if isinstance(predictor, Ensemble) else predictor
            pick_layer(looked_at.model, looked_at.spec.cam_layer)  # fails before any work
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    k = min(args.top_k, len(predictor.classes))
    header = ["file"] + sum(([f"label_{i + 1}", f"prob_{i + 1}"] for i in range(k)), [])
    rows, bad, cam_names = [], [], set()
    # decoded straight at the model's input size (a JPEG in draft mode): a folder of photos never sits in memory
    # at full resolution; the result is what to_array makes of the full image, within JPEG's DCT scaling
    size = (predictor.members[0] if isinstance(predictor, Ensemble) else predictor).spec.native_size
    for i in tqdm(range(0, len(files), args.bs), desc="predict", unit="batch", file=sys.stderr, disable=None):
        batch, names = [], []
        for f in files[i : i + args.bs]:
            try:
                batch.append(decode(f, size))
                names.append(str(f))
            except Exception as e:  # any exception: PIL raises many types for broken files
                bad.append(str(f))
                print(f"warning: skipping unreadable image {f} ({type(e).__name__}: {e})", file=sys.stderr)
        if batch:
            rows += top_k_rows(names, predictor.predict(batch, args.eval_bs), predictor.classes, k)
            if args.cam:
                write_cams(Path(args.cam), names, batch, predictor, cam_names)
    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="")  # closed at the end of main
    try:
        csv.writer(out).writerows([header, *rows])
    finally:
        if out is not sys.stdout:
            out.close()
    print(
        f"{len(rows)} images predicted with {predictor.name}" + (f"; {len(bad)} unreadable, skipped" if bad else ""),
        file=sys.stderr,
    )
    return 0 if rows or not bad else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
