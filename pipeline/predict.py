"""Predict new images with a trained model or the ensemble.

Reads:  models/<arch>/{spec.json, model.safetensors} (rebuilt from the spec: no pickled learners, no code from
        model files); for `--model ensemble`, ensemble/model.json (members and weights, or the stacker's numbers).
Writes: a CSV: file, then label_1, prob_1, ..., label_k, prob_k.
Run:    python -m pipeline.predict PATH... [--model ensemble|<arch>] [--top-k 3] [--out preds.csv] [--cam DIR]
Python: load_ensemble() or load_model("resnet9") -> .predict(images) -> probabilities (N × classes)

Images are preprocessed exactly as in training: any mode PIL reads -> RGB -> the prepared size (bilinear,
antialiased) -> the model's channels (ITU-R 601 luma for gray) -> the model's size and normalisation.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.hardware import eval_dtype, pick_device
from pipeline.images import IMAGE_EXTS, decode, to_channels


def to_array(image, size: int, n_in: int) -> np.ndarray:
    """A PIL image, a path or an H×W(×C) uint8 array -> uint8 size×size×n_in, as the prepare stage makes them."""
    return to_channels({"x": decode(image, size)[None]}, n_in)["x"][0]


class Model:
    """One trained architecture, rebuilt from models/<key>/spec.json and its safetensors weights."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu", stage_key: str | None = None):
        from safetensors.torch import load_file

        from pipeline import archs
        from pipeline.data import BatchTfm

        spec_file, weights = folder / "spec.json", folder / "model.safetensors"
        if not spec_file.is_file():
            raise PipelineError(
                f"{spec_file}: missing; train the model first (dvc repro train@{stage_key or folder.name})"
            )
        self.spec = s = json.loads(spec_file.read_text())
        self.name, self.classes, self.device = s["key"], s["classes"], torch.device(device)
        # `folds: K`: the entry is its K fold models, averaged as the train stage averaged them; Grad-CAM looks at
        # the first one
        self.folds = [Model(folder / f, device, s["key"]) for f in s.get("folds") or []]
        if self.folds:
            self.model, self.tfm, self.dtype = self.folds[0].model, self.folds[0].tfm, self.folds[0].dtype
            return
        if not weights.is_file():
            raise PipelineError(f"{weights}: missing; train the model first (dvc repro train@{s['key']})")
        self.model, _ = archs.build_model(
            archs.resolve(s["arch"]),
            s["n_in"],
            s["n_out"],
            s["native_size"],
            pretrained=False,
            ps=s["ps"],
            model_kwargs=s["model_kwargs"],
        )
        try:
            state = load_file(str(weights))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a damaged header or body
            raise PipelineError(
                f"{weights}: damaged, cannot be read ({type(e).__name__}: {e}); restore it with "
                f"`dvc checkout {folder}` or rebuild it with `dvc repro train@{s['key']}`"
            ) from e
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise PipelineError(
                f"{weights}: does not fit {s['arch']} (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self.model.to(self.device).eval()
        self.tfm = BatchTfm(s["size"], s["mean"], s["std"], train=False, channels_last=s["channels_last"])
        # on the device type it trained on, the precision the stage evaluated with (older specs: fp32, cpu), so
        # predictions match preds/<key>/; on another, that device's own (a GPU's bf16 model runs fp32 on a CPU)
        self.dtype = eval_dtype(s.get("precision", "fp32"), s.get("device", "cpu"), self.device)

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        """Prepared-format uint8 arrays -> the normalised batch the network takes."""
        from pipeline.data import to_tensor

        (xb,) = self.tfm((to_tensor(x).to(self.device),))
        return xb

    def cam(self, x: np.ndarray, targets: np.ndarray | None = None) -> np.ndarray:
        """Grad-CAM heatmaps (N × size × size, in [0, 1]) of prepared-format uint8 arrays, for `targets` (default:
        the predicted classes), at the entry's `cam_layer` or the last convolution."""
        from pipeline.cam import grad_cam, pick_layer

        _, layer = pick_layer(self.model, (self.spec.get("train") or {}).get("cam_layer"))
        t = None if targets is None else torch.as_tensor(targets, device=self.device)
        return grad_cam(self.model, self.inputs(x), layer, t)

    def arrays(self, images: Iterable) -> np.ndarray:
        return np.stack([to_array(im, self.spec["native_size"], self.spec["n_in"]) for im in images])

    def predict_arrays(self, x: np.ndarray, bs: int = 256) -> np.ndarray:
        """Probabilities for prepared-format uint8 N×H×W×C arrays (as data/prepared holds them)."""
        from pipeline.infer import predict_probs

        if self.folds:
            return np.mean([m.predict_arrays(x, bs) for m in self.folds], axis=0)
        return predict_probs(self.model, x, self.tfm, bs, self.spec["tta"], self.device, self.dtype, self.spec["n_out"])

    def predict(self, images: Sequence, bs: int = 256) -> np.ndarray:
        return self.predict_arrays(self.arrays(images), bs)


class Ensemble:
    """The ensemble the `ensemble` stage chose: its members' probabilities blended by ensemble/model.json."""

    def __init__(self, root: Path = Path("."), device: str | torch.device = "cpu"):
        f = root / "ensemble" / "model.json"
        if not f.is_file():
            raise PipelineError(f"{f}: missing; run `dvc repro ensemble` first")
        self.spec = json.loads(f.read_text())
        self.name, self.classes = "ensemble", self.spec["classes"]
        self.members = [Model(root / "models" / m, device) for m in self.spec["members"]]
        for m in self.members:
            if m.classes != self.classes:
                raise PipelineError(f"models/{m.name}: classes differ from the ensemble's; rerun `dvc repro`")

    def predict(self, images: Sequence, bs: int = 256) -> np.ndarray:
        return self.predict_arrays(self.members[0].arrays(images), bs)

    def predict_arrays(self, x: np.ndarray, bs: int = 256) -> np.ndarray:
        """Probabilities for prepared-format uint8 arrays (every member was trained on the same prepared data)."""
        from ensembles import weights as W
        from ensembles.calibrate import apply_temperature

        P = np.stack([m.predict_arrays(x, bs) for m in self.members]).astype(np.float64)
        temps = self.spec.get("temperatures") or {}  # `calibrate: temperature`: each member's, then the blend's
        for i, m in enumerate(self.members):
            if m.name in temps:
                P[i] = apply_temperature(P[i], temps[m.name])
        if self.spec["stacker"]:
            out = W.stacker_apply(self.spec["stacker"], P, len(self.classes))
        else:
            out = W.blend(P, np.array([self.spec["weights"][m.name] for m in self.members]))
        t = self.spec.get("temperature")
        return (apply_temperature(out, t) if t else out).astype(np.float32)


def load_model(name: str, root: str | Path = ".", device: str = "cpu") -> Model:
    return Model(Path(root) / "models" / name, device)


def load_ensemble(root: str | Path = ".", device: str = "cpu") -> Ensemble:
    return Ensemble(Path(root), device)


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
    k = min(k, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[f, *sum(([classes[j], f"{p[j]:.6f}"] for j in o), [])] for f, p, o in zip(files, probs, order)]


def write_cams(out: Path, names: list[str], images: list, predictor: Model | Ensemble, used: set[str]) -> None:
    """One Grad-CAM overlay per image, `out/<stem>.png` (`<stem>-2.png`, … where stems repeat in `used`)."""
    from PIL import Image

    from pipeline.cam import overlay

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (walked recursively)")
    ap.add_argument("--model", default="ensemble", help="`ensemble` (default) or an architecture key of params.yaml")
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--out", default="-", help="CSV file (default: stdout)")
    ap.add_argument("--bs", type=int, default=256, help="images per batch")
    ap.add_argument("--root", default=".", help="the project folder holding models/ and ensemble/")
    ap.add_argument("--device", default="auto", help="auto (the GPU where CUDA is usable, else cpu), cpu, cuda:N")
    ap.add_argument(
        "--cam",
        metavar="DIR",
        help="also write a Grad-CAM overlay per image into DIR (<file stem>.png), from the model, or for the "
        "ensemble from its best member by validation accuracy",
    )
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
            from pipeline.cam import pick_layer

            looked_at = predictor.members[0] if isinstance(predictor, Ensemble) else predictor
            pick_layer(looked_at.model, (looked_at.spec.get("train") or {}).get("cam_layer"))  # fails before any work
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    k = min(args.top_k, len(predictor.classes))
    header = ["file"] + sum(([f"label_{i + 1}", f"prob_{i + 1}"] for i in range(k)), [])
    rows, bad, cam_names = [], [], set()
    # decoded straight at the model's input size (a JPEG in draft mode): a folder of photos never sits in memory
    # at full resolution; the result is what to_array makes of the full image, within JPEG's DCT scaling
    size = (predictor.members[0] if isinstance(predictor, Ensemble) else predictor).spec["native_size"]
    for i in tqdm(range(0, len(files), args.bs), desc="predict", unit="batch", file=sys.stderr, disable=None):
        batch, names = [], []
        for f in files[i : i + args.bs]:
            try:
                batch.append(decode(f, size))
                names.append(str(f))
            except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
                bad.append(str(f))
                print(f"warning: skipping unreadable image {f} ({type(e).__name__}: {e})", file=sys.stderr)
        if batch:
            rows += top_k_rows(names, predictor.predict(batch, args.bs), predictor.classes, k)
            if args.cam:
                write_cams(Path(args.cam), names, batch, predictor, cam_names)
    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="")  # noqa: SIM115
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
