"""The leaderboard: one row per model and per ensemble strategy (timm's results-CSV columns), best first by the
run's metric, and its markdown tables (the main table, entries' spreads, folds, refits)."""

from __future__ import annotations

from pipeline.inspect.interpret import spread_ties
from pipeline.inspect.scores import METRIC_WORDS, decimals
from pipeline.inspect.tables import markdown_table
from pipeline.records import EnsembleMetrics, MemberMetrics, Score

COLUMNS = [
    "model",
    "top1",
    "top1_ci95",
    "top1_err",
    "valid_top1",
    "bal_acc",
    "bal_acc_ci95",
    "valid_bal_acc",
    "macro_f1",
    "worst_recall",
    "nll",
    "ece",
    "param_count",
    "images_seen",
    "train_s",
    "img_per_s",
    "weight",
]


def ci_words(ci: list[float] | None) -> str:
    """A 95 % Wilson interval in percent, `93.0–94.0`; empty where the metrics predate it."""
    return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}" if ci else ""


def pct(s: Score, accuracy: float | None = None, metric: str = "accuracy") -> float | str:
    """A score in percent (`s`'s in `metric`, or `accuracy` with `s`'s interval), rounded to what its 95 % interval
    supports (pipeline.inspect.scores.decimals); empty where the score predates the metric."""
    v = getattr(s, metric) if accuracy is None else accuracy
    if v is None:
        return ""
    d = decimals(s.interval(metric))
    v = round(100 * v, d)
    return int(v) if d == 0 else v


def err(s: Score) -> float:
    """100 − top-1, rounded as the top-1 is."""
    return pct(s, 1 - s.accuracy)


def score_cells(s: Score, valid: Score, metric: str = "accuracy") -> dict:
    """The leaderboard's score columns of one row: `s` on the report's split, `valid` on validation (and the
    unrounded sort key in the run's metric, dropped before writing)."""
    sort = [getattr(x, metric) for x in (s, valid)]
    return {
        "top1": pct(s),
        "top1_ci95": ci_words(s.ci95),
        "top1_err": err(s),
        "valid_top1": pct(valid),
        "bal_acc": pct(s, metric="balanced_accuracy"),
        "bal_acc_ci95": ci_words(s.balanced_ci95),
        "valid_bal_acc": pct(valid, metric="balanced_accuracy"),
        "macro_f1": pct(s, metric="macro_f1"),
        "worst_recall": round(100 * s.worst_recall, 1) if s.worst_recall is not None else "",
        "nll": round(s.loss, 3) if s.loss is not None else "",
        "ece": round(s.ece, 3) if s.ece is not None else "",
        "_sort": tuple(-v if v is not None else 1.0 for v in sort),
    }


def runs(used, models) -> list[str]:
    """The training runs behind some models: each `snapshots` member stands for the run it was taken from."""
    return [n for n in dict.fromkeys(models[n].snapshot_of or n for n in used) if n in models]


def leaderboard(models: dict[str, MemberMetrics], ens: EnsembleMetrics) -> list[dict]:
    """Rows sorted by the run's metric on test (on valid where the test split is unlabelled), then on valid.

    `models`: name -> metrics/<name>.json; `ens`: ensemble/metrics.json. Accuracies in percent like timm's
    CSVs, rounded to what their intervals support; parameter counts in millions. `nll`, `ece`: on the same split
    (after `calibrate`'s temperatures where set). An ensemble's cost is the sum of its members' with a weight > 0,
    each training run counted once (`snapshots` members share their run's).
    """
    labeled = ens.test is not None
    rows = []
    for name, m in models.items():
        e = ens.models[name]  # the ensemble's copy of the scores: after calibration where set
        rows.append(
            {
                "model": name,
                **score_cells((e.test or m.test) if labeled else e.valid, m.valid, ens.judged_by()),
                "param_count": round(m.param_count / 1e6, 3),
                "images_seen": m.seen(),
                "train_s": round(m.train_s, 1),
                "img_per_s": round(m.img_per_s, 1),
                "weight": round(e.weight, 4),
            }
        )
    for kinds, st in same_strategies(ens).items():
        used = st.used()
        names = [k + ("*" if k == ens.chosen else "") for k in kinds]
        rows.append(
            {
                "model": "ensemble:" + " = ".join(names),
                **score_cells(st.test if labeled else st.valid, st.valid, ens.judged_by()),
                "param_count": round(sum(models[n].param_count for n in used) / 1e6, 3),
                "images_seen": sum(models[n].seen() for n in runs(used, models)),
                "train_s": round(sum(models[n].train_s for n in runs(used, models)), 1),
                "img_per_s": "",
                "weight": "",
            }
        )
    rows.sort(key=lambda r: (*r["_sort"], r["model"]))
    for r in rows:
        del r["_sort"]
    return rows


