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
    """Accuracy (with its 95 % Wilson interval over the split's rows) and log-loss of probabilities against labels."""
    correct = int((probs.argmax(1) == y).sum())
    return {
        "accuracy": accuracy(probs, y),
        "ci95": wilson(correct, len(y)),
        "n": int(len(y)),
        "loss": log_loss(probs, y),
    }
