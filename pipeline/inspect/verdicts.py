"""The report's verdicts in words and tables: the submission against each model (paired), leave-one-out, per
class, the most-confused pairs, and equal compute."""

from __future__ import annotations

from pipeline.artifacts import EQUAL_COMPUTE
from pipeline.inspect.interpret import NUMBERED_CLASSES
from pipeline.inspect.leaderboard import pct
from pipeline.inspect.scores import METRIC_WORDS, verdict
from pipeline.inspect.tables import markdown_table
from pipeline.records import Comparison, EnsembleMetrics, EqualCompute


def gain_line(ens: EnsembleMetrics) -> str:
    """Is the submission better than its members and than the best model by validation? Each difference with its
    paired bootstrap interval and McNemar p-value, per split, and a plain verdict on the best member."""
    fitted = f" Fitted strategies (greedy, logloss, stacking) fit on the {ens.fitted_on}." if ens.fitted_on else ""
    words = METRIC_WORDS[ens.judged_by()]
    if not ens.comparisons:  # metrics from before the paired comparisons
        g = ", ".join(f"{100 * v:+.2f} points on {s}" for s, v in ens.gain.items())
        return f"\nEnsemble gain over the best model ({ens.best_model}, by validation {words}): {g}.{fitted}\n"
    how = (
        "[paired bootstrap 95 % interval], McNemar's exact p"
        if ens.judged_by() == "accuracy"
        else "[paired class-stratified bootstrap 95 % interval and its two-sided p]"
    )
    tau = (
        f" The blend's logits are adjusted by −{ens.tau} · log(training prior), τ chosen on validation."
        if ens.tau
        else ""
    )
    used = [n for n, w in ens.weights.items() if w > 0]
    # a one-model submission against that model: +0.00, p = 1, nothing to say
    shown = [c for c in ens.comparisons if not (len(used) == 1 and c.b == used[0])]
    if len(used) == 1 and not shown:
        return (
            f"\nThe ensemble chose one model, {used[0]}: the submission is its predictions (the other models trail it by "
            f"more than the margin on validation {words}).{tau}\n"
        )
    rows = []
    for c in shown:
        tags = [t for t, n in (("best member", ens.best_member), ("best by validation", ens.best_model)) if c.b == n]
        label = c.b + (f" ({', '.join(tags)})" if tags else "")
        rows.append([label, verdict(c.valid), verdict(c.test) if c.test else "-"])
    out = (
        f"\nThe submission (ensemble:{ens.chosen}) against each model, on the same rows: {words} difference in "
        f"points {how}; resolved = p < 0.05.{fitted}{tau}\n\n" + markdown_table(["against", "valid", "test"], rows)
    )
    bm = ens.comparison(ens.best_member)
    if bm is not None and bm.test is not None:
        out += f"\nVerdict: {verdict_words(bm, [c for c in ens.comparisons if c.b in ens.members])}\n"
    return out


def verdict_words(bm: Comparison, members: list[Comparison]) -> str:
    """Plain words on test: against the best member by validation (the one chosen without test), and whether
    that holds against every member."""
    t = bm.test
    if not t.resolved:
        return (
            f"the test split does not tell the submission from its best member by validation ({bm.b}): "
            f"{verdict(t)}. The ensemble's gain is not shown by this run."
        )
    if t.diff < 0:
        return f"the submission is worse than its best member ({bm.b}) on test, and the test split resolves it."
    short = [c for c in members if not (c.test.resolved and c.test.diff > 0)]
    if not short:
        return f"the submission beats each of its {len(members)} members on test, each difference resolved."
    worst = min(short, key=lambda c: c.test.diff)
    return (
        f"the submission beats its best member by validation ({bm.b}) on test, resolved, but not every member: "
        f"against {worst.b}, {verdict(worst.test)}. Over the strongest member on test the gain is not shown "
        "by this run."
    )


def markdown_leave_one_out(ens: EnsembleMetrics) -> str:
    """The chosen strategy refitted without each member: what each member brings."""
    rows = ens.leave_one_out
    if not rows:
        return ""
    labeled = rows[0].test is not None
    metric, cells = ens.judged_by(), []
    for r in rows:
        t = pct(r.test, metric=metric) if labeled else "-"
        ft = verdict(r.full_vs_without["test"]) if labeled else "-"
        cells.append([r.without, pct(r.valid, metric=metric), t, verdict(r.full_vs_without["valid"]), ft])
    header = ["without", "valid", "test", "full − without (valid)", "full − without (test)"]
    return (
        f"\nLeave one out: ensemble:{ens.chosen} refitted without each member; the full blend minus it, paired "
        "as above:\n\n" + markdown_table(header, cells)
    )


