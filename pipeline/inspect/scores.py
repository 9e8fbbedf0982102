"""The scores of class probabilities against labels — accuracy, balanced accuracy, macro-F1, worst-class recall,
log-loss, ECE — with their intervals and paired tests: the one definition train, the ensemble and report use.

Balanced accuracy (the mean per-class recall) and macro-F1 follow scikit-learn's `balanced_accuracy_score` and
`f1_score(average="macro")`; their 95 % intervals come from a class-stratified bootstrap (each class's rows
resampled within the class, so every resample keeps the split's class counts), drawn from the confusion matrix.
`metric:` in params.yaml picks the one a run is judged by (`resolve_metric`).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def row_losses(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's negative log-likelihood of its true class (probabilities clipped at 1e-12)."""
    return -np.log(np.clip(probs[np.arange(len(y)), y], EPS, None))


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    return float(row_losses(probs, y).mean())


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of probabilities against labels."""
    return float((probs.argmax(1) == y).mean())


def wilson(correct: int, n: int, level: float = 0.95) -> list[float] | None:
    """The Wilson score interval of an accuracy of `correct` out of `n` rows (scipy's binomtest); None for no rows."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(level, method="wilson")
    return [float(ci.low), float(ci.high)]


def score(probs: np.ndarray, y: np.ndarray, resamples: int = 1000) -> dict:
    """Accuracy (with its 95 % Wilson interval over the split's rows), balanced accuracy and macro-F1 (with their
    class-stratified bootstrap 95 % intervals), the worst class's recall, log-loss (NLL) and ECE (15 bins) of
    probabilities against labels."""
    pred = probs.argmax(1)
    correct = int((pred == y).sum())
    out = {
        "accuracy": accuracy(probs, y),
        "ci95": wilson(correct, len(y)),
        "n": int(len(y)),
        "loss": log_loss(probs, y),  # the negative log-likelihood (NLL)
        "ece": ece(probs, y),
    }
    if len(y):
        k = probs.shape[1]
        tp, col, support = resampled_counts(y, [pred], k, resamples)
        rec = recalls(y, pred, k)
        worst = int(np.nanargmin(rec))
        out |= {
            "balanced_accuracy": balanced_accuracy(y, pred, k),
            "balanced_ci95": interval(metric_of_counts("balanced_accuracy", tp[0], col[0], support)),
            "macro_f1": macro_f1(y, pred, k),
            "macro_f1_ci95": interval(metric_of_counts("macro_f1", tp[0], col[0], support)),
            "worst_recall": float(rec[worst]),
            "worst_class": worst,
        }
    return out


# ------------------------------------------------------------------------------------------------ per class
# The metrics a run can be judged by (params.yaml `metric`), each with the key of its 95 % interval in a score and
# its words: the one list every module reads
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
CI_KEYS = {"accuracy": "ci95", "balanced_accuracy": "balanced_ci95", "macro_f1": "macro_f1_ci95"}
METRIC_WORDS = {"accuracy": "top-1 accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}
# `metric: auto` is accuracy while the largest training class has at most this many times the smallest's images
# (a stratified split of a balanced set is within a few rows of 1:1), else balanced accuracy
BALANCED_RATIO = 1.5


def imbalanced(train_counts: dict[str, int]) -> bool:
    """Are the training classes imbalanced: a class without images, or the largest beyond BALANCED_RATIO times the
    smallest? (`metric: auto` and `sampler: auto` both follow it.) No counts (an older prepare): no."""
    n = list(train_counts.values())
    return bool(n) and (min(n) == 0 or max(n) / min(n) > BALANCED_RATIO)


def resolve_metric(setting: str, train_counts: dict[str, int]) -> tuple[str, str]:
    """The metric a run is judged by, and why: `setting` unless `auto`, which is accuracy when the training classes
    are balanced within BALANCED_RATIO, else balanced accuracy."""
    if setting != "auto":
        return setting, "set in params.yaml (`metric`)"
    n = list(train_counts.values())
    if not n:
        return "accuracy", "auto: data/prepared/meta.json has no training class counts (an older prepare)"
    if min(n) == 0:
        return "balanced_accuracy", "auto: a class has no training images"
    ratio = max(n) / min(n)
    if not imbalanced(train_counts):
        return "accuracy", f"auto: the training classes are balanced, {max(n):,} to {min(n):,} images ({ratio:.2g}:1)"
    return "balanced_accuracy", (
        f"auto: the training classes are imbalanced, {max(n):,} to {min(n):,} images ({ratio:.0f}:1, beyond "
        f"{BALANCED_RATIO}:1), where top-1 rewards ignoring the small classes"
    )


def imbalance_line(train_counts: dict[str, int], metric: str) -> str:
    """One log line naming the training classes' range and the run's metric."""
    n = list(train_counts.values())
    hi, lo = max(n), min(n)
    ratio = f"{hi / lo:.0f}:1" if lo else "a class is empty"
    words = metric.replace("_", " ")
    return f"classes range {hi:,} → {lo:,} training images ({ratio}): the benchmark's metric is {words}"


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k × k counts: row = true class, column = predicted class."""
    return np.bincount(np.asarray(y) * k + np.asarray(pred), minlength=k * k).reshape(k, k)


def recalls(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Each class's recall (NaN for a class with no rows)."""
    c = confusion(y, pred, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(c) / c.sum(1)


def class_report(y: np.ndarray, pred: np.ndarray, k: int) -> dict[str, list]:
    """Per class: precision, recall, F1 and support (scikit-learn's classification_report; 0 where undefined)."""
    c = confusion(y, pred, k)
    tp, support, predicted = np.diag(c).astype(float), c.sum(1), c.sum(0)
    prec = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    rec = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=support + predicted > 0)
    r = lambda a: [round(float(v), 6) for v in a]  # noqa: E731
    return {"precision": r(prec), "recall": r(rec), "f1": r(f1), "support": support.astype(int).tolist()}


def metric_of_counts(metric: str, tp: np.ndarray, col: np.ndarray, support: np.ndarray) -> np.ndarray:
    """A metric from per-class counts: `tp` (…, k) rows right, `col` (…, k) rows predicted as the class, `support`
    (k,) rows of the class. Macro-F1 averages over the classes that are true or predicted (scikit-learn's labels)."""
    if metric == "accuracy":
        return tp.sum(-1) / support.sum()
    if metric == "balanced_accuracy":
        present = support > 0
        return (tp[..., present] / support[present]).mean(-1)
    if metric == "macro_f1":
        denom = support + col
        f1 = np.divide(2 * tp, denom, out=np.zeros(np.broadcast(tp, denom).shape), where=denom > 0)
        return f1.sum(-1) / np.maximum((denom > 0).sum(-1), 1)
    raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")


def metric_value(metric: str, probs: np.ndarray, y: np.ndarray) -> float:
    """The run's metric of probabilities against labels (accuracy by `accuracy`, as it always was computed)."""
    if metric == "accuracy":
        return accuracy(probs, y)
    pred = probs.argmax(1)
    k = probs.shape[1]
    c = confusion(y, pred, k)
    return float(metric_of_counts(metric, np.diag(c), c.sum(0), c.sum(1)))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Mean recall over the classes with rows (scikit-learn's balanced_accuracy_score)."""
    c = confusion(y, pred, k)
    return float(metric_of_counts("balanced_accuracy", np.diag(c), c.sum(0), c.sum(1)))


def macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Mean F1 over the classes that are true or predicted (scikit-learn's f1_score, average="macro")."""
    c = confusion(y, pred, k)
    return float(metric_of_counts("macro_f1", np.diag(c), c.sum(0), c.sum(1)))


def resampled_counts(
    y: np.ndarray, preds: list[np.ndarray], k: int, resamples: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A class-stratified bootstrap of the rows, the same resampled rows for every model of `preds`: per model and
    resample, each class's rows right (`tp`, models × resamples × k) and rows predicted as each class (`col`); and
    the classes' row counts (`support`, fixed by the stratification). Each class's resample is one multinomial draw
    over the joint predictions its rows have, so the cost grows with the distinct predictions, not the rows."""
    rng = np.random.default_rng(seed)
    m = len(preds)
    tp = np.zeros((m, resamples, k))
    col = np.zeros((m, resamples, k))
    y = np.asarray(y)
    support = np.bincount(y, minlength=k)
    code = np.zeros(len(y), np.int64)
    for p in preds:  # the joint prediction of a row as one number
        code = code * k + np.asarray(p)
    for c in np.flatnonzero(support):
        codes, n = np.unique(code[y == c], return_counts=True)
        draws = rng.multinomial(support[c], n / n.sum(), size=resamples)  # (resamples, joint predictions)
        for i in range(m):
            pi = codes // k ** (m - 1 - i) % k  # model i's prediction of each joint prediction
            np.add.at(col[i], (slice(None), pi), draws)
            tp[i, :, c] = draws[:, pi == c].sum(1)
    return tp, col, support


def interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """The percentile interval of bootstrap values."""
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def bins_of(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin of top-class probability (equal width; bin k holds [k/bins, (k+1)/bins), the last also 1): rows,
    Σ confidence, Σ right."""
    conf = probs.max(1)
    right = probs.argmax(1) == y
    k = np.minimum((conf * bins).astype(np.int64), bins - 1)
    return np.bincount(k, minlength=bins), np.bincount(k, conf, bins), np.bincount(k, right, bins)


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the row-weighted mean |accuracy − confidence| over `bins` equal-width bins of
    the top-class probability (Guo et al., 2017; 15 bins as there)."""
    if len(y) == 0:
        return float("nan")
    _, conf, right = bins_of(probs, y, bins)
    return float(np.abs(right - conf).sum() / len(y))  # per bin: |Σ right − Σ confidence|


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> dict:
    """Per bin of confidence: rows, mean confidence, accuracy (the reliability diagram's numbers)."""
    n, conf, right = bins_of(probs, y, bins)
    safe = np.maximum(n, 1)
    return {"rows": n.tolist(), "confidence": (conf / safe).tolist(), "accuracy": (right / safe).tolist()}


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> float:
    """McNemar's exact two-sided p-value: of the rows exactly one model gets right, is A's share 1/2?
    (scipy's binomtest on the discordant rows; 1.0 where there are none)."""
    from scipy.stats import binomtest

    b = int((a_right & ~b_right).sum())
    c = int((~a_right & b_right).sum())
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def paired_bootstrap(
    a_right: np.ndarray, b_right: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> list[float]:
    """Percentile interval of accuracy(A) − accuracy(B) over bootstrap resamples of the rows (the same rows for
    both models). A row adds +1, −1 or 0 to the difference, so a resample is fully described by how many rows of
    each kind it draws: a multinomial draw, exact and O(resamples) instead of O(resamples × rows)."""
    n = len(a_right)
    if n == 0:
        return [float("nan"), float("nan")]
    plus = int((a_right & ~b_right).sum())
    minus = int((~a_right & b_right).sum())
    counts = np.random.default_rng(seed).multinomial(n, [plus / n, minus / n, (n - plus - minus) / n], resamples)
    d = (counts[:, 0] - counts[:, 1]) / n
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def compare(
    pa: np.ndarray, pb: np.ndarray, y: np.ndarray, seed: int = 0, resamples: int = 2000, metric: str = "accuracy"
) -> dict:
    """A against B on the same rows: the difference in `metric`, its paired bootstrap 95 % interval, a p-value,
    the rows only A / only B gets right, and whether the difference is resolved (p < 0.05). Accuracy: McNemar's
    exact test; balanced accuracy and macro-F1: the paired class-stratified bootstrap's two-sided p."""
    if metric != "accuracy":
        return compare_bootstrap(pa, pb, y, seed, resamples, metric)
    a, b = pa.argmax(1) == y, pb.argmax(1) == y
    p = mcnemar(a, b)
    return {
        "diff": float(a.mean() - b.mean()) if len(y) else float("nan"),
        "ci95": paired_bootstrap(a, b, resamples, seed),
        "p": p,
        "a_only": int((a & ~b).sum()),
        "b_only": int((~a & b).sum()),
        "n": int(len(y)),
        "resolved": bool(p < 0.05),
    }


def compare_bootstrap(pa, pb, y, seed: int, resamples: int, metric: str) -> dict:
    """`compare` for balanced accuracy and macro-F1: A's and B's predictions resampled together within each class;
    p = twice the share of resamples on the far side of 0 (at least 1/resamples), capped at 1."""
    k = pa.shape[1]
    a_pred, b_pred = pa.argmax(1), pb.argmax(1)
    a, b = a_pred == y, b_pred == y
    out = {"diff": float("nan"), "ci95": [float("nan"), float("nan")], "p": 1.0}
    if len(y):
        tp, col, support = resampled_counts(y, [a_pred, b_pred], k, resamples, seed)
        d = metric_of_counts(metric, tp[0], col[0], support) - metric_of_counts(metric, tp[1], col[1], support)
        diff = metric_value(metric, pa, y) - metric_value(metric, pb, y)
        far = min((d <= 0).mean(), (d >= 0).mean())
        p = 1.0 if np.all(d == 0) else float(min(1.0, max(2 * far, 1 / resamples)))
        out = {"diff": float(diff), "ci95": interval(d), "p": p}
    return {
        **out,
        "a_only": int((a & ~b).sum()),
        "b_only": int((~a & b).sum()),
        "n": int(len(y)),
        "resolved": bool(out["p"] < 0.05),
        "metric": metric,
    }


def verdict(c) -> str:
    """`+0.09 [−0.20, +0.38] points, p = 0.55: not resolved` — a comparison in words (a contracts.Paired record,
    or the dict `compare` returns)."""
    from pipeline.records import Paired

    c = Paired.from_json(c, "comparison") if isinstance(c, dict) else c
    lo, hi = (100 * v for v in c.ci95)
    pw = f"p = {c.p:.3f}" if 0.04 <= c.p < 0.06 else f"p = {c.p:.2g}" if c.p >= 1e-4 else "p < 0.0001"  # no 0.05 ≥ 0.05
    word = "resolved" if c.resolved else "not resolved"
    return f"{100 * c.diff:+.2f} [{lo:+.2f}, {hi:+.2f}] points, {pw}: {word}"


def decimals(ci: list[float] | None) -> int:
    """How many decimals of a percentage its 95 % interval supports: one significant digit of the half-width
    (±2.6 points: 0, ±0.47: 1, ±0.05: 2), at most 3."""
    if not ci:
        return 3
    half = 100 * (ci[1] - ci[0]) / 2
    return int(min(3, max(0, np.ceil(-np.log10(half))))) if half > 0 else 3
