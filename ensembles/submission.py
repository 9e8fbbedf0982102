"""Kaggle-style submissions: one CSV row per test id, a class name or one probability column per class."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

NO_TEST = (
    "no submission: the prepared data has no test split (e.g. an ImageFolder set without test/); "
    "add test images and rerun `dvc repro` to get one"
)


def submission_rows(probs: np.ndarray, ids: list[str], classes: list[str], header: list[str]) -> list[list[Any]]:
    """Kaggle rows in test-id order: `id,label` (class name), or one probability column per class when the
    sampleSubmission's columns after the id are the class names (a superset of them with `data.classes`)."""
    if len(probs) != len(ids):
        raise PipelineError(f"submission: {len(probs)} predictions for {len(ids)} test ids")
    if len(header) > 2 and set(classes) <= set(header[1:]):
        # a class the run left out (`data.classes`) gets probability 0 in its column
        cols = [classes.index(c) if c in classes else None for c in header[1:]]
        return [header] + [
            [i, *(f"{row[k]:.6f}" if k is not None else "0.000000" for k in cols)] for i, row in zip(ids, probs)
        ]
    if len(header) != 2:
        raise PipelineError(
            f"submission header {header}: expected `id,label` or an id column then one column per "
            f"class ({', '.join(classes)})"
        )
    pred = probs.argmax(1)
    return [header] + [[i, classes[k]] for i, k in zip(ids, pred)]


def write_csv(path: Path, rows: list[list[Any]]) -> None:
    """Rows as a CSV file."""
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