def markdown_class_report(ens: EnsembleMetrics, classes: list[str], k: int = 15) -> str:
    """Per class, precision / recall / F1 of the submission and of its best member, on validation and on test
    (scikit-learn's classification_report); beyond 30 classes the k classes with the submission's lowest recall."""
    pc = ens.per_class
    if not pc or pc.valid.ensemble_report is None:
        return ""
    out = []
    for split, d in (("valid", pc.valid), ("test", pc.test)):
        if d is None or d.ensemble_report is None:
            continue
        e, m = d.ensemble_report, d.member_report
        order = range(len(classes))
        if len(classes) > NUMBERED_CLASSES:
            order = sorted(order, key=lambda i: e["recall"][i])[:k]
        never = [classes[i] for i in range(len(classes)) if e["support"][i] and e["recall"][i] == 0]
        one = e == m  # the submission is its best member: one set of columns
        rows = []
        for i in order:
            cells = [" / ".join(f"{100 * r[x][i]:.1f}" for x in ("precision", "recall", "f1")) for r in (e, m)]
            rows.append([classes[i], e["support"][i], *cells[: 1 if one else 2]])
        head = ["class", "rows", "submission P / R / F1"] + ([] if one else [f"{pc.against} P / R / F1"])
        out.append(
            f"\nPer class on {split}: precision / recall / F1 in % of the submission"
            + ("" if one else f" and of {pc.against}")
            + (f"; the {k} classes with the submission's lowest recall" if len(classes) > NUMBERED_CLASSES else "")
            + ":\n\n"
            + markdown_table(head, rows)
            + (f"\nThe submission never gets these classes right on {split}: {', '.join(never)}.\n" if never else "")
        )
    return "".join(out)


def markdown_per_class(ens: EnsembleMetrics, classes: list[str], k: int = 15) -> str:
    """Per class, the submission against its best member: accuracies, the rows it fixes and breaks (on the report
    split); beyond 30 classes the k classes with the most rows changed."""
    pc = ens.per_class
    if not pc:
        return ""
    split = "test" if pc.test else "valid"
    d = pc.test or pc.valid
    order = range(len(classes))
    if len(classes) > NUMBERED_CLASSES:
        order = sorted(order, key=lambda i: -(d.fixes[i] + d.breaks[i]))[:k]
    if not sum(d.fixes) and not sum(d.breaks):  # the submission is its best member's predictions: all zeros
        return ""
    rows = [
        [classes[i], d.rows[i], f"{100 * d.member[i]:.1f}", f"{100 * d.ensemble[i]:.1f}", d.fixes[i], d.breaks[i]]
        for i in order
    ]
    rows.append(["all", sum(d.rows), "", "", sum(d.fixes), sum(d.breaks)])
    return (
        f"\nPer class on {split}, the submission against its best member ({pc.against}): fixes = rows the "
        f"submission gets right and {pc.against} wrong, breaks = the reverse"
        + (f"; the {k} classes with the most rows changed" if len(classes) > NUMBERED_CLASSES else "")
        + ":\n\n"
        + markdown_table(["class", "rows", f"{pc.against} %", "submission %", "fixes", "breaks"], rows)
    )


def markdown_confused(pairs: list[dict], name: str, split: str) -> str:
    """The most-confused (true, predicted) pairs as a table; empty where there are none (or few classes)."""
    if not pairs:
        return ""
    rows = [[r["true"], r["predicted"], r["count"], f"{100 * r['share']:.1f} %"] for r in pairs]
    table = markdown_table(["true", "predicted", "rows", "share of true class"], rows)
    return f"\nMost-confused classes of {name} on the {split} split:\n\n" + table


def markdown_equal_compute(ens: EnsembleMetrics, r: EqualCompute | None) -> str:
    """The submission beside the best single recipe trained with the ensemble's whole budget, from
    `python -m bench.equal_compute` (a benchmark, not a stage: said when its figures are from another run)."""
    used = [n for n, w in ens.weights.items() if w > 0]
    if len(used) == 1:  # one model: it had the ensemble's whole budget, so there is nothing to compare
        return (
            f"\nEqual compute: the submission is one model ({used[0]}), trained with the run's whole budget for "
            "its members: nothing to compare (`python -m bench.free_accuracy` compares one long run with "
            "blends and averages of the same budget).\n"
        )
    if r is None:
        return (
            "\nEqual compute: not measured for this run; `python -m bench.equal_compute` trains the best member's "
            "recipe with the ensemble's whole training budget and compares it with the submission.\n"
        )
    if r.single_test is None or "test" not in r.comparison:
        return ""
    same = ens.test is not None and r.ensemble_test is not None and abs(r.ensemble_test - ens.test.accuracy) < 1e-9
    note = "" if same else " (measured against another run's submission: rerun the benchmark)"
    c = r.comparison
    scale = f"{r.scale:.1f}× its run's, " if r.scale is not None else ""
    return (
        f"\nEqual compute ({EQUAL_COMPUTE}{note}): {r.recipe} trained with {r.images_seen} images seen "
        f"({scale}the ensemble's budget) reached {100 * r.single_test:.2f} % test; the "
        f"submission minus it: {verdict(c['test'])} on test, {verdict(c['valid'])} on valid.\n"
    )


def verdicts_md(
    ens: EnsembleMetrics, classes: list[str], equal: EqualCompute | None, labeled: bool, per_class: bool = True
) -> str:
    """Under the table: the paired comparisons, leave-one-out, equal compute (and per class, unless the caller
    places it)."""
    return (
        gain_line(ens)
        + markdown_leave_one_out(ens)
        + (markdown_equal_compute(ens, equal) if labeled else "")
        + (markdown_per_class(ens, classes) + markdown_class_report(ens, classes) if per_class else "")
    )
