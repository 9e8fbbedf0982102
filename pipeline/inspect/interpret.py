"""What models get wrong and how far apart entries are: confused class pairs, per-entry spreads and the pairs
that spread cannot tell apart."""

from __future__ import annotations

import numpy as np

from pipeline.inspect.scores import confusion
from pipeline.records import MemberMetrics

NUMBERED_CLASSES = 30  # up to this many classes the confusion matrix prints its counts; beyond, a heatmap


def groups(
    models: dict[str, MemberMetrics], group: dict[str, str], labeled: bool, metric: str = "accuracy"
) -> list[dict]:
    """Mean ± std (over its models) of every `archs` entry with variants."""
    out = []
    for g in dict.fromkeys(group.values()):
        ns = [n for n in models if group[n] == g]
        if len(ns) < 2:
            continue
        row = {"group": g, "models": len(ns)}
        for split in ("valid", "test") if labeled else ("valid",):
            a = 100 * np.array([getattr(models[n], split).value(metric) for n in ns])
            row[split] = (round(float(a.mean()), 3), round(float(a.std(ddof=1)), 3))
        out.append(row)
    return out


def spread_ties(rows: list[dict], split: str) -> list[tuple[str, str]]:
    """Pairs of entries whose mean accuracies differ by less than the larger of their std over models (seeds,
    variants): a difference the run-to-run spread alone could make."""
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            if abs(a[split][0] - b[split][0]) < max(a[split][1], b[split][1]):
                out.append((a["group"], b["group"]))
    return out


def confused_pairs(y: np.ndarray, p: np.ndarray, classes: list[str], k: int = 15) -> list[dict]:
    """The k most frequent (true, predicted) mistakes, with their share of the true class's rows."""
    n = len(classes)
    cm = confusion(y, p.argmax(1), n)
    np.fill_diagonal(cm, 0)
    support = np.bincount(y, minlength=n)
    flat = np.argsort(-cm, axis=None, kind="stable")[:k]
    return [
        {"true": classes[i], "predicted": classes[j], "count": int(cm[i, j]), "share": cm[i, j] / support[i]}
        for i, j in zip(*np.unravel_index(flat, cm.shape))
        if cm[i, j] > 0
    ]
