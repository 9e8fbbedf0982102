"""Seeded, stratified row subsets and validation splits: shared by the prepare and train stages."""

from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError, warn


# scikit-learn's train_test_split (StratifiedShuffleSplit / ShuffleSplit with an int random_state), ported to
# numpy step for step, RandomState draws in the same order, so the rows are the ones it picks (tests/test_data.py
# compares them over many sizes, class mixes and seeds): importing scikit-learn was a large share of a 3 500-photo
# prepare (`python -m bench.scale --sets photos`), for one split. The training stage still uses scikit-learn.
def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's utils.extmath._approximate_mode: per-class draws near the multivariate hypergeometric mode,
    ties broken at random."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def stratified_split(y: np.ndarray, n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) rows: StratifiedShuffleSplit's first split; ValueError where scikit-learn raises one (a
    class of one row, fewer rows than classes on a side)."""
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        raise ValueError("the least populated class has only 1 member")
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError("each side of the split needs at least one row per class")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        perm = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(perm[: n_i[i]])
        test.extend(perm[n_i[i] : n_i[i] + t_i[i]])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(test, np.int64))


def shuffled_split(n: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) rows: ShuffleSplit's first split (no stratification)."""
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of n rows with class proportions kept (plain random if impossible)."""
    idx = np.arange(len(y))
    if n >= len(y):
        return idx
    try:
        keep, _ = stratified_split(y, n, len(y) - n, seed)
    except ValueError:  # a class too small to stratify: fall back to a plain seeded draw
        keep = np.random.default_rng(seed).choice(idx, n, replace=False)
    return np.sort(keep)


def split_valid(y: np.ndarray, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, valid) indices: a seeded split stratified by class."""
    n_valid = max(1, round(len(y) * valid_pct))
    if n_valid >= len(y):
        raise PipelineError(f"params.yaml: `data.valid_pct` = {valid_pct} leaves no training images of {len(y)}")
    try:
        return stratified_split(y, len(y) - n_valid, n_valid, seed)
    except ValueError:
        warn(f"some class has too few images to stratify a {valid_pct:.0%} validation split; drawing at random")
        return shuffled_split(len(y), n_valid, seed)
