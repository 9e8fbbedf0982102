"""summary.json: the run at a glance, the one file dvc.yaml declares as the run's metric.

`dvc metrics show`, `dvc metrics diff` and `dvc exp show` read every field of a declared metrics file: declaring
metrics/<model>.json and ensemble/metrics.json (every model × split × score, every strategy's weights) made
`dvc exp show --csv` 750 columns wide. Those files stay outputs (committed, read by the report); this one holds
what a comparison of two runs needs, in the run's metric: the metric and why, the submission's valid and test score with
their 95 % intervals, its members and its gain over the best member, and each model's valid and test score and
training seconds. Scores are rounded to 4 decimals (a hundredth of a point): a rerun's diff shows what changed.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.records import EnsembleMetrics, MemberMetrics, Score


def summary_file(root: Path = Path(".")) -> Path:
    """summary.json, at the project's root: dvc.yaml's one declared metric."""
    return root / "summary.json"


def r4(v: float | None) -> float | None:
    """A score to 4 decimals (None stays None)."""
    return None if v is None else round(float(v), 4)


def scored(s: Score | None, metric: str) -> dict:
    """A score in the run's metric with its 95 % interval as [low, high]."""
    if s is None:
        return {}
    lo_hi = s.interval(metric)
    return {"score": r4(s.value(metric)), "ci95": [r4(x) for x in lo_hi] if lo_hi else None}


def summary(ens: EnsembleMetrics, models: dict[str, MemberMetrics]) -> dict:
    """The summary of a run (see the module docstring)."""
    metric = ens.judged_by()
    sub = {
        "strategy": ens.chosen,
        "members": ", ".join(m for m, w in ens.weights.items() if w > 0),
        "valid": scored(ens.valid, metric),
        **({"test": scored(ens.test, metric)} if ens.test is not None else {}),
        "gain_over_best_member": r4((ens.gain_over_best_member or ens.gain).get("valid")),
    }
    rows = {}
    for name, m in models.items():
        row = {"valid": r4(getattr(m.valid, metric)) if m.valid is not None else None}  # None: older metrics
        if m.test is not None:
            row["test"] = r4(getattr(m.test, metric))
        row["train_s"] = round(m.train_s, 1)
        rows[name] = row
    return {"metric": metric, "metric_why": ens.metric_why, "submission": sub, "models": rows}
