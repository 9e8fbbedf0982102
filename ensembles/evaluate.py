"""How the submission stands: against each model (paired), without each member, per class, by the number of
members, and its gain over the best model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ensembles.candidates import Candidates
from ensembles.strategies import EnsembleParams, Outcome, run_strategies
from ensembles.weights import accuracy_weights, blend
from pipeline.inspect.scores import class_report, compare, metric_value
from pipeline.records import ClassCounts, Comparison, LeaveOneOut, ModelScores, Paired, SizeStep, Strategy


def gain(rec: Strategy, best: ModelScores, metric: str = "accuracy") -> dict[str, float]:
    """The ensemble's score minus the best single model's (chosen by validation), per split, in the run's metric."""
    pairs = {"valid": (rec.valid, best.valid), "test": (rec.test, best.test)}
    return {s: a.value(metric) - b.value(metric) for s, (a, b) in pairs.items() if a is not None and b is not None}


def by_size(
    names: list[str], valid: np.ndarray, y: np.ndarray, test=None, test_y=None, metric: str = "accuracy"
) -> list[SizeStep]:
    """The run's metric of the metric-weighted blend of the k best models by validation, k = 1 .. all;
    `valid`/`test` are (models, rows, classes) in the order of `names`."""
    acc = [metric_value(metric, p, y) for p in valid]
    order = sorted(range(len(names)), key=lambda i: (-acc[i], names[i]))
    out = []
    for k in range(1, len(order) + 1):
        top = order[:k]
        w = accuracy_weights([acc[i] for i in top])
        t = metric_value(metric, blend(test[top], w), test_y) if test_y is not None else None
        out.append(SizeStep(k=k, added=names[top[-1]], valid=metric_value(metric, blend(valid[top], w), y), test=t))
    return out


def comparisons(
    probs: dict[str, np.ndarray],
    c: Candidates,
    against: list[str],
    y: np.ndarray,
    test_y,
    seed: int,
    resamples: int,
    metric: str = "accuracy",
) -> list[Comparison]:
    """The submission against each model of `against`, on the same rows of each split: the difference in the run's
    metric, paired bootstrap 95 % interval, p-value (pipeline.inspect.scores.compare: McNemar for accuracy)."""
    out = []
    for n in against:
        i = c.names.index(n)
        paired = {"valid": compare(probs["valid"], c.valid[i], y, seed, resamples, metric)}
        if test_y is not None:
            paired["test"] = compare(probs["test"], c.test[i], test_y, seed, resamples, metric)
        out.append(Comparison.from_json({"a": "ensemble", "b": n, **paired}, "comparison", strict=True))
    return out


def leave_one_out(
    c: Candidates, members: list[str], kind: str, y, test_y, cfg: EnsembleParams, seed: int, full: Outcome, fit_on_of
) -> list[LeaveOneOut]:
    """The chosen strategy refitted without each member in turn: its scores, and the full blend against it."""
    if len(members) < 2:
        return []
    out = []
    for drop in members:
        rest = [m for m in members if m != drop]
        idx = [c.names.index(m) for m in rest]
        o = run_strategies(
            c.valid[idx], y, c.test[idx], test_y, rest, replace(cfg, strategies=[kind]), seed, fit_on_of(rest)
        )[kind]
        vs = {"valid": compare(full.valid_probs, o.valid_probs, y, seed, cfg.resamples, cfg.metric)}
        if test_y is not None:
            vs["test"] = compare(full.test_probs, o.test_probs, test_y, seed, cfg.resamples, cfg.metric)
        vs = {s: Paired.from_json(v, "paired", strict=True) for s, v in vs.items()}
        out.append(LeaveOneOut(without=drop, valid=o.record.valid, full_vs_without=vs, test=o.record.test))
    return out


def per_class(pe: np.ndarray, pm: np.ndarray, y: np.ndarray, n_classes: int) -> ClassCounts:
    """Per class: rows, the ensemble's and the member's accuracy (recall), the rows the ensemble fixes (it right,
    the member wrong) and breaks (the reverse); each one's precision, recall, F1 and support."""
    e, m = pe.argmax(1) == y, pm.argmax(1) == y
    rows = np.bincount(y, minlength=n_classes)
    safe = np.maximum(rows, 1)
    return ClassCounts(
        rows=rows.tolist(),
        ensemble=(np.bincount(y, e, n_classes) / safe).round(6).tolist(),
        member=(np.bincount(y, m, n_classes) / safe).round(6).tolist(),
        fixes=np.bincount(y, e & ~m, n_classes).astype(int).tolist(),
        breaks=np.bincount(y, ~e & m, n_classes).astype(int).tolist(),
        ensemble_report=class_report(y, pe.argmax(1), n_classes),
        member_report=class_report(y, pm.argmax(1), n_classes),
    )
