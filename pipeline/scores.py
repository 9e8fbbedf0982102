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


def score(probs: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy and log-loss of probabilities against labels."""
    return {"accuracy": accuracy(probs, y), "loss": log_loss(probs, y)}
