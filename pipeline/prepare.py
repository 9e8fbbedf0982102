"""Stage `prepare`: read the data set named in params.yaml `data:`, write data/prepared/ whole or not at all.

Reads:  params.yaml (`data`, `seed`), the data set's files (see pipeline/datasets.py).
Writes: data/prepared/{train,valid,test}_x.npy (uint8 N×H×W×C), *_y.npy (int64), test_ids.json, meta.json.
Run:    dvc repro prepare    (or: python -m pipeline.prepare)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import datasets
from pipeline.errors import PipelineError
from pipeline.images import to_channels
from pipeline.io import staged
from pipeline.params import data_params, load_params, seed_param
from pipeline.splits import split_valid, stratified_subset

OUT = Path("data/prepared")


def resize_all(x: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 N×H×W×C images to size×size (bilinear, with antialiasing when shrinking)."""
    if x.shape[1:3] == (size, size) or len(x) == 0:
        return x
    c = x.shape[3]
    out = np.empty((len(x), size, size, c), np.uint8)
    for i, im in enumerate(x):
        pil = Image.fromarray(im[..., 0] if c == 1 else im)
        arr = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))
        out[i] = arr[..., None] if c == 1 else arr
    return out


def prepare(
    raw: datasets.RawData,
    valid_pct: float,
    seed: int,
    limit: int | None = None,
    test_limit: int | None = None,
    size: int | None = None,
    channels="auto",
) -> tuple[dict, dict]:
    """Split, subset, resize and describe a RawData; returns (arrays by file stem, meta)."""
    if len(raw.train_y) == 0:
        raise PipelineError(f"{raw.source.get('path')}: no readable training images")
    if raw.valid_x is not None:  # the data set's own validation split
        tr_x, tr_y, va_x, va_y = raw.train_x, raw.train_y, raw.valid_x, raw.valid_y
        if limit:
            n_va = max(1, round(limit * len(va_y) / (len(tr_y) + len(va_y))))
            t, v = stratified_subset(tr_y, limit - n_va, seed), stratified_subset(va_y, n_va, seed)
            tr_x, tr_y, va_x, va_y = tr_x[t], tr_y[t], va_x[v], va_y[v]
    else:
        x, y = raw.train_x, raw.train_y
        if limit:
            keep = stratified_subset(y, limit, seed)
            x, y = x[keep], y[keep]
        t, v = split_valid(y, valid_pct, seed)
        tr_x, tr_y, va_x, va_y = x[t], y[t], x[v], y[v]
    te_x, te_y, ids = raw.test_x, raw.test_y, raw.test_ids
    if te_x is None:
        te_x, ids = np.zeros((0, *tr_x.shape[1:]), np.uint8), []
    if test_limit and test_limit < len(te_x):
        if raw.submission_header:
            raise PipelineError(
                "params.yaml: `data.test_limit` cannot be used with a sampleSubmission.csv, "
                "whose every id the submission must contain"
            )
        keep = stratified_subset(te_y, test_limit, seed) if te_y is not None else np.arange(test_limit)
        te_x, ids = te_x[keep], [ids[i] for i in keep]
        te_y = te_y[keep] if te_y is not None else None

    xs = to_channels({"train": tr_x, "valid": va_x, "test": te_x}, channels)
    if size:
        xs = {k: resize_all(x, size) for k, x in xs.items()}
    ys = {"train": tr_y, "valid": va_y, "test": te_y}
    n_cls = len(raw.classes)
    for k, y in ys.items():
        if y is not None and len(y) and (y.min() < 0 or y.max() >= n_cls):
            raise PipelineError(f"{raw.source.get('path')}: {k} label {int(y.max())} outside 0..{n_cls - 1}")
    x = xs["train"].astype(np.float64) / 255
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    arrays = {f"{k}_x": np.ascontiguousarray(v) for k, v in xs.items()}
    arrays.update({f"{k}_y": v.astype(np.int64) for k, v in ys.items() if v is not None})
    meta = {
        "source": raw.source,
        "classes": list(raw.classes),
        "class_names": list(raw.class_names or raw.classes),
        "image_shape": list(xs["train"].shape[1:]),
        "counts": {k: len(v) for k, v in xs.items()},
        "counts_per_class": {
            k: {c: int((y == i).sum()) for i, c in enumerate(raw.classes)} for k, y in ys.items() if y is not None
        },
        "test_labeled": te_y is not None and len(te_x) > 0,
        "train_mean": [round(float(m), 6) for m in mean],
        "train_std": [round(float(s), 6) for s in std],
        "bad_images": {"count": len(raw.bad_images), "files": raw.bad_images},
        "ignored_files": raw.ignored_files,
        "submission_header": raw.submission_header or ["id", "label"],
        "params": {
            "valid_pct": valid_pct,
            "seed": seed,
            "limit": limit,
            "test_limit": test_limit,
            "size": size,
            "channels": channels,
        },
    }
    return arrays | {"test_ids": list(ids)}, meta


def write_prepared(arrays: dict, meta: dict, out: Path = OUT) -> None:
    """Write every file of data/prepared; out is whole or untouched."""
    with staged(out) as (tmp,):
        for name, value in arrays.items():
            if name == "test_ids":
                (tmp / "test_ids.json").write_text(json.dumps(value) + "\n")
            else:
                np.save(tmp / f"{name}.npy", value, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def main(params_file: str = "params.yaml", out: Path = OUT) -> None:
    params = load_params(params_file)
    data, seed = data_params(params), seed_param(params)
    raw = datasets.read(data, seed)
    arrays, meta = prepare(
        raw, data["valid_pct"], seed, data["limit"], data["test_limit"], data["size"], data["channels"]
    )
    write_prepared(arrays, meta, out)
    c = meta["counts"]
    print(
        f"prepared {data['name']}: {c['train']} train / {c['valid']} valid / {c['test']} test, "
        f"{len(meta['classes'])} classes, images {'×'.join(map(str, meta['image_shape']))}, "
        f"{meta['bad_images']['count']} bad images skipped -> {out}"
    )


if __name__ == "__main__":
    try:
        main()
    except PipelineError as e:
        sys.exit(f"error: {e}")
