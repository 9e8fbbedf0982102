"""Seeded, stratified row subsets and validation splits: shared by the prepare and train stages."""

from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError, warn


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of n rows with class proportions kept (plain random if impossible)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if n >= len(y):
        return idx
    try:
        keep, _ = train_test_split(idx, train_size=n, stratify=y, random_state=seed)
    except ValueError:  # a class too small to stratify: fall back to a plain seeded draw
        keep = np.random.default_rng(seed).choice(idx, n, replace=False)
    return np.sort(keep)


def split_valid(y: np.ndarray, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, valid) indices: a seeded split stratified by class."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    n_valid = max(1, round(len(y) * valid_pct))
    if n_valid >= len(y):
        raise PipelineError(f"params.yaml: `data.valid_pct` = {valid_pct} leaves no training images of {len(y)}")
    try:
        tr, va = train_test_split(idx, test_size=n_valid, stratify=y, random_state=seed)
    except ValueError:
        warn(f"some class has too few images to stratify a {valid_pct:.0%} validation split; drawing at random")
        tr, va = train_test_split(idx, test_size=n_valid, random_state=seed)
    return np.sort(tr), np.sort(va)