def same_strategies(ens: EnsembleMetrics) -> dict[tuple[str, ...], object]:
    """The strategies, those that gave the same blend (the same weights and scores: one member, or rules that
    agree) sharing one row: (names, the first's record), the chosen one first in its group."""
    groups: dict[tuple, list[str]] = {}
    for kind, st in ens.strategies.items():
        t = st.test
        key = (tuple(sorted(st.weights.items())), st.valid.accuracy, st.valid.loss, t and (t.accuracy, t.loss))
        groups.setdefault(key, []).append(kind)
    out = {}
    for kinds in groups.values():
        kinds.sort(key=lambda k: k != ens.chosen)
        out[tuple(kinds)] = ens.strategies[kinds[0]]
    return out


SAME_BUDGET = 1.1  # rows within 10 % of each other's training seconds and images seen are at one budget


def budget_line(models: dict[str, MemberMetrics]) -> str:
    """The budget the rows compare at: one (every training run within SAME_BUDGET of the others' seconds and
    images seen), or the range, said plainly: a ranking of different budgets is not a ranking of architectures."""
    runs = {n: m for n, m in models.items() if not m.snapshot_of}
    if len(runs) < 2:
        return ""
    secs = {n: m.train_s for n, m in runs.items()}
    seen = {n: m.seen() for n, m in runs.items()}
    lo_s, hi_s = min(secs, key=secs.get), max(secs, key=secs.get)
    lo_i, hi_i = min(seen, key=seen.get), max(seen, key=seen.get)
    if secs[hi_s] <= SAME_BUDGET * max(secs[lo_s], 1e-9) and seen[hi_i] <= SAME_BUDGET * max(seen[lo_i], 1):
        return f"Every model trained at one budget: about {secs[hi_s]:.0f} s and {seen[hi_i]:,} images seen.\n\n"
    return (
        f"The rows are at different budgets: {secs[lo_s]:.1f} s ({lo_s}) to {secs[hi_s]:.1f} s ({hi_s}) of "
        f"training, {seen[lo_i]:,} ({lo_i}) to {seen[hi_i]:,} ({hi_i}) images seen; the table ranks budgets as much "
        "as architectures (`train_s`, `images_seen`).\n\n"
    )


def metric_line(ens: EnsembleMetrics) -> str:
    """Which metric judged the run (members, weights, strategy, verdicts, the table's order) and why."""
    why = f" ({ens.metric_why})" if ens.metric_why else ""
    return f"Metric: **{METRIC_WORDS[ens.judged_by()]}**{why}.\n\n"


def hardware_line(models: dict[str, MemberMetrics]) -> str:
    """Where and in which precision each model trained (metrics/<key>.json `device`, `precision`; with `average`,
    which), so a run's figures say what produced them (`precision: native` differs between CPU kinds)."""
    ran: dict[str, list[str]] = {}
    for n, m in models.items():
        if m.snapshot_of:
            continue
        avg = f", {m.average['kind'].upper()} weights" if m.average and m.average.get("updates") else ""
        ran.setdefault(f"{m.device}, {m.precision}{avg}", []).append(n)
    if len(ran) == 1:
        return f"Every model trained on {next(iter(ran))}.\n\n"
    return "Trained on " + "; ".join(f"{k}: {', '.join(v)}" for k, v in ran.items()) + ".\n\n"


