"""Stage `report`: the leaderboard (timm's results-CSV shape) and the figures of a benchmark run.

Reads:  params.yaml (`archs`, `variants`), data/prepared/, metrics/<name>.json, preds/<name>/, models/<best>/,
        ensemble/metrics.json, ensemble/preds/, dvclive/<name>/plots/ (training curves, lr_find curves).
Writes: reports/leaderboard.csv and .md (one row per model and per ensemble strategy, best first),
        reports/figures/*.png (confusion matrices, top losses, confident right and wrong predictions,
        lr_find curves, training curves, accuracy against training time and against the number of members,
        Grad-CAM of the best model on right and wrong images, its feature maps after an early and a late conv).
        The "best model" of the figures is the best by validation accuracy, as the ensemble stage picked it.
Run:    python -m pipeline.report        (or `dvc repro report`)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from ensembles.calibrate import apply_temperature
from pipeline.contracts import (
    Comparison,
    EnsembleMetrics,
    MemberMetrics,
    Score,
    SizeStep,
    load_ensemble_metrics,
    load_equal_compute,
    load_member_metrics,
    load_prepared_meta,
)
from pipeline.errors import PipelineError
from pipeline.inspect.scores import confusion, decimals, reliability, row_losses, verdict
from pipeline.io import staged
from pipeline.params import group_of, load_params, model_names

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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: cannot read ({e}); run `dvc repro` for the stage that writes it") from e


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


def leaderboard(models: dict[str, MemberMetrics], ens: EnsembleMetrics) -> list[dict]:
    """Rows sorted by the run's metric on test (on valid where the test split is unlabelled), then on valid.

    `models`: name -> metrics/<name>.json; `ens`: ensemble/metrics.json. Accuracies in percent like timm's
    CSVs, rounded to what their intervals support; parameter counts in millions. `nll`, `ece`: on the same split
    (after `calibrate`'s temperatures where set). An ensemble's cost is the sum of its members' with a weight > 0.
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
    for kind, st in ens.strategies.items():
        used = st.used()
        star = "*" if kind == ens.chosen else ""
        rows.append(
            {
                "model": f"ensemble:{kind}{star}",
                **score_cells(st.test if labeled else st.valid, st.valid, ens.judged_by()),
                "param_count": round(sum(models[n].param_count for n in used) / 1e6, 3),
                "images_seen": sum(models[n].seen() for n in used),
                "train_s": round(sum(models[n].train_s for n in used), 1),
                "img_per_s": "",
                "weight": "",
            }
        )
    rows.sort(key=lambda r: (*r["_sort"], r["model"]))
    for r in rows:
        del r["_sort"]
    return rows


METRIC_WORDS = {"accuracy": "top-1 accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}


def metric_line(ens: EnsembleMetrics) -> str:
    """Which metric judged the run (members, weights, strategy, verdicts, the table's order) and why."""
    why = f" ({ens.metric_why})" if ens.metric_why else ""
    return f"Metric: **{METRIC_WORDS[ens.judged_by()]}**{why}.\n\n"


def markdown(rows: list[dict], labeled: bool, n_test: int = 1, metric: str = "accuracy") -> str:
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
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return head + "\n".join(lines) + "\n"


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
    lines = [
        f"\nThe submission (ensemble:{ens.chosen}) against each model, on the same rows: {words} difference in "
        f"points {how}; resolved = p < 0.05.{fitted}{tau}\n",
        "| against | valid | test |",
        "|---|---|---|",
    ]
    for c in ens.comparisons:
        tags = [t for t, n in (("best member", ens.best_member), ("best by validation", ens.best_model)) if c.b == n]
        label = c.b + (f" ({', '.join(tags)})" if tags else "")
        lines.append(f"| {label} | {verdict(c.valid)} | {verdict(c.test) if c.test else '-'} |")
    bm = ens.comparison(ens.best_member)
    if bm is not None and bm.test is not None:
        lines.append(f"\nVerdict: {verdict_words(bm, [c for c in ens.comparisons if c.b in ens.members])}")
    return "\n".join(lines) + "\n"


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
    lines = [
        f"\nLeave one out: ensemble:{ens.chosen} refitted without each member; the full blend minus it, paired "
        "as above:\n",
        "| without | valid | test | full − without (valid) | full − without (test) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        metric = ens.judged_by()
        t = pct(r.test, metric=metric) if labeled else "-"
        ft = verdict(r.full_vs_without["test"]) if labeled else "-"
        lines.append(
            f"| {r.without} | {pct(r.valid, metric=metric)} | {t} | {verdict(r.full_vs_without['valid'])} | {ft} |"
        )
    return "\n".join(lines) + "\n"


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
        lines = [
            f"\nPer class on {split}: precision / recall / F1 in % of the submission and of {pc.against}"
            + (f"; the {k} classes with the submission's lowest recall" if len(classes) > NUMBERED_CLASSES else "")
            + ":\n",
            "| class | rows | submission P / R / F1 | " + pc.against + " P / R / F1 |",
            "|---|---|---|---|",
        ]
        for i in order:
            cells = [" / ".join(f"{100 * r[x][i]:.1f}" for x in ("precision", "recall", "f1")) for r in (e, m)]
            lines.append(f"| {classes[i]} | {e['support'][i]} | {cells[0]} | {cells[1]} |")
        if never:
            lines.append(f"\nThe submission never gets these classes right on {split}: {', '.join(never)}.")
        out.append("\n".join(lines) + "\n")
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
    lines = [
        f"\nPer class on {split}, the submission against its best member ({pc.against}): fixes = rows the "
        f"submission gets right and {pc.against} wrong, breaks = the reverse"
        + (f"; the {k} classes with the most rows changed" if len(classes) > NUMBERED_CLASSES else "")
        + ":\n",
        f"| class | rows | {pc.against} % | submission % | fixes | breaks |",
        "|---|---|---|---|---|---|",
    ]
    for i in order:
        lines.append(
            f"| {classes[i]} | {d.rows[i]} | {100 * d.member[i]:.1f} | {100 * d.ensemble[i]:.1f} | "
            f"{d.fixes[i]} | {d.breaks[i]} |"
        )
    lines.append(f"| all | {sum(d.rows)} | | | {sum(d.fixes)} | {sum(d.breaks)} |")
    return "\n".join(lines) + "\n"


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


def markdown_groups(rows: list[dict], labeled: bool, metric: str = "accuracy") -> str:
    if not rows:
        return ""
    splits = ("valid", "test") if labeled else ("valid",)
    lines = [
        f"\nModels of one `archs` entry (the entry and its `variants`), {METRIC_WORDS[metric]} % mean ± std:\n",
        "| entry | models | " + " | ".join(splits) + " |",
        "|---|---|" + "---|" * len(splits),
    ]
    lines += [
        f"| {r['group']} | {r['models']} | " + " | ".join(f"{r[s][0]:.2f} ± {r[s][1]:.2f}" for s in splits) + " |"
        for r in rows
    ]
    close = spread_ties(rows, splits[-1])
    if close:
        lines.append(
            f"\nNot told apart by their spread ({splits[-1]} means differ by less than the larger std): "
            + "; ".join(f"{a} and {b}" for a, b in close)
            + "."
        )
    return "\n".join(lines) + "\n"


def spread_ties(rows: list[dict], split: str) -> list[tuple[str, str]]:
    """Pairs of entries whose mean accuracies differ by less than the larger of their std over models (seeds,
    variants): a difference the run-to-run spread alone could make."""
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            if abs(a[split][0] - b[split][0]) < max(a[split][1], b[split][1]):
                out.append((a["group"], b["group"]))
    return out


def markdown_folds(models: dict[str, MemberMetrics]) -> str:
    """`folds` entries: cross-validation accuracy (each fold model on its held-out fold) and the fold models'
    validation accuracy, mean ± std, beside the validation accuracy of their average (the entry's prediction)."""
    rows = [(n, m.folds, m.valid.accuracy) for n, m in models.items() if m.folds]
    if not rows:
        return ""
    lines = [
        "\nStratified K-fold entries (the training split in K folds; top-1 %, mean ± std over the K fold models):\n",
        "| model | folds | CV (held-out folds) | fold models on valid | their average on valid |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {f.k} | {100 * f.cv_mean:.2f} ± {100 * f.cv_std:.2f} | "
        f"{100 * f.valid_mean:.2f} ± {100 * f.valid_std:.2f} | {100 * v:.2f} |"
        for n, f, v in rows
    ]
    return "\n".join(lines) + "\n"


def markdown_refit(models: dict[str, MemberMetrics], labeled: bool) -> str:
    """`refit` entries: which figure comes from which model."""
    rows = [(n, m) for n, m in models.items() if m.refit]
    if not rows:
        return ""
    lines = [
        "\nRefit entries: `valid_top1` is the validated model's (trained without the validation split); the test "
        "figures and the submission are the model refit on train + valid with the validated lr and epochs:\n",
        "| model | valid (validated model) | images | test (validated model) | test (refit model) | images |",
        "|---|---|---|---|---|---|",
    ]
    for n, m in rows:
        t = [f"{100 * s.accuracy:.2f}" if labeled else "-" for s in (m.test_validated, m.test)]
        lines.append(
            f"| {n} | {100 * m.valid.accuracy:.2f} | {m.train_images} | {t[0]} | {t[1]} | {m.refit.train_images} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- figures
def fig_members(path: Path, by_size: list[SizeStep], metric: str = "accuracy") -> None:
    """The run's metric of the metric-weighted blend of the k best models (by validation) against k."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    k = [r.k for r in by_size]
    ax.plot(k, [100 * r.valid for r in by_size], "o-", label="valid")
    if all(r.test is not None for r in by_size):
        ax.plot(k, [100 * r.test for r in by_size], "s--", label="test")
    ax.set_xticks(k, [f"{r.k}\n{r.added}" for r in by_size], fontsize=7)
    words = METRIC_WORDS[metric]
    ax.set(xlabel=f"models (best first by validation {words}; the one added)", ylabel=f"{words} %")
    ax.set_title(f"{'accuracy' if metric == 'accuracy' else words}-weighted ensemble of the k best models")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _imshow(ax, img: np.ndarray) -> None:
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
    ax.set_xticks([])
    ax.set_yticks([])


NUMBERED_CLASSES = 30  # up to this many classes the confusion matrix prints its counts; beyond, a heatmap


def fig_confusion(path: Path, y: np.ndarray, probs: dict[str, np.ndarray], classes: list[str], split: str) -> None:
    """Counts in the cells up to NUMBERED_CLASSES classes; beyond, a heatmap of each true class's share (log
    colour scale, so off-diagonal mistakes stay visible beside the diagonal) and the most-confused pairs go to
    the leaderboard's table instead."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    n = len(classes)
    fig, axes = plt.subplots(1, len(probs), figsize=(7.5 * len(probs), 7), squeeze=False)
    for ax, (name, p) in zip(axes[0], probs.items()):
        acc = (p.argmax(1) == y).mean()
        if n <= NUMBERED_CLASSES:
            from sklearn.metrics import ConfusionMatrixDisplay

            ConfusionMatrixDisplay.from_predictions(
                y,
                p.argmax(1),
                labels=range(n),
                display_labels=classes,
                ax=ax,
                colorbar=False,
                xticks_rotation=90,
                values_format="d",
            )
        else:
            cm = confusion(y, p.argmax(1), n).astype(np.float64)
            share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            floor = 1.0 / max(int(cm.sum(1).max()), 1)
            im = ax.imshow(np.where(share > 0, share, np.nan), cmap="viridis", norm=LogNorm(floor, 1.0))
            ax.set_facecolor("black")
            ax.set(xlabel="predicted class (index)", ylabel="true class (index)")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class (log)")
        ax.set_title(f"{name}: {split} accuracy {acc:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


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


def markdown_confused(pairs: list[dict], name: str, split: str) -> str:
    if not pairs:
        return ""
    lines = ["| true | predicted | rows | share of true class |", "|---|---|---|---|"]
    lines += [f"| {r['true']} | {r['predicted']} | {r['count']} | {100 * r['share']:.1f} % |" for r in pairs]
    return f"\nMost-confused classes of {name} on the {split} split:\n\n" + "\n".join(lines) + "\n"


def fig_top_losses(path: Path, x: np.ndarray, y: np.ndarray, p: np.ndarray, classes: list[str], k: int = 16) -> None:
    """fastai's plot_top_losses, from arrays: the k rows with the highest loss, predicted/actual/loss/probability."""
    import matplotlib.pyplot as plt

    loss = row_losses(p, y)
    idx = np.argsort(-loss, kind="stable")[:k]
    cols = 4
    fig, axes = plt.subplots(
        (len(idx) + cols - 1) // cols, cols, figsize=(3 * cols, 3.3 * ((len(idx) + cols - 1) // cols)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        pred = int(p[i].argmax())
        _imshow(ax, x[i])
        ax.axis("on")
        ax.set_title(f"{classes[pred]}/{classes[y[i]]}\n{loss[i]:.2f} / {p[i, y[i]]:.2f}", fontsize=9)
    fig.suptitle("Prediction/Actual / Loss/Probability of the actual class")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_predictions(
    path: Path, x: np.ndarray, y: np.ndarray, p: np.ndarray, classes: list[str], seed: int, k: int = 8
) -> None:
    """Random correct and wrong predictions with their confidence, and the confidence histogram of each."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    pred, conf = p.argmax(1), p.max(1)
    ok = pred == y
    fig = plt.figure(figsize=(2.2 * k, 8))
    for row, (mask, what) in enumerate(((ok, "correct"), (~ok, "wrong"))):
        pick = rng.permutation(np.flatnonzero(mask))[:k]
        for j, i in enumerate(pick):
            ax = fig.add_subplot(3, k, row * k + j + 1)
            _imshow(ax, x[i])
            color = "green" if what == "correct" else "red"
            ax.set_title(
                f"{classes[pred[i]]} {conf[i]:.2f}" + ("" if ok[i] else f"\n(is {classes[y[i]]})"),
                fontsize=8,
                color=color,
            )
    ax = fig.add_subplot(3, 1, 3)
    bins = np.linspace(0, 1, 41)
    ax.hist(conf[ok], bins=bins, alpha=0.6, label=f"correct ({ok.sum()})", color="green")
    ax.hist(conf[~ok], bins=bins, alpha=0.6, label=f"wrong ({(~ok).sum()})", color="red")
    ax.set_xlabel("confidence (top probability)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_lr_find(path: Path, curves: dict[str, tuple[list, float | None]]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (pts, lr) in curves.items():
        if pts:
            line = ax.plot([q["lr"] for q in pts], [q["loss"] for q in pts], label=name)[0]
            if lr:
                ax.axvline(lr, color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("lr_find (dotted: the lr used)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _tsv(path: Path) -> tuple[list[float], list[float]]:
    if not path.is_file():
        return [], []
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    key = [k for k in rows[0] if k != "step"][0] if rows else None
    return [float(r["step"]) for r in rows], [float(r[key]) for r in rows]


def fig_training(path: Path, live: dict[str, Path]) -> None:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    for name, d in live.items():
        steps, tl = _tsv(d / "plots" / "metrics" / "train" / "loss.tsv")
        line = a1.plot([s + 1 for s in steps], tl, label=f"{name} train")[0] if steps else None
        steps, vl = _tsv(d / "plots" / "metrics" / "eval" / "loss.tsv")
        if steps:
            a1.plot([s + 1 for s in steps], vl, ls="--", color=line.get_color() if line else None)
        steps, acc = _tsv(d / "plots" / "metrics" / "accuracy.tsv")
        if steps:
            a2.plot([s + 1 for s in steps], acc, marker="o", label=name)
    a1.set(xlabel="epoch", ylabel="loss", title="loss (solid: train, dashed: valid)")
    a2.set(xlabel="epoch", ylabel="valid accuracy", title="validation accuracy")
    for a in (a1, a2):
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def look_inside(figs: Path, folder: Path, x, y, p: np.ndarray, classes: list[str], split: str) -> None:
    """gradcam.png and feature_maps.png of the model in `folder`; a note instead where the model is absent
    (predictions pulled without their models) or has no convolution (logreg, mlp)."""
    from pipeline.inspect.cam import conv_layers
    from pipeline.learn.trained import Model

    if not (folder / "spec.json").is_file():
        print(f"note: {folder} is absent: no Grad-CAM or feature-map figures", file=sys.stderr)
        return
    model = Model(folder)
    if not conv_layers(model.model):
        print(f"note: {model.name} has no convolution: no Grad-CAM or feature-map figures", file=sys.stderr)
        return
    fig_gradcam(figs / "gradcam.png", x, y, p, model, classes, split)
    fig_feature_maps(figs / "feature_maps.png", np.array(x[:1]), model)  # a writable copy of the memmap


def fig_gradcam(path: Path, x, y, p: np.ndarray, model, classes: list[str], split: str, k: int = 8) -> None:
    """Grad-CAM of the best model on k right and k wrong images of the split (seeded choice), each titled
    predicted/actual: where the network looked for the class it chose."""
    import matplotlib.pyplot as plt

    from pipeline.inspect.cam import overlay

    rng = np.random.default_rng(0)
    pred = p.argmax(1)
    right, wrong = np.flatnonzero(pred == y), np.flatnonzero(pred != y)
    idx = [*rng.permutation(right)[:k], *rng.permutation(wrong)[:k]]
    if not idx:
        return
    imgs = np.asarray(x[np.sort(idx)])
    cams = model.cam(imgs)
    cols = 8
    fig, axes = plt.subplots((len(idx) + cols - 1) // cols, cols, figsize=(2 * cols, 2.3 * ((len(idx) + 7) // 8)))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i, img, cam in zip(np.ravel(axes), np.sort(idx), imgs, cams):
        ax.imshow(overlay(img, cam))
        ok = pred[i] == y[i]
        ax.set_title(f"{classes[pred[i]]}/{classes[y[i]]}", fontsize=8, color="green" if ok else "red")
    fig.suptitle(f"Grad-CAM of {model.name} on {split} images (predicted/actual; green right, red wrong)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_feature_maps(path: Path, img: np.ndarray, model, n: int = 8) -> None:
    """The first n channels after the first and after the last convolution (the Grad-CAM layer) for one image."""
    import matplotlib.pyplot as plt

    from pipeline.inspect.cam import conv_layers, feature_maps, pick_layer

    xb = model.inputs(img)
    layers = [pick_layer(model.model, conv_layers(model.model)[0]), pick_layer(model.model, None)]
    fig, axes = plt.subplots(len(layers), n + 1, figsize=(2 * (n + 1), 2.2 * len(layers)))
    for row, (name, layer) in zip(axes, layers):
        maps = feature_maps(model.model, xb, layer)
        _imshow(row[0], img[0])
        row[0].set_title("input", fontsize=8)
        for j, ax in enumerate(row[1:]):
            ax.axis("off")
            if j < len(maps):
                ax.imshow(maps[j], cmap="viridis")
                ax.set_title(f"{name} #{j}", fontsize=7)
    fig.suptitle(f"{model.name}: feature maps after an early and a late convolution")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


COLUMN = {"accuracy": "top1", "balanced_accuracy": "bal_acc", "macro_f1": "macro_f1"}  # the leaderboard's


def fig_acc_time(path: Path, rows: list[dict], metric: str = "accuracy") -> None:
    """The run's metric against training time (log scale): which models are worth their cost."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        ens = r["model"].startswith("ensemble:")
        t = max(float(r["train_s"]), 0.1)
        v = r[COLUMN[metric]]
        if v == "":  # metrics that predate the metric
            continue
        ax.scatter(t, v, marker="*" if ens else "o", s=120 if ens else 50, color="C3" if ens else "C0")
        ax.annotate(r["model"], (t, v), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    words = METRIC_WORDS[metric]
    ax.set(
        xlabel="training seconds (ensembles: sum of members')", ylabel=f"{words} %", title=f"{words} vs training time"
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_reliability(path: Path, y: np.ndarray, probs: dict[str, np.ndarray], split: str) -> None:
    """Reliability diagram: accuracy against confidence in 15 bins, each model's curve beside the diagonal."""
    import matplotlib.pyplot as plt

    from pipeline.inspect.scores import ece

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", label="perfectly calibrated")
    for i, (name, p) in enumerate(probs.items()):
        r = reliability(p, y)
        keep = [k for k, n in enumerate(r["rows"]) if n > 0]
        ax.plot(
            [r["confidence"][k] for k in keep],
            [r["accuracy"][k] for k in keep],
            marker="o",
            color=f"C{i}",
            label=f"{name} (ECE {ece(p, y):.3f})",
        )
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy", title=f"reliability on {split}")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


EQUAL_COMPUTE = Path("bench/results/equal_compute.json")


def markdown_equal_compute(ens: EnsembleMetrics, root: Path) -> str:
    """The submission beside the best single recipe trained with the ensemble's whole budget, from
    `python -m bench.equal_compute` (a benchmark, not a stage: said when its figures are from another run)."""
    f = root / EQUAL_COMPUTE
    if not f.is_file():
        return (
            "\nEqual compute: not measured for this run; `python -m bench.equal_compute` trains the best member's "
            "recipe with the ensemble's whole training budget and compares it with the submission.\n"
        )
    r = load_equal_compute(f)
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


def lr_curves(root: Path, models: dict[str, MemberMetrics]) -> dict[str, tuple[list, float | None]]:
    """Each model's lr_find curve (empty for a fixed lr) and the valley it chose."""
    out = {}
    for n, m in models.items():
        f = root / "dvclive" / n / "plots" / "custom" / "lr_find.json"
        out[n] = (_read_json(f) if f.is_file() else [], m.lr if m.lr_found else None)
    return out


def verdicts_md(ens: EnsembleMetrics, classes: list[str], root: Path, labeled: bool) -> str:
    """Under the table: the paired comparisons, leave-one-out, per class, equal compute."""
    return (
        gain_line(ens)
        + markdown_leave_one_out(ens)
        + markdown_per_class(ens, classes)
        + markdown_class_report(ens, classes)
        + (markdown_equal_compute(ens, root) if labeled else "")
    )


def run(params: dict, root: Path = Path(".")) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    names = model_names(params)
    models = {n: load_member_metrics(root / "metrics" / f"{n}.json", n) for n in names}
    ens = load_ensemble_metrics(root / "ensemble" / "metrics.json")
    missing = sorted(set(names) - set(ens.models))
    if missing:
        raise PipelineError(f"ensemble/metrics.json has no entry for {', '.join(missing)}; rerun `dvc repro ensemble`")
    prep = root / "data" / "prepared"
    meta = load_prepared_meta(prep / "meta.json")
    labeled = ens.test is not None
    split = "test" if labeled else "valid"
    x = np.load(prep / f"{split}_x.npy", mmap_mode="r")
    y = np.load(prep / f"{split}_y.npy")
    ens_p = np.load(root / "ensemble" / "preds" / f"{split}.npy")
    best = ens.best_model  # by validation
    best_p = np.load(root / "preds" / best / f"{split}.npy")
    rows = leaderboard(models, ens)
    classes = meta.names

    with staged(root / "reports") as (out,):
        figs = out / "figures"
        figs.mkdir(parents=True)
        with (out / "leaderboard.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        group_rows = groups(models, {n: group_of(params, n) for n in names}, labeled, ens.judged_by())
        (out / "leaderboard.md").write_text(
            metric_line(ens)
            + markdown(rows, labeled, meta.counts.get("test", 1), ens.judged_by())
            + verdicts_md(ens, classes, root, labeled)
            + markdown_groups(group_rows, labeled, ens.judged_by())
            + markdown_folds(models)
            + markdown_refit(models, labeled)
            + (
                markdown_confused(confused_pairs(y, ens_p, classes), f"the ensemble ({ens.chosen})", split)
                if len(classes) > NUMBERED_CLASSES
                else ""
            )
        )
        if ens.by_size:
            fig_members(figs / "accuracy_vs_members.png", ens.by_size, ens.judged_by())
        fig_confusion(
            figs / "confusion_matrix.png", y, {best: best_p, f"ensemble ({ens.chosen})": ens_p}, classes, split
        )
        t = ens.models[best].temperature  # `calibrate: temperature`: the member as the blend saw it
        best_cal = apply_temperature(best_p.astype(np.float64), t) if t else best_p
        fig_reliability(figs / "reliability.png", y, {best: best_cal, f"ensemble ({ens.chosen})": ens_p}, split)
        fig_top_losses(figs / "top_losses.png", x, y, ens_p, classes)
        fig_predictions(figs / "predictions.png", x, y, ens_p, classes, seed=0)
        fig_lr_find(figs / "lr_find.png", lr_curves(root, models))
        fig_training(figs / "training_curves.png", {n: root / "dvclive" / n for n in names})
        fig_acc_time(figs / "accuracy_vs_time.png", rows, ens.judged_by())
        look_inside(figs, root / "models" / best, x, y, best_p, classes, split)
    return rows


def main(argv: list[str] | None = None) -> int:
    try:
        run(load_params())
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(Path("reports/leaderboard.md").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
