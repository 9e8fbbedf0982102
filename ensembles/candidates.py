"""The ensemble's inputs: every model's predictions (checked against the prepared data and each other), the
labels, and what is done to them before blending (out-of-fold rows, temperatures)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensembles.calibrate import apply_temperature, fit_temperature
from pipeline.artifacts import has_oof, load_labels, load_member_metrics, load_oof, load_preds, metrics_file
from pipeline.params import prior_free
from pipeline.records import MemberMetrics, PreparedMeta


@dataclass
class Candidates:
    """Every model's validation and test probabilities (models × rows × classes), metrics and out-of-fold rows."""

    names: list[str]
    valid: np.ndarray  # (models, rows, classes)
    test: np.ndarray
    info: dict[str, MemberMetrics]  # metrics/<name>.json
    oof: dict[str, tuple[np.ndarray, np.ndarray]]  # `folds` entries: name -> (training rows, their OOF probabilities)


def load_candidates(
    names: list[str], n_valid: int, n_test: int, n_classes: int, root: Path = Path("."), n_train: int = 0
) -> Candidates:
    """Every model's predictions, checked against the prepared data and each other."""
    valid, test, info, oof = [], [], {}, {}
    for name in names:
        valid.append(load_preds(root, name, "valid", n_valid, n_classes).astype(np.float64))
        test.append(load_preds(root, name, "test", n_test, n_classes).astype(np.float64))
        info[name] = load_member_metrics(metrics_file(root, name), name)
        if has_oof(root, name):
            oof[name] = load_oof(root, name, n_train, n_classes)
    return Candidates(names, np.stack(valid), np.stack(test), info, oof)


def oof_fit_rows(c: Candidates, members: list[str]) -> np.ndarray | None:
    """The training rows every member has out-of-fold predictions for (each `folds` entry), or None when a member
    has none: then the fitted strategies fit on the validation split."""
    if not all(m in c.oof for m in members):
        return None
    rows = c.oof[members[0]][0]
    for m in members[1:]:
        rows = np.intersect1d(rows, c.oof[m][0])
    return rows if len(rows) else None


def oof_matrix(c: Candidates, members: list[str], rows: np.ndarray) -> np.ndarray:
    """(members, rows, classes): each member's out-of-fold probabilities on `rows`."""
    out = []
    for m in members:
        have, p = c.oof[m]
        out.append(p[np.searchsorted(have, rows)])  # oof_rows are sorted: the pool's order
    return np.stack(out)


def balanced(c: Candidates) -> bool:
    """Did every model learn a uniform class prior: trained with exactly one remedy, balanced sampling or balanced
    loss weights (metrics/<key>.json `sampler`, `loss_weights`; `params.prior_free`)? Then `adjust: auto` has no
    training prior to take off."""
    return all(prior_free(c.info[n].sampler, c.info[n].loss_weights) for n in c.names)


def calibrate_members(c: Candidates, y: np.ndarray) -> dict[str, float]:
    """`calibrate: temperature`: each model's temperature fitted on the validation split, applied in place to its
    validation, test and out-of-fold probabilities. Returns name -> temperature."""
    temps = {}
    for i, n in enumerate(c.names):
        t = round(fit_temperature(c.valid[i], y), 6)
        c.valid[i], c.test[i] = apply_temperature(c.valid[i], t), apply_temperature(c.test[i], t)
        if n in c.oof:
            c.oof[n] = (c.oof[n][0], apply_temperature(c.oof[n][1], t))
        temps[n] = t
    return temps


@dataclass
class Labels:
    """What the stage reads of data/prepared: labels (test ones only where labelled), test ids, meta."""

    meta: PreparedMeta
    valid_y: np.ndarray
    test_y: np.ndarray | None
    test_ids: list[str]
    train_y: np.ndarray  # the labels of `folds` entries' out-of-fold rows


def read_labels(root: Path) -> Labels:
    """The prepared data's labels, ids and meta (its images are memory-mapped and never touched here)."""
    prep = load_labels(root)
    return Labels(prep.meta, prep.labels("valid"), prep.labels("test"), prep.test_ids, prep.labels("train"))