def markdown(rows: list[dict], labeled: bool, n_test: int = 1, metric: str = "accuracy") -> str:
    """The leaderboard as markdown: what each column means, then the table."""
    if labeled:
        what = "test"
    elif n_test:
        what = "validation (the test split has no labels)"
    else:
        what = "validation (the data set has no test split)"
    head = (
        f"Scores on the {what} split, in %, best first by {METRIC_WORDS[metric]}: top-1 with its 95 % Wilson "
        "interval over the split's rows (`top1_ci95`); balanced accuracy (mean per-class recall, `bal_acc`) with its "
        "class-stratified bootstrap interval, macro-F1 and the worst class's recall (`worst_recall`); each rounded "
        "to what its interval supports; `valid_*` on validation. Whether two models differ is the paired "
        "comparison's to say "
        "(below; `python -m pipeline.commands.compare A B` for any two). `nll` (log-loss) and `ece` (15 bins) on the same "
        "split. Budgets: `images_seen` = epochs × training images, `train_s` the training seconds; "
        "`param_count` in millions; an ensemble's cost is the sum of its members'. `weight`: the model's weight in "
        "the ensemble submission; `*` marks the strategy that wrote it.\n\n"
    )
    return head + markdown_table(COLUMNS, [[r[c] for c in COLUMNS] for r in rows])


def markdown_groups(rows: list[dict], labeled: bool, metric: str = "accuracy") -> str:
    """Mean ± std of each entry with variants, and the entries their spread cannot tell apart."""
    if not rows:
        return ""
    splits = ("valid", "test") if labeled else ("valid",)
    cells = [[r["group"], r["models"], *(f"{r[s][0]:.2f} ± {r[s][1]:.2f}" for s in splits)] for r in rows]
    out = (
        f"\nModels of one `archs` entry (the entry and its `variants`), {METRIC_WORDS[metric]} % mean ± std:\n\n"
        + markdown_table(["entry", "models", *splits], cells)
    )
    close = spread_ties(rows, splits[-1])
    if close:
        out += (
            f"\nNot told apart by their spread ({splits[-1]} means differ by less than the larger std): "
            + "; ".join(f"{a} and {b}" for a, b in close)
            + ".\n"
        )
    return out


def markdown_folds(models: dict[str, MemberMetrics]) -> str:
    """`folds` entries: cross-validation accuracy (each fold model on its held-out fold) and the fold models'
    validation accuracy, mean ± std, beside the validation accuracy of their average (the entry's prediction)."""
    rows = [(n, m.folds, m.valid.accuracy) for n, m in models.items() if m.folds]
    if not rows:
        return ""
    cells = [
        [
            n,
            f.k,
            f"{100 * f.cv_mean:.2f} ± {100 * f.cv_std:.2f}",
            f"{100 * f.valid_mean:.2f} ± {100 * f.valid_std:.2f}",
            f"{100 * v:.2f}",
        ]
        for n, f, v in rows
    ]
    header = ["model", "folds", "CV (held-out folds)", "fold models on valid", "their average on valid"]
    return (
        "\nStratified K-fold entries (the training split in K folds; top-1 %, mean ± std over the K fold models):\n\n"
        + markdown_table(header, cells)
    )


def markdown_refit(models: dict[str, MemberMetrics], labeled: bool) -> str:
    """`refit` entries: which figure comes from which model."""
    rows = [(n, m) for n, m in models.items() if m.refit]
    if not rows:
        return ""
    cells = []
    for n, m in rows:
        t = [f"{100 * s.accuracy:.2f}" if labeled else "-" for s in (m.test_validated, m.test)]
        cells.append([n, f"{100 * m.valid.accuracy:.2f}", m.train_images, *t, m.refit.train_images])
    header = ["model", "valid (validated model)", "images", "test (validated model)", "test (refit model)", "images"]
    return (
        "\nRefit entries: `valid_top1` is the validated model's (trained without the validation split); the test "
        "figures and the submission are the model refit on train + valid with the validated lr and epochs:\n\n"
        + markdown_table(header, cells)
    )
