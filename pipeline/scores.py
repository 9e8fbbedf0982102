"""Accuracy and log-loss of class probabilities: the one definition train, the ensemble and report use."""

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
    return float((probs.argmax(1) == y).mean())


def wilson(correct: int, n: int, level: float = 0.95) -> list[float] | None:
    """The Wilson score interval of an accuracy of `correct` out of `n` rows (scipy's binomtest); None for no rows."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(level, method="wilson")
    return [float(ci.low), float(ci.high)]


def score(probs: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy (with its 95 % Wilson interval over the split's rows), log-loss (NLL) and ECE (15 bins) of
    probabilities against labels."""
    correct = int((probs.argmax(1) == y).sum())
    return {
        "accuracy": accuracy(probs, y),
        "ci95": wilson(correct, len(y)),
        "n": int(len(y)),
        "loss": log_loss(probs, y),  # the negative log-likelihood (NLL)
        "ece": ece(probs, y),
    }


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


def compare(pa: np.ndarray, pb: np.ndarray, y: np.ndarray, seed: int = 0, resamples: int = 2000) -> dict:
    """A against B on the same rows: the accuracy difference, its paired bootstrap 95 % interval, McNemar's exact
    p-value, the rows only A / only B gets right, and whether the difference is resolved (p < 0.05)."""
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


def verdict(c) -> str:
    """`+0.09 [−0.20, +0.38] points, p = 0.55: not resolved` — a comparison in words (a contracts.Paired record,
    or the dict `compare` returns)."""
    from pipeline.contracts import Paired

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
